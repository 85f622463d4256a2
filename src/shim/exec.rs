//! ExecSync: a command run in a running container (joined by `setns_exec`), its output
//! collected by the shim's poll loop. [`start_process`] is shared with
//! interactive execs (`interactive`), which get the caller's stdio instead.
//!
//! The command gets the container's process settings (user, groups, capabilities,
//! environment, working directory, rlimits, no_new_privileges, …): the spec's `process`
//! with `args` replaced. It joins the container's namespaces and cgroups. The request
//! stays pending while it runs; it is answered once the process has been reaped and its
//! pipes reached EOF (or [`IO_GRACE`] after its exit, when a process it left behind holds
//! them). When the timeout passes the process and its process group are killed with
//! SIGKILL and the answer, once it is reaped, says `timed_out` with whatever output
//! arrived.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::containers::{Failure, OomScoreGuard, dev_null, exit_code, pipe, set_nonblocking};
use super::setns_exec::{self, Target};
use super::workload::BerthExecutor;
use crate::proto::shim::ExecSyncResponse;

/// How long the output may take to reach EOF after the process exited.
pub const IO_GRACE: Duration = Duration::from_secs(1);
/// Most output kept per stream; the rest is read and dropped. Both streams together fit
/// in one message of the protocol (`framing::MAX_MESSAGE`).
pub const MAX_OUTPUT: usize = 8 << 20;

pub struct Exec {
    /// The connection that waits for the answer.
    pub conn: u64,
    pub pid: Pid,
    deadline: Option<Instant>,
    pipes: [Option<OwnedFd>; 2],
    output: [Vec<u8>; 2],
    exit: Option<i32>,
    exited_at: Option<Instant>,
    timed_out: bool,
}

/// Starts `args` in container `id` (see [`start_process`]).
pub fn spawn(
    target: &Target,
    lc_root: &Path,
    id: &str,
    conn: u64,
    seq: u64,
    args: Vec<String>,
    timeout_ms: u32,
) -> Result<Exec, Failure> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        Failure::internal(format!("exec in container {id}: {what}: {e}"))
    };
    let mut pipes: [Option<OwnedFd>; 2] = [None, None];
    let mut ends = Vec::with_capacity(2);
    for slot in &mut pipes {
        let (r, w) = pipe().map_err(|e| internal("pipe", &e))?;
        set_nonblocking(&r).map_err(|e| internal("pipe", &e))?;
        *slot = Some(r);
        ends.push(w);
    }
    let stderr = ends.pop().expect("two pipes");
    let stdout = ends.pop().expect("two pipes");
    let stdin = dev_null(false).map_err(|e| internal("/dev/null", &e))?;
    let pid = start_process(
        target,
        lc_root,
        id,
        seq,
        args,
        false,
        Stdio {
            stdin,
            stdout,
            stderr,
        },
    )?;
    Ok(Exec {
        conn,
        pid,
        deadline: (timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms))),
        pipes,
        output: [Vec::new(), Vec::new()],
        exit: None,
        exited_at: None,
        timed_out: false,
    })
}

/// The fds a process started in a container gets as 0, 1 and 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Makes the process's user the owner of its stdio (not /dev/null), as runc does
/// (`fixStdioPermissions`): a non-root process may then reopen them (`/dev/stdout`,
/// `/proc/self/fd/N`) and use its terminal as its own. The group stays (a devpts mount
/// may give its ptys the tty group). `uid` is the container's; in a user namespace
/// (`uid_map`, its /proc/PID/uid_map) it is mapped to the host's. Best effort, as in runc.
fn give_stdio(uid_map: Option<&str>, uid: u32, stdio: &Stdio) {
    let host_uid = match uid_map {
        Some(map) => host_id(map, uid),
        None => Some(uid),
    };
    let (Some(host_uid), Ok(null)) = (host_uid, nix::sys::stat::stat("/dev/null")) else {
        return;
    };
    for fd in [&stdio.stdin, &stdio.stdout, &stdio.stderr] {
        let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) else {
            continue;
        };
        if st.st_uid == host_uid || st.st_rdev == null.st_rdev {
            continue;
        }
        let _ = nix::unistd::fchown(
            fd.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(host_uid)),
            None,
        );
    }
}

/// The host's id of `id` in a user namespace whose /proc/PID/uid_map (or gid_map) is
/// `map` (`inside outside count` lines); None when it is not mapped.
fn host_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        let offset = id.checked_sub(inside)?;
        (offset < count).then(|| outside + offset)
    })
}

/// Starts `args` in container `id` (ExecSync and interactive execs alike): the spec's
/// process with `args`, the container's seccomp filter, `stdio` as its stdio. With `tty`
/// (stdin is a terminal) TERM is `xterm`, as containerd sets it, and the terminal becomes
/// the process's controlling terminal. It joins the container with `setns_exec`, or with
/// libcontainer's tenant builder (container state under `lc_root`) when the process asks
/// for what only that applies. The shim's copies of `stdio` are closed when this returns.
pub fn start_process(
    target: &Target,
    lc_root: &Path,
    id: &str,
    seq: u64,
    args: Vec<String>,
    tty: bool,
    stdio: Stdio,
) -> Result<Pid, Failure> {
    if args.is_empty() {
        return Err(Failure::invalid("exec: no command given"));
    }
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        Failure::internal(format!("exec in container {id}: {what}: {e}"))
    };
    let mut process = target
        .spec
        .process()
        .clone()
        .ok_or_else(|| Failure::internal(format!("container {id}: the spec has no process")))?;
    // libcontainer's own terminal handling (a console socket) makes a new pty in the
    // container; the caller's terminal is given as plain stdio instead.
    process
        .set_args(Some(args))
        .set_terminal(Some(false))
        .set_console_size(None);
    if tty {
        let mut env: Vec<String> = process.env().clone().unwrap_or_default();
        env.retain(|e| !e.starts_with("TERM="));
        env.push("TERM=xterm".into());
        process.set_env(Some(env));
    }
    give_stdio(target.uid_map(), process.user().uid(), &stdio);
    if !target.needs_tenant_builder(&process) {
        return setns_exec::spawn(target, &process, stdio, tty).map_err(|e| match e {
            setns_exec::Error::Invalid(m) => Failure::invalid(m),
            setns_exec::Error::Internal(m) => internal("join the container", &m),
        });
    }
    let process_file = lc_root.join(id).join(format!("berth-exec-{seq}.json"));
    let json = serde_json::to_vec(&process).map_err(|e| internal("process.json", &e))?;
    std::fs::write(&process_file, json).map_err(|e| internal("write process.json", &e))?;

    let built = {
        let _oom = OomScoreGuard::save();
        ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_executor(BerthExecutor {
                seccomp: target
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.seccomp().clone()),
                controlling_tty: tty,
            })
            .with_root_path(lc_root)
            .map(|b| {
                b.with_stdin(stdio.stdin)
                    .with_stdout(stdio.stdout)
                    .with_stderr(stdio.stderr)
                    .as_tenant()
                    .with_detach(true)
                    .with_process(Some(&process_file))
            })
            .and_then(|b| b.build())
    };
    let _ = std::fs::remove_file(&process_file);
    built.map_err(|e| Failure::libcontainer(&format!("exec in container {id}"), &e))
}

impl Exec {
    pub fn pipes(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>)> {
        self.pipes
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| p.as_ref().map(|fd| (slot, fd.as_fd())))
    }

    /// Reads what pipe `slot` has, up to `budget` bytes.
    pub fn pump(&mut self, slot: usize, budget: usize) {
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0;
        while total < budget {
            let Some(fd) = self.pipes[slot].as_ref() else {
                return;
            };
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(fd), &mut chunk) {
                Ok(0) => {
                    self.pipes[slot] = None;
                    return;
                }
                Ok(n) => {
                    total += n;
                    let keep = n.min(MAX_OUTPUT.saturating_sub(self.output[slot].len()));
                    self.output[slot].extend_from_slice(&chunk[..keep]);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    self.pipes[slot] = None;
                    return;
                }
            }
        }
    }

    fn drain(&mut self) {
        for slot in 0..2 {
            self.pump(slot, MAX_OUTPUT * 2);
        }
    }

    /// The process was reaped.
    pub fn exited(&mut self, status: &WaitStatus) {
        self.exit = Some(exit_code(status).0);
        self.exited_at = Some(Instant::now());
        self.drain();
    }

    pub fn has_exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Kills the process when its time is up; returns when the loop must look again.
    pub fn deadline(&mut self, now: Instant) -> Option<Instant> {
        if let Some(at) = self.exited_at {
            return (self.pipes.iter().any(Option::is_some) && !self.timed_out)
                .then_some(at + IO_GRACE);
        }
        let d = self.deadline?;
        if self.timed_out {
            return None;
        }
        if now >= d {
            self.timed_out = true;
            // Its process group too (it leads a session of its own): what a shell
            // started goes with it.
            let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGKILL);
            let _ = kill(self.pid, Signal::SIGKILL);
            return None;
        }
        Some(d)
    }

    pub fn is_done(&self, now: Instant) -> bool {
        let Some(at) = self.exited_at else {
            return false;
        };
        self.timed_out || self.pipes.iter().all(Option::is_none) || now >= at + IO_GRACE
    }

    pub fn finish(mut self) -> ExecSyncResponse {
        self.drain();
        let [stdout, stderr] = std::mem::take(&mut self.output);
        ExecSyncResponse {
            stdout,
            stderr,
            exit_code: self.exit.unwrap_or(-1),
            timed_out: self.timed_out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_through_a_uid_map() {
        let map = "         0     100000      65536\n     65536          5          1\n";
        assert_eq!(host_id(map, 0), Some(100_000));
        assert_eq!(host_id(map, 1000), Some(101_000));
        assert_eq!(host_id(map, 65_536), Some(5));
        assert_eq!(host_id(map, 65_537), None);
        assert_eq!(host_id("0 0 4294967295\n", 1000), Some(1000));
    }
}
