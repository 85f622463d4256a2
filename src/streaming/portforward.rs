//! Port forwarding: each forwarded connection is a pair of client streams (data and error)
//! sharing a request id; berthd connects to localhost:PORT inside the pod's network
//! namespace and copies both ways, as kubelet's `portforward.k8s.io` server does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connection::{Connection, Stream};
use super::{ChannelIn, ChannelOut, STREAM_CREATION_TIMEOUT};

/// The SPDY subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// After one direction ends, how long the other may still finish (as containerd).
const LINGER: Duration = Duration::from_secs(1);

/// Where forwarded connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// A host-network pod: the host's localhost.
    Host,
    /// The pod's pinned network namespace file.
    Pod(PathBuf),
}

/// Connects to localhost:`port` in `netns`: IPv4 first, then IPv6, as containerd does.
/// The error is the text the client is shown.
pub async fn dial(netns: &Netns, port: u16) -> Result<TcpStream, String> {
    match netns {
        Netns::Host => {
            let v4 = match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            TcpStream::connect(("::1", port)).await.map_err(|v6| {
                format!("failed to connect to localhost:{port} on the host, IPv4: {v4} IPv6: {v6}")
            })
        }
        Netns::Pod(path) => {
            let path = path.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own enters the namespace and ends with it: the socket stays
            // in the namespace it was made in, and no pool thread is left in the pod's.
            std::thread::Builder::new()
                .name("berthd-portfwd".into())
                .spawn(move || {
                    let _ = tx.send(connect_in(&path, port));
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            let sock = rx
                .await
                .map_err(|_| "the connecting thread died".to_string())??;
            TcpStream::from_std(sock).map_err(|e| e.to_string())
        }
    }
}

fn connect_in(netns: &std::path::Path, port: u16) -> Result<std::net::TcpStream, String> {
    let f = std::fs::File::open(netns)
        .map_err(|e| format!("cannot open network namespace {}: {e}", netns.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot enter network namespace {}: {e}", netns.display()))?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).or_else(|v4| {
        std::net::TcpStream::connect(("::1", port)).map_err(|v6| {
            format!("failed to connect to localhost:{port} inside the pod's network namespace, IPv4: {v4} IPv6: {v6}")
        })
    })?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(sock)
}

/// Copies between `sock` and a client channel until the service or the client is done:
/// the client's end of input half-closes the socket; the service's end finishes the
/// channel.
pub async fn pump(sock: TcpStream, mut input: impl ChannelIn, output: &impl ChannelOut) {
    let (mut rd, mut wr) = sock.into_split();
    let up = async move {
        while let Some(b) = input.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; super::connection::MAX_DATA_FRAME];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => { let _ = tokio::time::timeout(LINGER, up).await; }
        () = &mut up => down.await,
    }
    output.close().await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Data,
    Error,
}

struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

/// Serves a `portforward.k8s.io` SPDY connection until the client closes it.
pub async fn serve_spdy(mut conn: Connection, pod_id: String, netns: Netns) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            s = conn.next_stream() => {
                let Some(s) = s else { break };
                let port = s.header("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                let kind = match s.header("streamtype") {
                    Some("data") => Some(Kind::Data),
                    Some("error") => Some(Kind::Error),
                    _ => None,
                };
                let (Some(port), Some(kind)) = (port, kind) else {
                    tracing::debug!(pod_id, headers = ?s.headers, "port-forward stream refused");
                    s.refuse().await;
                    continue;
                };
                if s.accept().await.is_err() {
                    break;
                }
                // Old clients send no request id: derive it from the stream ids, as kubelet.
                let rid = s.header("requestid").map(str::to_string).unwrap_or_else(|| {
                    match kind {
                        Kind::Error => s.id.to_string(),
                        Kind::Data => (s.id as i64 - 2).to_string(),
                    }
                });
                let pair = pairs.entry(rid.clone()).or_insert_with(|| Pair {
                    data: None,
                    error: None,
                    deadline: Instant::now() + STREAM_CREATION_TIMEOUT,
                });
                let slot = match kind {
                    Kind::Data => &mut pair.data,
                    Kind::Error => &mut pair.error,
                };
                if slot.is_some() {
                    let msg = format!(
                        "error processing stream for request {rid}: {} stream already assigned",
                        if kind == Kind::Data { "data" } else { "error" }
                    );
                    if let Some(e) = &pair.error {
                        let _ = e.writer().write(msg.as_bytes()).await;
                    }
                    s.split().1.reset().await;
                    continue;
                }
                *slot = Some(s);
                if pair.data.is_some() && pair.error.is_some() {
                    let Pair { data: Some(data), error: Some(error), .. } = pairs.remove(&rid).expect("pair") else {
                        unreachable!("both streams are there");
                    };
                    forwards.spawn(forward(data, error, port, pod_id.clone(), netns.clone()));
                }
            }
            () = sleep_until(next_deadline), if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for rid in expired {
                    let p = pairs.remove(&rid).expect("listed");
                    tracing::debug!(pod_id, request = rid, "port-forward stream pair incomplete");
                    if let Some(e) = p.error {
                        let (_, w) = e.split();
                        let _ = w.write(format!("timed out waiting for streams of request {rid}").as_bytes()).await;
                        w.close().await;
                    }
                    if let Some(d) = p.data {
                        d.split().1.reset().await;
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    forwards.abort_all();
    conn.close().await;
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn forward(data: Stream, error: Stream, port: u16, pod_id: String, netns: Netns) {
    let (data_in, data_out) = data.split();
    let (_, err_out) = error.split();
    match dial(&netns, port).await {
        Ok(sock) => {
            tracing::debug!(pod_id, port, "port-forward connection");
            pump(sock, data_in, &data_out).await;
        }
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
            tracing::info!(pod_id, port, error = %e, "port-forward failed");
            let _ = err_out.write(msg.as_bytes()).await;
            data_out.reset().await;
        }
    }
    err_out.close().await;
}
