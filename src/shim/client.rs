//! berthd's side of the shim: starting one, and talking to it over its socket.
//!
//! Every call is bounded in time so that a hung shim cannot hang berthd.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::framing::{self, Frame};
use super::server::{pid_path, socket_path};
use crate::proto::shim::{
    PingRequest, PingResponse, Request, Response, SandboxConfig, ShutdownRequest, request, response,
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
    /// The shim answered with an error.
    #[error("shim: {0}")]
    Shim(String),
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

    async fn call(
        &self,
        what: &'static str,
        kind: request::Kind,
        bound: Duration,
    ) -> Result<response::Kind, Error> {
        let exchange = async {
            let mut stream = connect(&self.socket).await.map_err(|e| {
                use std::io::ErrorKind::*;
                match e.kind() {
                    NotFound | ConnectionRefused => Error::Gone(self.socket.clone()),
                    _ => Error::Protocol(format!("connect {}: {e}", self.socket.display())),
                }
            })?;
            let req = Request { kind: Some(kind) };
            stream
                .write_all(&req.encode_length_delimited_to_vec())
                .await
                .map_err(|e| Error::Protocol(format!("send {what}: {e}")))?;
            read_response(&mut stream, what).await
        };
        let resp = tokio::time::timeout(bound, exchange)
            .await
            .map_err(|_| Error::Timeout { what, after: bound })??;
        if !resp.error.is_empty() {
            return Err(Error::Shim(resp.error));
        }
        resp.kind
            .ok_or_else(|| Error::Protocol(format!("empty answer to {what}")))
    }
}

async fn read_response(stream: &mut UnixStream, what: &str) -> Result<Response, Error> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    loop {
        match framing::split(&buf) {
            Frame::Complete { header, len } => {
                return Response::decode(&buf[header..header + len])
                    .map_err(|e| Error::Protocol(format!("bad answer to {what}: {e}")));
            }
            Frame::Invalid(e) => {
                return Err(Error::Protocol(format!("bad answer to {what}: {e}")));
            }
            Frame::Incomplete => {}
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Error::Protocol(format!("read answer to {what}: {e}")))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "the shim closed the connection without answering {what}"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
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
