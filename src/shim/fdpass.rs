//! File descriptors across the shim's socket (SCM_RIGHTS), for interactive exec and
//! attach: berthd's pipes and pty slave go to the shim, a container's stdin comes back.
//! Both sides use these on non-blocking sockets (berthd from tokio's readiness callbacks).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most fds one message carries (stdin, stdout, stderr); the kernel closes any beyond.
pub const MAX_FDS: usize = 3;

/// Reads what the socket holds into `buf`, appending the fds that came with it
/// (close-on-exec) to `fds`. Ok(0) is EOF.
#[allow(unsafe_code)]
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let n = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel has just installed these fds in our table for this
            // message; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(n)
}

/// Writes (a prefix of) `data` with `fds` attached to its first byte; `data` must not be
/// empty. The fds are the peer's once this returns Ok: the caller closes its copies.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[OwnedFd]) -> std::io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_with_their_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(send(a.as_fd(), b"hello", &[w]).unwrap(), 5);
        (&a).write_all(b" world").unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 11 {
            let n = recv(b.as_fd(), &mut buf, &mut fds).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello world");
        assert_eq!(fds.len(), 1);
        // The received fd is the pipe's write end.
        std::fs::File::from(fds.pop().unwrap())
            .write_all(b"x")
            .unwrap();
        let mut one = [0u8; 1];
        std::fs::File::from(r).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        drop(a);
        assert_eq!(recv(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
    }
}
