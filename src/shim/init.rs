//! The shim's fork code: the fork that detaches the shim from berthd, and the pod's init,
//! PID 1 of a shared PID namespace.
//!
//! The init is a fork of the shim that never returns to the shim's code: it blocks the
//! signals it handles, waits for them with `sigwait`, reaps every zombie of the namespace on
//! SIGCHLD and exits on SIGTERM or SIGINT (when it exits the kernel kills everything else in
//! the namespace). It dies with the shim (`PR_SET_PDEATHSIG` = SIGKILL): a pod whose shim is
//! gone has nobody to reap or record its processes, and berthd only has to unpin the
//! namespaces.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// The signals the shim and the init handle synchronously (blocked, then read from a
/// signalfd or with sigwait).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Number of threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// `fork(2)`, refused unless this process has a single thread.
#[allow(unsafe_code)]
pub fn fork() -> Result<ForkResult, String> {
    if threads() != 1 {
        return Err("refusing to fork a multi-threaded process".into());
    }
    // SAFETY: the process has one thread (checked above; berth-shim never starts any), so
    // the child may run any code, allocation included.
    unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))
}

/// The running pod init, from the shim's side. Dropping it closes the pipe the init
/// watched while it set `PR_SET_PDEATHSIG`; keep it for the shim's lifetime.
pub struct Init {
    pub pid: Pid,
    _alive: OwnedFd,
}

/// Forks the pod init. Call it after `unshare(CLONE_NEWPID)`, with [`handled_signals`]
/// blocked; the child is PID 1 of the new namespace.
pub fn spawn() -> Result<Init, String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match fork()? {
        ForkResult::Parent { child } => {
            drop(r);
            Ok(Init {
                pid: child,
                _alive: w,
            })
        }
        ForkResult::Child => {
            // Never unwind back into the shim's code.
            let _ = std::panic::catch_unwind(move || init_main(r, w));
            exit_now(1)
        }
    }
}

/// Creates a user-namespaced pod's namespaces: a raw `clone(2)` with `CLONE_NEWUSER` among
/// `flags`, so that the kernel makes the user namespace first and every other new namespace
/// is owned by it (containers that join it may then mount `/proc` and `/sys`). The caller
/// writes the child's uid/gid maps and pins its namespaces. With `as_init` (`flags` has
/// `CLONE_NEWPID`) the child is the pod's init, as [`spawn`] makes it; otherwise it only
/// holds the namespaces until the returned value is dropped, then exits.
pub fn spawn_owner(flags: nix::sched::CloneFlags, as_init: bool) -> Result<Init, String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match clone_fork(flags.bits() as libc::c_ulong)? {
        0 => {
            if as_init {
                let _ = std::panic::catch_unwind(move || init_main(r, w));
            } else {
                drop(w);
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                // Until the shim drops its end (or dies): EOF or an error both end it.
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut b);
            }
            exit_now(0)
        }
        pid => {
            drop(r);
            Ok(Init {
                pid: Pid::from_raw(pid as i32),
                _alive: w,
            })
        }
    }
}

#[allow(unsafe_code)]
fn init_main(r: OwnedFd, w: OwnedFd) -> ! {
    drop(w);
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        exit_now(1);
    }
    // The shim may have died before PDEATHSIG was set: then every write end of the pipe
    // is closed and it reads as hung up.
    let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
    if nix::poll::poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|f| f.intersects(PollFlags::POLLHUP | PollFlags::POLLIN))
    {
        exit_now(0);
    }
    // Nothing the shim had open (its log on 1 and 2 aside) is the init's business.
    // SAFETY: close_range takes no pointers; the Rust objects owning these fds (in this
    // forked copy of the shim's memory) are never used or dropped, as this never returns.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    std::mem::forget(r);

    let set = handled_signals();
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => exit_now(0),
            // SIGHUP: forwarded to the pod's processes once it has any; nothing yet.
            _ => {}
        }
    }
}

fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// `clone(2)` with a null stack and `flags` (plus SIGCHLD): a fork that can also make
/// namespaces or take `CLONE_PARENT`. Returns 0 in the child, the child's pid in the caller.
/// Refused when this process has more than one thread (uncounted, 0, where `/proc/self` is
/// another PID namespace's: an exec's fork after joining the container's mounts).
#[allow(unsafe_code)]
pub fn clone_fork(flags: libc::c_ulong) -> Result<libc::c_long, String> {
    if threads() > 1 {
        return Err("refusing to clone a multi-threaded process".into());
    }
    // SAFETY: with a null stack pointer clone(2) behaves as fork(2): the child runs on a
    // copy of this single-threaded process's memory (checked above), so it may run any code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret == -1 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    Ok(ret)
}

/// `_exit(2)`: ends a forked child without running anything of the shim's (no atexit
/// handlers, no destructors).
#[allow(unsafe_code)]
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}
