//! What runs in a container's process (init or exec) right before it becomes the
//! container's program: libcontainer's [`Executor`] hook.
//!
//! What the default executor does not do:
//!
//! - **Signals.** The shim blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP (it reads them from a
//!   signalfd) and the Rust runtime ignores SIGPIPE. Both the mask and ignored
//!   dispositions survive `fork` and `execve`, and libcontainer does not reset them: a
//!   container would ignore SIGTERM and never see EPIPE as a signal. [`reset_signals`]
//!   restores an empty mask and default dispositions in the container's process. It runs
//!   in `validate`, before the process reports ready to libcontainer, so a created
//!   container that is signalled before StartContainer dies as it should, and again just
//!   before `execve`.
//! - **A terminal** given as an interactive exec's stdin becomes its controlling terminal
//!   (`setsid` + `TIOCSCTTY`); libcontainer only does that for the pty it makes itself.
//! - **The shim's death** kills the process (`PR_SET_PDEATHSIG`), like the pod's init.
//! - **A missing command** is reported with runc's wording (`exec: "x": executable file
//!   not found in $PATH`), which the shim recognises to answer InvalidArgument.

use std::ffi::CString;
use std::path::Path;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::AccessFlags;

/// What every message about a command that cannot be run starts with.
pub const EXEC_ERROR: &str = "exec: \"";

/// The search path when the process has no PATH (Go's and runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, Default)]
pub struct BerthExecutor {
    /// For an exec: the container's seccomp filter, which libcontainer's tenant builder
    /// leaves out of the exec's spec (runc applies it to execs, and so do we).
    pub seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
    /// For an interactive exec with a tty: its stdin is the caller's pty slave, which
    /// becomes its controlling terminal (so that ^C, job control and the size work).
    pub controlling_tty: bool,
}

/// Whether this process holds CAP_SYS_ADMIN (needed to load a seccomp filter without
/// no_new_privs).
fn has_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

impl Executor for BerthExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        reset_signals();
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| ExecutorValidationError::ArgValidationError("no process".into()))?;
        let Some(cmd) = process.args().as_ref().and_then(|a| a.first()) else {
            return Err(ExecutorValidationError::ArgValidationError(
                "no command to run: process.args is empty".into(),
            ));
        };
        let path_var = process
            .env()
            .as_ref()
            .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
            .unwrap_or(DEFAULT_PATH);
        find_executable(cmd, path_var).map_err(ExecutorValidationError::ArgValidationError)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        if self.controlling_tty {
            controlling_terminal().map_err(|e| {
                ExecutorError::Other(format!("make stdin the controlling terminal: {e}"))
            })?;
        }
        // The process dies with the shim (its parent: libcontainer clones with
        // CLONE_PARENT), as the pod's PID namespace does with the shim's init: nothing of
        // the pod runs unsupervised, its output going nowhere. Set last, after
        // libcontainer's credential changes, which would clear it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if let Some(filter) = &self.seccomp {
            // Without CAP_SYS_ADMIN the kernel loads a filter only under no_new_privs.
            if !has_sys_admin() {
                nix::sys::prctl::set_no_new_privs()
                    .map_err(|e| ExecutorError::Other(format!("no_new_privs: {e}")))?;
            }
            libcontainer::seccomp::initialize_seccomp(filter)
                .map_err(|e| ExecutorError::Other(format!("seccomp: {e}")))?;
        }
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        // The environment is the container's (libcontainer set it up), so execvp searches
        // the container's PATH.
        let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        Err(ExecutorError::Other(format!(
            "{EXEC_ERROR}{}\": {err}",
            args[0]
        )))
    }
}

/// Makes the terminal on fd 0 the controlling terminal of this process: it must lead a
/// session without one (libcontainer already called `setsid`, so EPERM here is fine).
#[allow(unsafe_code)]
fn controlling_terminal() -> nix::Result<()> {
    match nix::unistd::setsid() {
        Ok(_) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: TIOCSCTTY takes an int (0: do not steal the terminal from another session)
    // and reads or writes no memory of ours.
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map(drop)
}

/// Finds `cmd` as `execvp` would, with runc's error messages.
pub fn find_executable(cmd: &str, path_var: &str) -> Result<(), String> {
    if cmd.is_empty() {
        return Err(format!(
            "{EXEC_ERROR}\": executable file not found in $PATH"
        ));
    }
    if cmd.contains('/') {
        return check_executable(cmd, Path::new(cmd)).map_err(|e| match e {
            Missing => format!("{EXEC_ERROR}{cmd}\": stat {cmd}: no such file or directory"),
            other => other.message(cmd),
        });
    }
    let mut found_other = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        match check_executable(cmd, &Path::new(dir).join(cmd)) {
            Ok(()) => return Ok(()),
            Err(Missing) => {}
            Err(e) => {
                found_other.get_or_insert(e);
            }
        }
    }
    Err(match found_other {
        Some(e) => e.message(cmd),
        None => format!("{EXEC_ERROR}{cmd}\": executable file not found in $PATH"),
    })
}

enum Unusable {
    Missing,
    Directory,
    Denied,
}
use Unusable::*;

impl Unusable {
    fn message(&self, cmd: &str) -> String {
        match self {
            Missing => format!("{EXEC_ERROR}{cmd}\": executable file not found in $PATH"),
            Directory => format!("{EXEC_ERROR}{cmd}\": is a directory"),
            Denied => format!("{EXEC_ERROR}{cmd}\": permission denied"),
        }
    }
}

fn check_executable(_cmd: &str, path: &Path) -> Result<(), Unusable> {
    let meta = std::fs::metadata(path).map_err(|_| Missing)?;
    if meta.is_dir() {
        return Err(Directory);
    }
    nix::unistd::access(path, AccessFlags::X_OK).map_err(|_| Denied)
}

/// Empty signal mask, default disposition for every signal.
///
/// Every signal up to 64, real-time ones included, through the raw system call: glibc's
/// `posix_spawn` (which std's and tokio's `Command` use) leaves glibc's internal signals
/// 32 and 33 ignored in the program it starts, the ignoring survives `execve`, and glibc's
/// `sigaction` refuses to touch them.
#[allow(unsafe_code)]
pub fn reset_signals() {
    // The kernel's struct sigaction, all zero: SIG_DFL, no flags, empty mask (the same
    // bytes whatever the architecture's field order).
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads 32 bytes from `default`, which lives across the call;
        // the old action is not asked for. SIG_DFL installs no handler code.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
    let _ = SigSet::empty().thread_set_mask();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables() {
        assert_eq!(find_executable("sh", "/nonexistent:/bin"), Ok(()));
        assert_eq!(find_executable("/bin/sh", ""), Ok(()));
        let e = find_executable("no-such-cmd", "/bin:/usr/bin").unwrap_err();
        assert_eq!(
            e,
            "exec: \"no-such-cmd\": executable file not found in $PATH"
        );
        assert!(e.starts_with(EXEC_ERROR));
        let e = find_executable("/no/such", "/bin").unwrap_err();
        assert_eq!(
            e,
            "exec: \"/no/such\": stat /no/such: no such file or directory"
        );
        assert!(
            find_executable("/etc", "/bin")
                .unwrap_err()
                .contains("is a directory")
        );
        // Found but not executable.
        assert!(
            find_executable("passwd", "/etc")
                .unwrap_err()
                .contains("permission denied")
        );
        assert!(find_executable("", "/bin").is_err());
    }
}
