//! Interactive exec and attach, the shim's side of the CRI's Exec and Attach (berthd's
//! streaming server talks to the client).
//!
//! - **Exec.** berthd sends the process's own stdio with the request (SCM_RIGHTS, see
//!   `fdpass`): pipes, or a pty slave for all three. The process gets them directly
//!   (libcontainer's tenant builder, as ExecSync), so no byte of its data passes through
//!   the shim. The shim reaps it and tells the waiting connection its exit code; if the
//!   connection goes away first, the process and its process group are killed.
//! - **Attach.** berthd sends write ends for the container's output; as the shim reads
//!   the container's stdout/stderr (for the CRI log) it also writes each chunk to them,
//!   without blocking: a reader that cannot take a chunk whole, or has gone away, is
//!   dropped, so neither the container nor its log ever waits for it. They are closed
//!   when the container exits. The answer carries the container's stdin.
//! - **A pty for an exec** is made in the container's own devpts ([`open_pty`]), not the
//!   host's: inside, the slave then has a name (`tty` prints `/dev/pts/N`, ttyname(3)
//!   works), as with runc, which makes it in the container.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::containers::{Failure, dev_null, set_nonblocking};
use super::exec::Stdio;
use crate::proto::shim::ExecRequest;

/// Pipe buffer asked for an attached output, so that a reader may fall a little behind
/// without being dropped (pipe-max-size, 1 MiB, is the most an unprivileged user gets;
/// the pages are only used while data waits).
const ATTACH_PIPE_SIZE: i32 = 1 << 20;

/// A running interactive exec.
pub struct Interactive {
    /// The connection that waits for its exit.
    pub conn: u64,
    pub pid: Pid,
    /// Its exit code once reaped.
    pub exit: Option<i32>,
}

impl Interactive {
    /// SIGKILL to the process and its process group (libcontainer made it a session
    /// leader): what a shell started goes with it.
    pub fn kill(&self) {
        let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGKILL);
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// The devpts multiplexer, `/dev/pts/ptmx`: character device 5:2.
const PTMX: (u64, u64) = (5, 2);

/// A new pseudo-terminal in the devpts of the container whose init is `pid` (the shim's,
/// i.e. the host's, pid): its `/dev/pts/ptmx`, looked up in the container's root without
/// leaving it or following a symlink, and checked to be the ptmx device before it is
/// opened. Returns the master, the slave (both close-on-exec, not controlling) and the
/// slave's name inside the container.
#[allow(unsafe_code)]
pub fn open_pty(pid: Pid) -> Result<(OwnedFd, OwnedFd, String), String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::{Mode, SFlag, fstat, major, minor};
    let root_path = format!("/proc/{pid}/root");
    let root = open(
        root_path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {root_path}: {e}"))?;
    // SAFETY: `open` just returned this fd; nothing else owns it.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    // O_PATH: nothing is opened until it is known to be the ptmx. RESOLVE_IN_ROOT keeps
    // the container's symlinks inside its root.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let ptmx = openat2(root.as_raw_fd(), "dev/pts/ptmx", how)
        .map_err(|e| format!("find /dev/pts/ptmx in the container: {e}"))?;
    // SAFETY: `openat2` just returned this fd; nothing else owns it.
    let ptmx = unsafe { OwnedFd::from_raw_fd(ptmx) };
    let st = fstat(ptmx.as_raw_fd()).map_err(|e| format!("fstat /dev/pts/ptmx: {e}"))?;
    let is_chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_chr || (major(st.st_rdev), minor(st.st_rdev)) != PTMX {
        return Err("the container's /dev/pts/ptmx is not the pty multiplexer".into());
    }
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", ptmx.as_raw_fd()))
        .map_err(|e| format!("open /dev/pts/ptmx: {e}"))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, which lives across the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })
        .map_err(|e| format!("unlock the pty: {e}"))?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `n`, which lives across the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })
        .map_err(|e| format!("pty number: {e}"))?;
    // The slave through the master (no path lookup in the container's /dev/pts).
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as an int and returns a new fd.
    let slave = Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })
        .map_err(|e| format!("open the pty's slave: {e}"))?;
    // SAFETY: the ioctl just returned this new fd; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave, format!("/dev/pts/{n}")))
}

/// How many fds an exec request comes with.
pub fn exec_fd_count(req: &ExecRequest) -> usize {
    usize::from(req.stdin) + usize::from(req.stdout) + usize::from(req.stderr)
}

/// The exec's stdio from the fds berthd sent (stdin, stdout, stderr, as flagged):
/// /dev/null for a stream without one; with a tty, the one terminal for all three.
pub fn exec_stdio(req: &ExecRequest, fds: Vec<OwnedFd>) -> Result<Stdio, Failure> {
    let io_err = |e: &dyn std::fmt::Display| {
        Failure::internal(format!("exec in container {}: {e}", req.container_id))
    };
    let mut fds = fds.into_iter();
    let mut take = |flag: bool| if flag { fds.next() } else { None };
    let (stdin, stdout, stderr) = (take(req.stdin), take(req.stdout), take(req.stderr));
    if req.tty {
        let terminal = stdin.or(stdout).or(stderr).ok_or_else(|| {
            Failure::invalid("an exec with a tty needs the terminal (a pty slave)")
        })?;
        return Ok(Stdio {
            stdin: terminal.try_clone().map_err(|e| io_err(&e))?,
            stdout: terminal.try_clone().map_err(|e| io_err(&e))?,
            stderr: terminal,
        });
    }
    let or_null = |fd: Option<OwnedFd>, write: bool| match fd {
        Some(fd) => Ok(fd),
        None => dev_null(write).map_err(|e| io_err(&e)),
    };
    Ok(Stdio {
        stdin: or_null(stdin, false)?,
        stdout: or_null(stdout, true)?,
        stderr: or_null(stderr, true)?,
    })
}

/// Makes an fd berthd sent for attach ready for [`forward`]: non-blocking, and a pipe
/// buffer with some room.
pub fn prepare_output(fd: &OwnedFd) -> nix::Result<()> {
    set_nonblocking(fd)?;
    // Not a pipe (a socket, say): its own buffer will do.
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(ATTACH_PIPE_SIZE),
    );
    Ok(())
}

/// Writes `data` to every attached output; one that cannot take all of it now, or is
/// gone, is closed and its slot emptied (the slots keep their places: the poll loop
/// refers to them by index).
pub fn forward(attached: &mut [Option<OwnedFd>], data: &[u8], id: &str) {
    if data.is_empty() {
        return;
    }
    for slot in attached.iter_mut() {
        let Some(fd) = slot.as_ref() else { continue };
        let mut rest = data;
        let ok = loop {
            match nix::unistd::write(fd, rest) {
                Ok(n) if n == rest.len() => break true,
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    log!("container {id}: an attached reader fell behind; dropping it");
                    break false;
                }
                // EPIPE: the reader went away.
                Err(_) => break false,
            }
        };
        if !ok {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn req(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            args: vec!["sh".into()],
            tty,
            stdin,
            stdout,
            stderr,
        }
    }

    fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
        let (a, b) = (
            nix::sys::stat::fstat(a.as_raw_fd()).unwrap(),
            nix::sys::stat::fstat(b.as_raw_fd()).unwrap(),
        );
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    #[test]
    fn stdio_from_fds() {
        let r = req(false, true, false, false);
        assert_eq!(exec_fd_count(&r), 1);
        let (_pr, pw) = nix::unistd::pipe().unwrap();
        let keep = pw.try_clone().unwrap();
        let io = exec_stdio(&r, vec![pw]).unwrap();
        assert!(same_file(&io.stdout, &keep));
        let null = dev_null(false).unwrap();
        assert!(same_file(&io.stdin, &null) && same_file(&io.stderr, &null));

        let t = req(true, true, false, true);
        assert_eq!(exec_fd_count(&t), 2);
        let (_r, w) = nix::unistd::pipe().unwrap();
        let keep = w.try_clone().unwrap();
        let (_r2, w2) = nix::unistd::pipe().unwrap();
        let io = exec_stdio(&t, vec![w, w2]).unwrap();
        assert!(
            [&io.stdin, &io.stdout, &io.stderr]
                .iter()
                .all(|fd| same_file(fd, &keep))
        );

        let e = exec_stdio(&req(false, false, false, true), vec![])
            .err()
            .unwrap();
        assert_eq!(e.kind, crate::proto::shim::ErrorKind::InvalidArgument);
    }

    #[test]
    fn forward_drops_slow_and_gone_readers() {
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let (r3, w3) = nix::unistd::pipe().unwrap();
        for w in [&w1, &w2, &w3] {
            set_nonblocking(w).unwrap();
        }
        // A small pipe that one chunk overfills.
        nix::fcntl::fcntl(w2.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        let mut attached = vec![Some(w1), Some(w2), Some(w3)];
        forward(&mut attached, b"hello\n", "c");
        assert!(attached.iter().all(Option::is_some));
        drop(r3);
        forward(&mut attached, &[b'x'; 8192], "c");
        assert!(attached[0].is_some());
        assert!(attached[1].is_none(), "the full pipe's reader is dropped");
        assert!(attached[2].is_none(), "the closed pipe's reader is dropped");
        drop(attached);
        let mut got = Vec::new();
        std::fs::File::from(r1).read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 6 + 8192);
        let mut got = Vec::new();
        std::fs::File::from(r2).read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"hello\n"));
    }
}
