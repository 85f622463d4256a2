//! Containers: CRI container config to OCI runtime spec, the rootfs, and the lifecycle
//! through the pod's shim.

pub mod config;
pub mod spec;
