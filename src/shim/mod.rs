//! berth-shim, the per-pod process, and berthd's client for it.
//!
//! - `server`: the shim process itself (single-threaded, no async runtime), with `init`
//!   (its fork code and the pod's PID 1) and `sysctl` (which pod sysctls are allowed);
//! - `containers`: the pod's containers with youki's libcontainer, `exec` (ExecSync; its
//!   processes join the container with `setns_exec`),
//!   `interactive` (interactive exec and attach, with `fdpass` moving their fds),
//!   `workload` (what runs in a container's process before its program), `logs` (the CRI
//!   log format), `exits` (exit records on disk, which berthd reads too), `memory` (giving memory back
//!   between requests);
//! - `client`: what berthd uses to start a shim and talk to it;
//! - `framing`: message boundaries of the protocol in `proto/shim.proto`.

/// One line to the shim's log (its stderr, `<state_dir>/shim.log` once detached).
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::shim::server::log_line(format_args!($($arg)*))
    };
}

pub mod client;
mod containers;
mod exec;
pub mod exits;
mod fdpass;
pub mod framing;
mod init;
mod interactive;
pub mod logs;
pub mod memory;
pub mod server;
mod setns_exec;
pub mod sysctl;
mod workload;

pub use client::{Error, ShimClient, shim_alive, spawn};
pub use exits::ExitRecord;
