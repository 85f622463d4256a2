//! Exec and attach sessions (kubelet's `remotecommand` server): the client's stdin,
//! stdout, stderr, error and resize channels joined to a process's stdio, then the
//! outcome on the error channel.
//!
//! berthd makes the stdio itself (pipes; with a tty, a pseudo-terminal that the shim opens
//! in the container's own /dev/pts) and gives the process's ends to the container
//! service, keeping its own ends (the pipes' other ends, the pty master) to copy between
//! them and the channels. The protocol version decides what goes on the error channel:
//! v4 and v5 a JSON `Status` (with the exit code), older ones only a failure's text.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::connection::Connection;
use super::stdio::{self, AsyncFdIo};
use super::{ChannelIn, ChannelOut, STREAM_CREATION_TIMEOUT};
use crate::container::{ContainerService, ProcessIo};

/// The `channel.k8s.io` versions berthd speaks over SPDY, preferred first. client-go 1.34
/// offers v5 first; over SPDY it means what v4 does.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// After the process exits, how long its output may still take to reach EOF (a child it
/// left behind can hold the pipe open for ever).
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl Version {
    pub fn from_protocol(p: &str) -> Option<Version> {
        Some(match p {
            "channel.k8s.io" => Version::V1,
            "v2.channel.k8s.io" => Version::V2,
            "v3.channel.k8s.io" => Version::V3,
            "v4.channel.k8s.io" => Version::V4,
            "v5.channel.k8s.io" => Version::V5,
            _ => return None,
        })
    }

    /// Whether the client sends terminal sizes (a resize channel).
    pub fn resizes(self) -> bool {
        self >= Version::V3
    }
}

/// An Exec request waiting for its client.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An Attach request waiting for its client.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The container's stdin closes when this client's stdin ends (CRI `stdin_once`);
    /// `StreamServer::attach` fills it in from the container's config.
    pub stdin_once: bool,
}

/// A session's channels, whichever transport carries them.
pub struct Channels<I, O> {
    pub stdin: Option<I>,
    pub stdout: Option<O>,
    pub stderr: Option<O>,
    pub error: Option<O>,
    pub resize: Option<I>,
}

/// How a session ended, for the error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command exited non-zero.
    ExitCode {
        cmd: Vec<String>,
        code: i32,
    },
    /// berthd could not run or attach (kubelet's "InternalError").
    Internal(String),
}

#[derive(Serialize)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    reason: &'static str,
    message: String,
}

impl Outcome {
    /// The message kubelet writes for a failure.
    fn message(&self) -> Option<String> {
        match self {
            Outcome::Success => None,
            // Go's %v of the command: [sh -c exit 3]
            Outcome::ExitCode { cmd, code } => Some(format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            )),
            Outcome::Internal(e) => Some(format!("Internal error occurred: {e}")),
        }
    }

    /// What goes on the error channel for `version`; empty for nothing.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        if version < Version::V4 {
            return self.message().unwrap_or_default().into_bytes();
        }
        let status = match self {
            Outcome::Success => Status {
                metadata: Empty {},
                status: "Success",
                message: None,
                reason: None,
                details: None,
                code: None,
            },
            Outcome::ExitCode { code, .. } => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: "ExitCode",
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Internal(_) => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("InternalError"),
                details: None,
                code: Some(500),
            },
        };
        serde_json::to_vec(&status).expect("a status serializes")
    }
}

/// A resize message: `{"Width":80,"Height":24}`, one JSON document after another.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Applies the sizes the client sends to the terminal behind `fd` until it stops.
async fn follow_resizes(mut input: impl ChannelIn, fd: Arc<AsyncFdIo>) {
    let mut buf = Vec::new();
    while let Some(chunk) = input.recv().await {
        buf.extend_from_slice(&chunk);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    used = it.byte_offset();
                    if size.width > 0
                        && size.height > 0
                        && let Err(e) = stdio::resize(fd.as_fd(), size.width, size.height)
                    {
                        tracing::debug!(error = %e, "cannot resize the terminal");
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                // As kubelet: a bad message ends resizing.
                Some(Err(_)) => return,
                None => break,
            }
        }
        buf.drain(..used);
    }
}

/// Copies the client's input into `fd` until the client ends it; `fd` is dropped then
/// (closing it unless shared).
async fn copy_in(mut input: impl ChannelIn, fd: Arc<AsyncFdIo>) {
    while let Some(chunk) = input.recv().await {
        if fd.write_all(&chunk).await.is_err() {
            // The process stopped reading: discard the rest.
            while input.recv().await.is_some() {}
            return;
        }
    }
}

/// Copies `fd` to the client until EOF. Without a channel the output is read and dropped,
/// so that the process never blocks on it.
async fn copy_out<O: ChannelOut>(fd: Arc<AsyncFdIo>, out: Option<&O>) {
    let mut buf = vec![0u8; super::connection::MAX_DATA_FRAME];
    let mut out = out;
    loop {
        match fd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(o) = out
                    && o.write(&buf[..n]).await.is_err()
                {
                    // The client reset this channel: keep draining.
                    out = None;
                }
            }
        }
    }
}

/// Aborts its tasks when dropped, so a session that ends or is dropped leaves none.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn finish<O: ChannelOut>(
    ch_out: [Option<&O>; 2],
    error: Option<&O>,
    outcome: Outcome,
    version: Version,
) {
    for o in ch_out.into_iter().flatten() {
        o.close().await;
    }
    if let Some(e) = error {
        let msg = outcome.encode(version);
        if !msg.is_empty() {
            let _ = e.write(&msg).await;
        }
        e.close().await;
    }
}

/// Runs an exec session until the command ends (then reports it on the error channel)
/// or the client goes away (`peer_gone`; the command is killed then).
pub async fn exec<I, O>(
    containers: &ContainerService,
    req: &ExecRequest,
    ch: Channels<I, O>,
    version: Version,
    peer_gone: impl Future<Output = ()>,
) where
    I: ChannelIn + 'static,
    O: ChannelOut,
{
    let Channels {
        stdin,
        stdout,
        stderr,
        error,
        resize,
    } = ch;
    let mut tasks = Tasks(Vec::new());
    let mut io = ProcessIo::default();
    let mut outputs: Vec<(Arc<AsyncFdIo>, Option<&O>)> = Vec::new();
    // A terminal is made in the container's own /dev/pts, where its slave has a name.
    let pty = match req.tty {
        true => match containers.open_pty(&req.container_id).await {
            Ok(p) => Some(p),
            Err(e) => {
                let outcome =
                    Outcome::Internal(format!("error executing command in container: {e}"));
                finish(
                    [stdout.as_ref(), stderr.as_ref()],
                    error.as_ref(),
                    outcome,
                    version,
                )
                .await;
                return;
            }
        },
        false => None,
    };
    let setup = (|| -> std::io::Result<()> {
        if let Some(pty) = pty {
            io.stdin = Some(pty.slave);
            let master = pty.master;
            let master = Arc::new(AsyncFdIo::new(master)?);
            if let Some(i) = stdin {
                tasks.0.push(tokio::spawn(copy_in(i, master.clone())));
            }
            if let Some(r) = resize {
                tasks
                    .0
                    .push(tokio::spawn(follow_resizes(r, master.clone())));
            }
            outputs.push((master, stdout.as_ref()));
        } else {
            if let Some(i) = stdin {
                let (r, w) = stdio::pipe()?;
                io.stdin = Some(r);
                tasks
                    .0
                    .push(tokio::spawn(copy_in(i, Arc::new(AsyncFdIo::new(w)?))));
            }
            for (want, ch, slot) in [
                (req.stdout, stdout.as_ref(), &mut io.stdout),
                (req.stderr, stderr.as_ref(), &mut io.stderr),
            ] {
                if want && ch.is_some() {
                    let (r, w) = stdio::pipe()?;
                    *slot = Some(w);
                    outputs.push((Arc::new(AsyncFdIo::new(r)?), ch));
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = setup {
        let outcome = Outcome::Internal(format!("error executing command in container: {e}"));
        finish(
            [stdout.as_ref(), stderr.as_ref()],
            error.as_ref(),
            outcome,
            version,
        )
        .await;
        return;
    }

    let run = async {
        let exec = containers.exec_interactive(&req.container_id, req.cmd.clone(), req.tty, io);
        let copies =
            futures_util::future::join_all(outputs.into_iter().map(|(fd, ch)| copy_out(fd, ch)));
        tokio::pin!(exec, copies);
        let mut copied = false;
        let result = loop {
            tokio::select! {
                r = &mut exec => break r,
                _ = &mut copies, if !copied => copied = true,
            }
        };
        if !copied {
            let _ = tokio::time::timeout(DRAIN, copies).await;
        }
        match result {
            Ok(0) => Outcome::Success,
            Ok(code) => Outcome::ExitCode {
                cmd: req.cmd.clone(),
                code,
            },
            Err(e) => Outcome::Internal(format!("error executing command in container: {e}")),
        }
    };
    let outcome = tokio::select! {
        o = run => o,
        () = peer_gone => {
            tracing::info!(container_id = %req.container_id, "exec client went away; command killed");
            return;
        }
    };
    drop(tasks);
    if let Outcome::Internal(e) = &outcome {
        tracing::warn!(container_id = %req.container_id, error = %e, "exec failed");
    }
    finish(
        [stdout.as_ref(), stderr.as_ref()],
        error.as_ref(),
        outcome,
        version,
    )
    .await;
}

/// Runs an attach session until the container's output ends (it exited), the client
/// detaches (ends its stdin, unless the container's stdin is `stdin_once`: then its
/// stdin closes and the session lasts until the container exits) or goes away.
pub async fn attach<I, O>(
    containers: &ContainerService,
    req: &AttachRequest,
    ch: Channels<I, O>,
    version: Version,
    peer_gone: impl Future<Output = ()>,
) where
    I: ChannelIn + 'static,
    O: ChannelOut,
{
    let Channels {
        stdin,
        stdout,
        stderr,
        error,
        resize,
    } = ch;
    let mut outputs: Vec<(Arc<AsyncFdIo>, Option<&O>)> = Vec::new();
    let mut ends = [None, None];
    let setup = (|| -> std::io::Result<()> {
        for (i, (want, ch)) in [
            (req.stdout, stdout.as_ref()),
            (req.stderr && !req.tty, stderr.as_ref()),
        ]
        .into_iter()
        .enumerate()
        {
            if want && ch.is_some() {
                let (r, w) = stdio::pipe()?;
                ends[i] = Some(w);
                outputs.push((Arc::new(AsyncFdIo::new(r)?), ch));
            }
        }
        Ok(())
    })();
    let attached = match setup {
        Ok(()) => {
            let [o, e] = ends;
            containers
                .attach(&req.container_id, o, e)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(container_id = %req.container_id, error = %e, "attach failed");
            let outcome = Outcome::Internal(format!("error attaching to container: {e}"));
            finish(
                [stdout.as_ref(), stderr.as_ref()],
                error.as_ref(),
                outcome,
                version,
            )
            .await;
            return;
        }
    };

    let mut tasks = Tasks(Vec::new());
    let container_stdin = match attached.stdin.map(AsyncFdIo::new).transpose() {
        Ok(fd) => fd.map(Arc::new),
        Err(e) => {
            tracing::debug!(error = %e, "attach: container stdin unusable");
            None
        }
    };
    if attached.tty
        && let (Some(r), Some(fd)) = (resize, &container_stdin)
    {
        tasks.0.push(tokio::spawn(follow_resizes(r, fd.clone())));
    }
    // Resolves when the client detaches.
    let detached = async {
        let Some(mut input) = stdin else {
            return std::future::pending().await;
        };
        match container_stdin {
            Some(fd) => copy_in(input, fd).await,
            None => while input.recv().await.is_some() {},
        }
        // Our copy of the container's stdin is closed now (the resize task holds one only
        // with a tty): with stdin_once that was the last, and the container sees EOF.
        if req.stdin_once && !attached.tty {
            std::future::pending::<()>().await
        }
    };
    let no_outputs = outputs.is_empty();
    let copies =
        futures_util::future::join_all(outputs.into_iter().map(|(fd, ch)| copy_out(fd, ch)));
    let ended = async {
        tokio::select! {
            _ = copies, if !no_outputs => {}
            () = detached => {}
        }
    };
    tokio::select! {
        () = ended => {}
        () = peer_gone => {
            tracing::debug!(container_id = %req.container_id, "attach client went away");
            return;
        }
    }
    drop(tasks);
    finish(
        [stdout.as_ref(), stderr.as_ref()],
        error.as_ref(),
        Outcome::Success,
        version,
    )
    .await;
}

/// A session waiting for its client.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Session {
    /// (stdin, stdout, stderr, tty) as requested.
    fn streams(&self) -> (bool, bool, bool, bool) {
        match self {
            Session::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Session::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        }
    }

    pub fn container_id(&self) -> &str {
        match self {
            Session::Exec(r) => &r.container_id,
            Session::Attach(r) => &r.container_id,
        }
    }
}

/// Serves an exec or attach over a SPDY connection: waits (bounded) for the client's
/// streams, one per `streamtype` header, then runs the session.
pub async fn serve_spdy(
    mut conn: Connection,
    version: Version,
    session: Session,
    containers: &ContainerService,
) {
    let (stdin, stdout, stderr, tty) = session.streams();
    // The error stream always; resize only with a tty and a protocol that has it.
    let expected = 1
        + stdin as usize
        + stdout as usize
        + stderr as usize
        + (tty && version.resizes()) as usize;
    let mut ch = Channels {
        stdin: None,
        stdout: None,
        stderr: None,
        error: None,
        resize: None,
    };
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    let mut received = 0;
    while received < expected {
        let stream = tokio::select! {
            s = conn.next_stream() => match s {
                Some(s) => s,
                None => return,
            },
            () = &mut deadline => {
                tracing::info!(
                    container_id = session.container_id(),
                    received,
                    expected,
                    "client did not open its streams in time"
                );
                conn.close().await;
                return;
            }
        };
        if stream.accept().await.is_err() {
            return;
        }
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let (reader, writer) = stream.split();
        match kind.as_str() {
            "error" => ch.error = Some(writer),
            "stdin" => ch.stdin = Some(reader),
            "stdout" => ch.stdout = Some(writer),
            "stderr" => ch.stderr = Some(writer),
            "resize" => ch.resize = Some(reader),
            other => {
                tracing::debug!(stream_type = other, "unexpected stream type");
                continue;
            }
        }
        received += 1;
    }
    let gone = conn.peer_closed();
    match &session {
        Session::Exec(r) => exec(containers, r, ch, version, gone).await,
        Session::Attach(r) => attach(containers, r, ch, version, gone).await,
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_kubelets() {
        let exit = Outcome::ExitCode {
            cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
            code: 3,
        };
        let v: serde_json::Value = serde_json::from_slice(&exit.encode(Version::V4)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
            })
        );
        assert_eq!(
            Outcome::Success.encode(Version::V5),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let internal: serde_json::Value =
            serde_json::from_slice(&Outcome::Internal("boom".into()).encode(Version::V4)).unwrap();
        assert_eq!(internal["reason"], "InternalError");
        assert_eq!(internal["code"], 500);
        assert_eq!(internal["message"], "Internal error occurred: boom");
        // Before v4: only a failure's text.
        assert!(Outcome::Success.encode(Version::V3).is_empty());
        assert!(
            String::from_utf8(exit.encode(Version::V2))
                .unwrap()
                .ends_with("exit code 3")
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            SPDY_PROTOCOLS
                .iter()
                .map(|p| Version::from_protocol(p).unwrap())
                .collect::<Vec<_>>(),
            [
                Version::V5,
                Version::V4,
                Version::V3,
                Version::V2,
                Version::V1
            ]
        );
        assert!(Version::V3.resizes() && !Version::V2.resizes());
        assert_eq!(Version::from_protocol("portforward.k8s.io"), None);
    }

    struct Chunks(std::collections::VecDeque<bytes::Bytes>);

    impl ChannelIn for Chunks {
        async fn recv(&mut self) -> Option<bytes::Bytes> {
            self.0.pop_front()
        }
    }

    #[tokio::test]
    async fn resize_messages_split_anywhere_are_applied() {
        let (m, s) = stdio::tests::pty().unwrap();
        let m = Arc::new(AsyncFdIo::new(m).unwrap());
        let msgs = "{\"Width\":100,\"Height\":30}\n{\"Width\":0,\"Height\":0}\n{\"Wid";
        let rest = "th\":132,\"Height\":43}\n";
        let chunks = Chunks(
            [&msgs[..10], &msgs[10..], rest]
                .into_iter()
                .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        );
        follow_resizes(chunks, m.clone()).await;
        let ws = rustix::termios::tcgetwinsize(&s).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
    }
}
