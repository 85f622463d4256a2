//! Containers: CRI container config to OCI runtime spec, the rootfs, and the lifecycle
//! through the pod's shim.

pub mod capabilities;
pub mod cdi;
pub mod config;
pub mod devices;
pub mod host;
pub mod interactive;
pub mod lifecycle;
pub mod mounts;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod user;

pub use interactive::{Attach, ProcessIo, Pty};
pub use lifecycle::{ContainerService, Error};
