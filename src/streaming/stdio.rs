//! berthd's ends of an exec'd or attached process's stdio: pipes and pseudo-terminal
//! masters as non-blocking fds driven by tokio, and terminal resizing. The process's own ends go to
//! the shim as they are (blocking), so data flows between the process and berthd only.
//! A syscall module: registering an fd with tokio's reactor is `unsafe`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::OFlags;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Sets the terminal size on a pty master (or any fd of the terminal).
pub fn resize(fd: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is an open fd that stays open, and is the same fd, until the
    // AsyncFd that owns it drops it.
    let fd =
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }?;
    Ok(fd)
}

/// An fd (pipe end or pty master) read and written asynchronously. Reading a pty master
/// whose slave is closed everywhere ends like EOF.
pub struct AsyncFdIo {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncFdIo {
    /// Takes `fd` and makes it non-blocking (a flag of the open file description, which a
    /// duplicate in another process shares).
    pub fn new(fd: OwnedFd) -> io::Result<AsyncFdIo> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(AsyncFdIo { fd: register(fd)? })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Reads into `buf`; 0 at EOF.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                // A pty master once the last slave fd is closed.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;

    /// A new pseudo-terminal: (master, slave), both close-on-exec, the slave not our
    /// controlling terminal.
    pub(crate) fn pty() -> io::Result<(OwnedFd, OwnedFd)> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok((master, slave))
    }

    #[tokio::test]
    async fn pipe_ends_carry_data_and_eof() {
        let (r, w) = pipe().unwrap();
        let (r, w) = (AsyncFdIo::new(r).unwrap(), AsyncFdIo::new(w).unwrap());
        let big = vec![5u8; 200_000];
        let writer = tokio::spawn(async move {
            w.write_all(&big).await.unwrap();
        });
        let mut got = 0;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|b| *b == 5));
            got += n;
        }
        writer.await.unwrap();
        assert_eq!(got, 200_000);
    }

    #[tokio::test]
    async fn pty_master_sees_slave_output_then_eof_and_resizes() {
        let (m, s) = pty().unwrap();
        resize(&m, 120, 40).unwrap();
        let ws = rustix::termios::tcgetwinsize(&s).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        rustix::io::write(&s, b"hi").unwrap();
        drop(s);
        let m = AsyncFdIo::new(m).unwrap();
        let mut buf = [0u8; 16];
        let n = m.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(m.read(&mut buf).await.unwrap(), 0);
    }
}
