//! berth-shim, the per-pod process, and berthd's client for it.
//!
//! - `server`: the shim process itself (single-threaded, no async runtime), with `init`
//!   (its fork code and the pod's PID 1) and `sysctl` (which pod sysctls are allowed);
//! - `client`: what berthd uses to start a shim and talk to it;
//! - `framing`: message boundaries of the protocol in `proto/shim.proto`.

pub mod client;
pub mod framing;
mod init;
pub mod server;
pub mod sysctl;

pub use client::{Error, ShimClient, shim_alive, spawn};
