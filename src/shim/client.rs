//! berthd's side of the shim: starting one, and talking to it over its socket.
//!
//! Every call is bounded in time so that a hung shim cannot hang berthd.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::fdpass;
use super::framing::{self, Frame};
use super::server::{pid_path, socket_path};
use crate::proto::shim::{
    AttachRequest, ContainerState, ContainerStateRequest, CreateContainerRequest,
    DeleteContainerRequest, ErrorKind, Event, ExecRequest, ExecSyncRequest, ExecSyncResponse,
    KillContainerRequest, OpenPtyRequest, PingRequest, PingResponse, ReopenLogRequest, Request,
    Response, SandboxConfig, ShutdownRequest, StartContainerRequest, SubscribeRequest, request,
    response,
};

/// How long a shim may take to start (namespaces, sysctls, pins) and report ready.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one request may take, on top of the time the request itself asks for.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shim could not be started; the text is what it reported.
    #[error("start shim: {0}")]
    Spawn(String),
    /// The exchange broke: bad bytes, a closed connection, an unexpected answer.
    #[error("shim protocol: {0}")]
    Protocol(String),
    /// The shim answered with an error of its own (an internal one).
    #[error("shim: {0}")]
    Shim(String),
    /// The shim does not know the container (ErrorKind NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The container is not in a state that allows the request (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is wrong: a bad id or signal, a command that does not exist in the
    /// image, a bad spec (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// Nobody listens on the socket (it does not exist or refuses): the shim is gone.
    #[error("shim at {0} is gone")]
    Gone(PathBuf),
    /// No answer in time.
    #[error("shim did not answer {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

/// Starts `shim_bin` for a pod and returns the shim's pid once it serves. The shim
/// detaches: it is not a child of the caller once this returns.
pub async fn spawn(shim_bin: &Path, config: &SandboxConfig) -> Result<u32, Error> {
    let mut child = tokio::process::Command::new(shim_bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Spawn(format!("run {}: {e}", shim_bin.display())))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = config.encode_length_delimited_to_vec();
    let run = async move {
        // A shim that fails before reading its stdin closes it: its stderr says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(SPAWN_TIMEOUT, run)
        .await
        .map_err(|_| Error::Timeout {
            what: "start",
            after: SPAWN_TIMEOUT,
        })?
        .map_err(|e| Error::Spawn(format!("wait for {}: {e}", shim_bin.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let err = err.strip_prefix("berth-shim: ").unwrap_or(err);
        return Err(Error::Spawn(if err.is_empty() {
            format!("berth-shim exited with {}", out.status)
        } else {
            err.to_string()
        }));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| Error::Spawn(format!("berth-shim printed {:?}, not a pid", text.trim())))
}

/// A handle on one pod's shim, by its socket. Each call opens its own connection.
#[derive(Debug, Clone)]
pub struct ShimClient {
    socket: PathBuf,
}

impl ShimClient {
    pub fn new(state_dir: &Path) -> ShimClient {
        ShimClient {
            socket: socket_path(state_dir),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The shim's pid and its pod init's (0 without a pod PID namespace, or once the init
    /// has died).
    pub async fn ping(&self) -> Result<PingResponse, Error> {
        let resp = self
            .call("ping", request::Kind::Ping(PingRequest {}), REQUEST_TIMEOUT)
            .await?;
        match resp {
            response::Kind::Ping(p) => Ok(p),
            other => Err(Error::Protocol(format!("ping answered with {other:?}"))),
        }
    }

    /// Stops everything the pod runs (SIGTERM, SIGKILL after `timeout`), unpins its
    /// namespaces and ends the shim. An error names what the shim could not clean up; the
    /// shim has exited all the same.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // The shim may need the whole timeout plus its SIGKILL grace before it answers.
        let bound = timeout + REQUEST_TIMEOUT;
        match self
            .call(
                "shutdown",
                request::Kind::Shutdown(ShutdownRequest { timeout_ms: ms }),
                bound,
            )
            .await?
        {
            response::Kind::Shutdown(_) => Ok(()),
            other => Err(Error::Protocol(format!("shutdown answered with {other:?}"))),
        }
    }

    /// Creates a container from the OCI bundle berthd prepared (its init waits for
    /// [`ShimClient::start_container`]); returns the init's pid.
    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<u32, Error> {
        match self
            .call(
                "create container",
                request::Kind::CreateContainer(req),
                REQUEST_TIMEOUT,
            )
            .await?
        {
            response::Kind::CreateContainer(c) => Ok(c.pid),
            other => Err(unexpected("create container", &other)),
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        let req = request::Kind::StartContainer(StartContainerRequest { id: id.into() });
        self.call_empty("start container", req).await
    }

    /// Sends `signal` to the container's init, or with `all` to every process of its
    /// cgroup. FailedPrecondition when the container has exited (and not `all`).
    pub async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), Error> {
        let signal = u32::try_from(signal)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        let req = request::Kind::KillContainer(KillContainerRequest {
            id: id.into(),
            signal,
            all,
        });
        self.call_empty("kill container", req).await
    }

    /// Forgets a container that is not running (its cgroup, libcontainer state, exit
    /// record and pipes). An unknown id is fine; a running container is
    /// FailedPrecondition.
    pub async fn delete_container(&self, id: &str) -> Result<(), Error> {
        let req = request::Kind::DeleteContainer(DeleteContainerRequest { id: id.into() });
        self.call_empty("delete container", req).await
    }

    /// The container's state; for a container the shim does not hold (any more), its
    /// exit record. NotFound when there is neither.
    pub async fn container_state(&self, id: &str) -> Result<ContainerState, Error> {
        let req = request::Kind::ContainerState(ContainerStateRequest { id: id.into() });
        match self.call("container state", req, REQUEST_TIMEOUT).await? {
            response::Kind::ContainerState(s) => Ok(s),
            other => Err(unexpected("container state", &other)),
        }
    }

    /// Runs `args` in the container and returns its output and exit code. With a
    /// non-zero `timeout` the shim kills the command when it passes and answers
    /// `timed_out`; the call itself is bounded by `timeout` plus [`REQUEST_TIMEOUT`].
    /// A zero `timeout` means none, and the call is not bounded either (the caller's
    /// deadline applies). A command that does not exist is InvalidArgument.
    pub async fn exec_sync(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecSyncResponse, Error> {
        let timeout_ms = if timeout.is_zero() {
            0
        } else {
            u32::try_from(timeout.as_millis())
                .unwrap_or(u32::MAX)
                .max(1)
        };
        let req = request::Kind::ExecSync(ExecSyncRequest {
            container_id: id.into(),
            args,
            timeout_ms,
        });
        let bound = if timeout.is_zero() {
            None
        } else {
            Some(timeout + REQUEST_TIMEOUT)
        };
        let exchange = self.exchange("exec", req);
        let (_, resp) = match bound {
            Some(b) => tokio::time::timeout(b, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    what: "exec",
                    after: b,
                })??,
            None => exchange.await?,
        };
        match answer("exec", resp)? {
            response::Kind::ExecSync(r) => Ok(r),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Runs `args` in the container with `stdio` ([stdin, stdout, stderr]; None is
    /// /dev/null) as the process's own stdio; with `tty`, the one given (a pty slave) is
    /// all three and its controlling terminal. Resolves with the exit code (128 + signal
    /// when killed) once the process has ended. Dropping the future before that closes
    /// the connection, and the shim kills the process. Errors as for `exec_sync`.
    pub async fn exec_interactive(
        &self,
        id: &str,
        args: Vec<String>,
        tty: bool,
        stdio: [Option<OwnedFd>; 3],
    ) -> Result<i32, Error> {
        let [stdin, stdout, stderr] = stdio;
        let req = request::Kind::Exec(ExecRequest {
            container_id: id.into(),
            args,
            tty,
            stdin: stdin.is_some(),
            stdout: stdout.is_some(),
            stderr: stderr.is_some(),
        });
        let fds: Vec<OwnedFd> = [stdin, stdout, stderr].into_iter().flatten().collect();
        // The fds are the shim's once sent (our copies close when `fds` is dropped there),
        // so that the caller sees EOF when the process ends.
        let (mut stream, mut reader, resp) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange_fds("exec", req, fds))
                .await
                .map_err(|_| Error::Timeout {
                    what: "exec",
                    after: REQUEST_TIMEOUT,
                })??;
        match answer("exec", resp)? {
            response::Kind::ExecStarted(_) => {}
            other => return Err(unexpected("exec", &other)),
        }
        match answer("exec", reader.next(&mut stream, "exec").await?)? {
            response::Kind::ExecExit(e) => Ok(e.exit_code),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// A new pty in the running container's own /dev/pts (see `OpenPtyRequest`):
    /// (master, slave, the slave's name inside the container).
    pub async fn open_pty(&self, id: &str) -> Result<(OwnedFd, OwnedFd, String), Error> {
        let req = request::Kind::OpenPty(OpenPtyRequest {
            container_id: id.into(),
        });
        let (_, mut reader, resp) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange_fds("open pty", req, Vec::new()),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: "open pty",
            after: REQUEST_TIMEOUT,
        })??;
        match answer("open pty", resp)? {
            response::Kind::OpenPty(p) => {
                let mut fds = reader.fds.drain(..);
                match (fds.next(), fds.next()) {
                    (Some(master), Some(slave)) => Ok((master, slave, p.name)),
                    _ => Err(Error::Protocol(
                        "open pty answered without the master and the slave".into(),
                    )),
                }
            }
            other => Err(unexpected("open pty", &other)),
        }
    }

    /// Attaches `stdout` and `stderr` (write ends, either may be absent) to the
    /// container's output until it exits (see `AttachRequest`); returns its stdin (the
    /// write end of its stdin pipe or a duplicate of its pty master, non-blocking; None
    /// without one) and whether it has a tty. NotFound for an unknown container,
    /// FailedPrecondition once it has exited.
    pub async fn attach(
        &self,
        id: &str,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<(Option<OwnedFd>, bool), Error> {
        let req = request::Kind::Attach(AttachRequest {
            id: id.into(),
            stdout: stdout.is_some(),
            stderr: stderr.is_some(),
        });
        let fds: Vec<OwnedFd> = [stdout, stderr].into_iter().flatten().collect();
        let (_, mut reader, resp) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange_fds("attach", req, fds))
                .await
                .map_err(|_| Error::Timeout {
                    what: "attach",
                    after: REQUEST_TIMEOUT,
                })??;
        match answer("attach", resp)? {
            response::Kind::Attach(a) => {
                let stdin = if a.stdin {
                    Some(reader.fds.drain(..).next().ok_or_else(|| {
                        Error::Protocol("attach answered without the container's stdin".into())
                    })?)
                } else {
                    None
                };
                Ok((stdin, a.tty))
            }
            other => Err(unexpected("attach", &other)),
        }
    }

    /// Makes the shim close and reopen the container's log file (after a rotation).
    pub async fn reopen_log(&self, id: &str) -> Result<(), Error> {
        let req = request::Kind::ReopenLog(ReopenLogRequest { id: id.into() });
        self.call_empty("reopen log", req).await
    }

    /// The shim's container events from now on (created, started, exited, deleted), for
    /// as long as the receiver is kept and the shim lives: the channel closes when the
    /// shim's connection does. Returns once the shim has registered the subscription, so
    /// no event after this returns is missed.
    pub async fn subscribe(&self) -> Result<tokio::sync::mpsc::Receiver<Event>, Error> {
        let req = request::Kind::Subscribe(SubscribeRequest {});
        let (mut stream, mut reader, resp) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange_keep("subscribe", req))
                .await
                .map_err(|_| Error::Timeout {
                    what: "subscribe",
                    after: REQUEST_TIMEOUT,
                })??;
        match answer("subscribe", resp)? {
            response::Kind::Empty(_) => {}
            other => return Err(unexpected("subscribe", &other)),
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = reader.next(&mut stream, "events") => match next {
                        Ok(Response { kind: Some(response::Kind::Event(e)), .. }) => {
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                        // Anything else (a closed connection included) ends the stream.
                        _ => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    async fn call_empty(&self, what: &'static str, kind: request::Kind) -> Result<(), Error> {
        match self.call(what, kind, REQUEST_TIMEOUT).await? {
            response::Kind::Empty(_) => Ok(()),
            other => Err(unexpected(what, &other)),
        }
    }

    async fn call(
        &self,
        what: &'static str,
        kind: request::Kind,
        bound: Duration,
    ) -> Result<response::Kind, Error> {
        let (_, resp) = tokio::time::timeout(bound, self.exchange(what, kind))
            .await
            .map_err(|_| Error::Timeout { what, after: bound })??;
        answer(what, resp)
    }

    /// Sends one request on a new connection and reads one answer.
    async fn exchange(
        &self,
        what: &'static str,
        kind: request::Kind,
    ) -> Result<(UnixStream, Response), Error> {
        let (stream, _, resp) = self.exchange_keep(what, kind).await?;
        Ok((stream, resp))
    }

    async fn exchange_keep(
        &self,
        what: &'static str,
        kind: request::Kind,
    ) -> Result<(UnixStream, FrameReader, Response), Error> {
        self.exchange_fds(what, kind, Vec::new()).await
    }

    /// Sends one request with `fds` (SCM_RIGHTS) on a new connection and reads one answer.
    async fn exchange_fds(
        &self,
        what: &'static str,
        kind: request::Kind,
        fds: Vec<OwnedFd>,
    ) -> Result<(UnixStream, FrameReader, Response), Error> {
        let mut stream = connect(&self.socket).await.map_err(|e| {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => Error::Gone(self.socket.clone()),
                _ => Error::Protocol(format!("connect {}: {e}", self.socket.display())),
            }
        })?;
        let req = Request { kind: Some(kind) };
        let bytes = req.encode_length_delimited_to_vec();
        let sent = if fds.is_empty() {
            0
        } else {
            stream
                .async_io(Interest::WRITABLE, || {
                    fdpass::send(stream.as_fd(), &bytes, &fds)
                })
                .await
                .map_err(|e| Error::Protocol(format!("send {what}: {e}")))?
        };
        drop(fds);
        stream
            .write_all(&bytes[sent..])
            .await
            .map_err(|e| Error::Protocol(format!("send {what}: {e}")))?;
        let mut reader = FrameReader::default();
        let resp = reader.next(&mut stream, what).await?;
        Ok((stream, reader, resp))
    }
}

/// The answer's payload, or its error as the variant its kind says.
fn answer(what: &str, resp: Response) -> Result<response::Kind, Error> {
    if !resp.error.is_empty() {
        return Err(match ErrorKind::try_from(resp.error_kind) {
            Ok(ErrorKind::NotFound) => Error::NotFound(resp.error),
            Ok(ErrorKind::FailedPrecondition) => Error::FailedPrecondition(resp.error),
            Ok(ErrorKind::InvalidArgument) => Error::InvalidArgument(resp.error),
            _ => Error::Shim(resp.error),
        });
    }
    resp.kind
        .ok_or_else(|| Error::Protocol(format!("empty answer to {what}")))
}

fn unexpected(what: &str, kind: &response::Kind) -> Error {
    Error::Protocol(format!("{what} answered with {kind:?}"))
}

/// Reads length-delimited Responses from a stream, keeping what follows one, and the
/// fds that came with them.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl FrameReader {
    async fn next(&mut self, stream: &mut UnixStream, what: &str) -> Result<Response, Error> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match framing::split(&self.buf) {
                Frame::Complete { header, len } => {
                    let resp = Response::decode(&self.buf[header..header + len])
                        .map_err(|e| Error::Protocol(format!("bad answer to {what}: {e}")));
                    self.buf.drain(..header + len);
                    return resp;
                }
                Frame::Invalid(e) => {
                    return Err(Error::Protocol(format!("bad answer to {what}: {e}")));
                }
                Frame::Incomplete => {}
            }
            let n = stream
                .async_io(Interest::READABLE, || {
                    fdpass::recv(stream.as_fd(), &mut chunk, &mut self.fds)
                })
                .await
                .map_err(|e| Error::Protocol(format!("read answer to {what}: {e}")))?;
            if n == 0 {
                return Err(Error::Protocol(format!(
                    "the shim closed the connection without answering {what}"
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether the pod's shim runs: its pid file names a live process (not a zombie) called
/// `berth-shim`, which guards against a reused pid. A few small reads under /proc: cheap
/// enough to call from async code.
pub fn shim_alive(state_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pid_path(state_dir))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != "berth-shim" {
        return false;
    }
    // The state is the field after the parenthesised comm.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Connects to a socket whose path may be longer than a socket address holds (107
/// bytes): through `/proc/self/fd/N/` of its directory, opened `O_PATH`.
async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    if path.as_os_str().as_bytes().len() < 100 {
        return UnixStream::connect(path).await;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(d.as_raw_fd().to_string())
        .join(name);
    let s = UnixStream::connect(&short).await;
    drop(d);
    s
}
