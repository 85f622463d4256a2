//! The `exec-ttfb` figure: an interactive exec's time to first byte, as `kubectl exec`
//! meets it: the CRI `Exec` RPC (which returns a URL on the runtime's streaming server),
//! the TCP connect to that URL, the HTTP/1.1 upgrade to SPDY/3.1 with the
//! `v4.channel.k8s.io` remotecommand protocol, the error, stdout and stderr streams opened
//! (as client-go opens them), and the first byte of `echo x` on stdout.
//!
//! Each run then reads the session to its end and checks it did what it claims: stdout is
//! exactly `x\n`, stderr is empty, and the error stream carries kubelet's v4 status
//! `Success` (exit code 0). The SPDY framing is berth's own codec
//! (`berth::streaming::spdy`); the HTTP upgrade is a handful of lines here.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth::streaming::spdy::{self, Frame, FrameDecoder, FrameEncoder};
use bytes::BytesMut;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::containers::{or_sweep, ready_pod};
use super::ops::Ops;
use super::report::{self, FigureReport};
use super::{Figure, Runs, Runtime, Sample, cri, request};

/// The remotecommand protocol offered (kubelet's SPDY servers speak it; v5 only adds a
/// close signal for stdin).
const PROTOCOL: &str = "v4.channel.k8s.io";
/// Deadline of one whole session (RPC to end of streams).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP response head accepted before the upgrade.
const MAX_HEAD: usize = 16 << 10;

pub struct ExecTtfb;

pub struct ExecTtfbState {
    container: String,
}

/// What one session measured (ms from the start of the Exec RPC) and received.
#[derive(Debug, Default)]
struct Session {
    rpc_ms: f64,
    connected_ms: f64,
    upgraded_ms: f64,
    first_byte_ms: Option<f64>,
    done_ms: f64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("Exec returned {url:?}: only http:// streaming URLs are supported here")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("Exec returned {url:?}: no host");
    }
    Ok((authority.to_string(), path.to_string()))
}

/// The status code and headers (names lower-cased) of an HTTP/1.1 response head.
fn parse_head(head: &str) -> Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers))
}

struct Client {
    tcp: TcpStream,
    buf: BytesMut,
    enc: FrameEncoder,
    dec: FrameDecoder,
}

impl Client {
    async fn send(&mut self, frame: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        self.enc.encode(frame, &mut out)?;
        self.tcp.write_all(&out).await?;
        Ok(())
    }

    /// The next frame; None at the end of the connection.
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the connection ended inside a frame");
            }
        }
    }
}

/// One exec session: the Exec RPC, the upgrade, the streams, to the end.
async fn session(ops: &mut Ops, container: &str, cmd: &[&str]) -> Result<Session> {
    let mut s = Session::default();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let url = ops
        .runtime
        .exec(request(
            cri::ExecRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            },
            SESSION_TIMEOUT,
        ))
        .await
        .with_context(|| format!("Exec {cmd:?} in {container}"))?
        .into_inner()
        .url;
    s.rpc_ms = ms(t0);
    let (authority, path) = split_url(&url)?;
    let mut tcp = TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tcp.set_nodelay(true)?;
    s.connected_ms = ms(t0);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\n\
         Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {PROTOCOL}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            bail!("{url}: response head larger than {MAX_HEAD} bytes");
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!("{url}: the server closed the connection before answering the upgrade");
        }
    };
    let head = buf.split_to(end + 4);
    let (code, headers) = parse_head(&String::from_utf8_lossy(&head[..end]))?;
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if code != 101 {
        bail!("{url}: the upgrade to SPDY/3.1 was answered {code}, not 101: {headers:?}");
    }
    if header("x-stream-protocol-version") != Some(PROTOCOL) {
        bail!(
            "{url}: the server chose protocol {:?}, not {PROTOCOL}",
            header("x-stream-protocol-version")
        );
    }
    s.upgraded_ms = ms(t0);

    let mut c = Client {
        tcp,
        buf,
        enc: FrameEncoder::new(),
        dec: FrameDecoder::new(),
    };
    // client-go's order: error first, then stdout, stderr; client stream ids are odd
    let (error, stdout, stderr) = (1, 3, 5);
    for (id, kind) in [(error, "error"), (stdout, "stdout"), (stderr, "stderr")] {
        c.send(&Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        })
        .await?;
    }
    // The session ends when every stream is finished (FIN), cancelled (kubelet's library,
    // as containerd serves it, writes the status and then closes the connection, which
    // resets what is still open) or the connection goes.
    let mut open = vec![error, stdout, stderr];
    while !open.is_empty() {
        let Some(frame) = c.next().await? else {
            break;
        };
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if stream_id == stdout && !data.is_empty() && s.first_byte_ms.is_none() {
                    s.first_byte_ms = Some(ms(t0));
                }
                match stream_id {
                    id if id == stdout => s.stdout.extend_from_slice(&data),
                    id if id == stderr => s.stderr.extend_from_slice(&data),
                    id if id == error => s.error.extend_from_slice(&data),
                    id => bail!("{url}: data on stream {id}, which was never opened"),
                }
                if flags & spdy::FLAG_FIN != 0 {
                    open.retain(|&i| i != stream_id);
                }
            }
            Frame::SynReply {
                stream_id, flags, ..
            }
            | Frame::Headers {
                stream_id, flags, ..
            } if flags & spdy::FLAG_FIN != 0 => open.retain(|&i| i != stream_id),
            Frame::RstStream { stream_id, status } if status == spdy::CANCEL => {
                open.retain(|&i| i != stream_id)
            }
            Frame::RstStream { stream_id, status } => {
                bail!("{url}: the server reset stream {stream_id} (status {status})")
            }
            Frame::Ping { id } => c.send(&Frame::Ping { id }).await?,
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    s.done_ms = ms(t0);
    Ok(s)
}

impl Figure for ExecTtfb {
    type State = ExecTtfbState;

    fn name(&self) -> &'static str {
        "exec-ttfb"
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<ExecTtfbState> {
        let image = rt.image()?;
        let mut ops = rt.ops();
        let st = async {
            let pod = ready_pod(&mut ops, self.name()).await?;
            let cid = ops
                .create_container(&pod, "sleep", &image, &["sleep", "3600"])
                .await?;
            ops.start_container(&cid).await?;
            ops.verify_running(&cid).await?;
            Ok(ExecTtfbState { container: cid })
        }
        .await;
        or_sweep(&mut ops, self.name(), st).await
    }

    async fn run(&self, rt: &mut Runtime, st: &mut ExecTtfbState) -> Result<Sample> {
        let mut ops = rt.ops();
        let s = tokio::time::timeout(
            SESSION_TIMEOUT,
            session(&mut ops, &st.container, &["echo", "x"]),
        )
        .await
        .with_context(|| format!("exec session not finished within {SESSION_TIMEOUT:?}"))??;
        let status: serde_json::Value = serde_json::from_slice(&s.error).with_context(|| {
            format!(
                "exec echo x in {}: the error stream does not hold a status: {:?}",
                st.container,
                String::from_utf8_lossy(&s.error)
            )
        })?;
        let success = status["status"].as_str() == Some("Success");
        if s.stdout != b"x\n" || !s.stderr.is_empty() || !success {
            bail!(
                "exec echo x in {}: want stdout \"x\\n\", no stderr and status Success; got \
                 stdout {:?}, stderr {:?}, status {}",
                st.container,
                String::from_utf8_lossy(&s.stdout),
                String::from_utf8_lossy(&s.stderr),
                String::from_utf8_lossy(&s.error)
            );
        }
        let first = s
            .first_byte_ms
            .context("stdout had data but no first byte was timed (a bug)")?;
        Ok(Sample {
            ms: first,
            bytes: None,
            detail: json!({
                "container_id": st.container,
                "exec_rpc_ms": s.rpc_ms,
                "connected_ms": s.connected_ms,
                "upgraded_ms": s.upgraded_ms,
                "first_byte_ms": first,
                "session_done_ms": s.done_ms,
                "status": status,
            }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: ExecTtfbState) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        report::time_figure(
            self.name(),
            "Exec echo x, first byte",
            "Exec RPC + TCP connect + HTTP upgrade to SPDY/3.1 (v4.channel.k8s.io) + \
             error/stdout/stderr streams + the first stdout byte of `echo x`, timed; then \
             the session read to its end: stdout \"x\\n\", no stderr, status Success",
            rts,
            runs,
            None,
            vec![
                "Exec echo x, first byte: what kubectl exec waits for: the Exec RPC, connect, \
                 upgrade to SPDY/3.1 (v4.channel.k8s.io), streams error/stdout/stderr, first \
                 stdout byte; every session then verified to end with stdout \"x\\n\", no \
                 stderr and status Success (exit 0); the JSON splits RPC, connect and upgrade."
                    .into(),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:4321/exec/AbC").unwrap(),
            ("127.0.0.1:4321".to_string(), "/exec/AbC".to_string())
        );
        assert_eq!(
            split_url("http://[::1]:80").unwrap(),
            ("[::1]:80".to_string(), "/".to_string())
        );
        assert!(split_url("https://h/exec/x").is_err());
        assert!(split_url("http:///exec/x").is_err());
    }

    #[test]
    fn heads() {
        let (code, h) = parse_head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io",
        )
        .unwrap();
        assert_eq!(code, 101);
        assert!(h.contains(&(
            "x-stream-protocol-version".to_string(),
            "v4.channel.k8s.io".to_string()
        )));
        assert_eq!(parse_head("HTTP/1.1 403 Forbidden").unwrap().0, 403);
        assert!(parse_head("SPDY nonsense").is_err());
    }
}
