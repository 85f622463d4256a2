//! Interactive exec and attach (the CRI's Exec and Attach): what berthd's streaming
//! server calls once a client has connected. The process's data never passes through
//! berthd's or the shim's memory twice: exec hands the caller's fds to the process itself
//! (through the pod's shim, see `shim::interactive`), attach gets the container's stdin
//! and has the shim copy its output into the caller's pipes.

use std::os::fd::OwnedFd;

use super::lifecycle::{ContainerService, Error, Result, shim_err};
use crate::store::containers::ContainerState;

/// The process's own ends of its stdio, as berthd made them: stdin a read end, stdout and
/// stderr write ends (pipes), or with `tty` one pty slave for all three (in `stdin` or
/// `stdout`; the others None). A stream left None is /dev/null (with a tty, the slave is
/// stdin, stdout and stderr whichever field holds it). Make the pty with
/// [`ContainerService::open_pty`]: one of the host's works too, but inside the container
/// it has no name (`tty` says "not a tty", ttyname(3) fails).
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A pseudo-terminal made in a container's own /dev/pts.
#[derive(Debug)]
pub struct Pty {
    /// The caller's end: what the process writes is read here, what is written here is
    /// its input; resize with TIOCSWINSZ. Blocking, close-on-exec.
    pub master: OwnedFd,
    /// For [`ProcessIo`]: the process's stdin, stdout, stderr and controlling terminal.
    pub slave: OwnedFd,
    /// The slave's path inside the container, e.g. `/dev/pts/0`.
    pub name: String,
}

#[derive(Debug)]
pub struct Attach {
    /// Write end of the container's stdin (a pipe), or a duplicate of its pty master when
    /// it has a tty (the caller resizes with TIOCSWINSZ on it). None when the container was
    /// created without stdin, or when its stdin_once stdin was handed out already. With
    /// stdin_once, the shim keeps no copy of its own, so closing this fd gives the
    /// container EOF. Non-blocking (a pty master shares that flag with the shim's copy):
    /// use it with `tokio::io::unix::AsyncFd` or expect EAGAIN.
    pub stdin: Option<OwnedFd>,
    pub tty: bool,
}

impl ContainerService {
    /// Runs `cmd` in the running container `id` (its namespaces, cgroup, user,
    /// capabilities, seccomp, as ExecSync does) with `io` as its stdio; with `tty` the
    /// process gets the pty slave as its controlling terminal (setsid + TIOCSCTTY in the
    /// exec'd process) and TERM=xterm. Resolves with the exit code when the process ends
    /// (128+signal when killed). Dropping the future before that kills the process (and
    /// its process group), so a client that goes away leaves nothing running. berthd's
    /// copies of `io` are closed as soon as the shim has them, so the caller's ends see
    /// EOF when the process (and whatever it left holding them) is gone.
    /// Errors: unknown container NotFound, not running FailedPrecondition, a command that
    /// does not exist in the image InvalidArgument, as for ExecSync.
    pub async fn exec_interactive(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: ProcessIo,
    ) -> Result<i32> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec: empty command".into()));
        }
        if tty && io.stdin.is_none() && io.stdout.is_none() && io.stderr.is_none() {
            return Err(Error::InvalidArgument(
                "exec: a tty needs its terminal (the pty slave)".into(),
            ));
        }
        self.shim(&rec)
            .exec_interactive(&rec.id, cmd, tty, [io.stdin, io.stdout, io.stderr])
            .await
            .map_err(|e| shim_err(&rec.id, "exec", e))
    }

    /// A new pseudo-terminal in the running container `id`'s own /dev/pts, for
    /// [`ContainerService::exec_interactive`] with `tty`: made there (as runc makes an
    /// exec's console), its slave is named inside the container as it is for the process.
    /// Errors: unknown container NotFound, not running FailedPrecondition.
    pub async fn open_pty(&self, id: &str) -> Result<Pty> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let (master, slave, name) = self
            .shim(&rec)
            .open_pty(&rec.id)
            .await
            .map_err(|e| shim_err(&rec.id, "open a pty", e))?;
        Ok(Pty {
            master,
            slave,
            name,
        })
    }

    /// Attaches to the running container's main process: from now until it exits, the
    /// shim also copies everything the container writes to stdout / stderr (with a tty:
    /// the pty output, to stdout; `stderr` is then closed at once) into these write ends
    /// (non-blocking; a reader that falls behind by more than the pipe holds, 1 MiB when
    /// the shim may enlarge it, or goes away is dropped, never blocking the container or
    /// its log). The shim closes them when the container exits, so the caller sees EOF.
    /// Errors: unknown container NotFound, not running FailedPrecondition.
    pub async fn attach(
        &self,
        id: &str,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<Attach> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let (stdin, tty) = self
            .shim(&rec)
            .attach(&rec.id, stdout, stderr)
            .await
            .map_err(|e| shim_err(&rec.id, "attach", e))?;
        Ok(Attach { stdin, tty })
    }
}
