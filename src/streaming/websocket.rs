//! The WebSocket transports: kubelet's channel protocols for exec and attach (every binary
//! message is one channel byte, then data: 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize; `v5.channel.k8s.io` adds 255 + channel, the client closing that channel),
//! channel pairs for port forwarding (2i data, 2i+1 error per requested port, each
//! opened with the port as 2 little-endian bytes), and SPDY tunnelled in binary messages
//! (`SPDY/3.1+portforward.k8s.io`, what client-go's port-forward over WebSocket speaks).
//!
//! berthd answers the HTTP upgrade itself (hyper); tokio-tungstenite does the framing.
//! The base64 variants are not offered: client-go no longer uses them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::connection::{Connection, MAX_DATA_FRAME};
use super::portforward::{self, Netns};
use super::remotecommand::{self, Channels, Session, Version};
use super::{ChannelIn, ChannelOut};
use crate::container::ContainerService;

/// Exec and attach subprotocols, preferred first. No subprotocol at all means the
/// original binary `channel.k8s.io`.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
/// Port-forward subprotocols: SPDY tunnelled, or channel pairs under kubelet's name
/// (`v4.channel.k8s.io`) or the one the streaming docs use.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
pub const PORTFORWARD_PROTOCOLS: &[&str] = &[
    TUNNEL_PROTOCOL,
    "v4.portforward.k8s.io",
    "v4.channel.k8s.io",
];
const CLOSE_SIGNAL: u8 = 255;
/// How long `close` waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Whether the request asks for a WebSocket.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    super::upgrade_requested(req, "websocket")
}

/// The 101 answer to a WebSocket upgrade with the first of the client's subprotocols that
/// `supported` has ("" when the client named none), or the error response.
pub fn handshake<B>(
    req: &Request<B>,
    supported: &[&str],
) -> Result<(Response<String>, String), Box<Response<String>>> {
    let bad = |status, msg: &str| Box::new(super::plain(status, &format!("{msg}\n")));
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"))?;
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version (13 is)",
        ));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        String::new()
    } else {
        offered
            .iter()
            .find(|o| supported.contains(o))
            .map(|p| p.to_string())
            .ok_or_else(|| {
                bad(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
                    ),
                )
            })?
    };
    let mut resp = Response::new(String::new());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(
            &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .expect("base64 is a header value"),
    );
    if !protocol.is_empty() {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&protocol).expect("offered as a header value"),
        );
    }
    Ok((resp, protocol))
}

/// Bytes the client sends on one channel.
pub struct WsIn(mpsc::Receiver<Bytes>);

impl ChannelIn for WsIn {
    async fn recv(&mut self) -> Option<Bytes> {
        self.0.recv().await
    }
}

/// One channel to the client: each write a binary message with the channel byte.
pub struct WsOut {
    channel: u8,
    tx: mpsc::Sender<Message>,
}

impl ChannelOut for WsOut {
    async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(MAX_DATA_FRAME) {
            let mut m = Vec::with_capacity(chunk.len() + 1);
            m.push(self.channel);
            m.extend_from_slice(chunk);
            self.tx
                .send(Message::Binary(m.into()))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// The channel protocols have no way to end one channel towards the client: its
    /// channels end with the connection.
    async fn close(&self) {}
}

/// A channel-multiplexed WebSocket: a task reads and demultiplexes, one writes.
struct Mux {
    out: mpsc::Sender<Message>,
    peer_gone: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Mux {
    /// Starts on `ws`; data on the `readable` channels comes out of the returned inputs,
    /// other channels' data is dropped. `close_signal`: 255 + channel ends that channel.
    fn start<S>(
        ws: WebSocketStream<S>,
        readable: &[u8],
        close_signal: bool,
    ) -> (Mux, HashMap<u8, WsIn>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let (gone_tx, peer_gone) = watch::channel(false);
        let mut senders = HashMap::new();
        let mut inputs = HashMap::new();
        for ch in readable {
            // Bounded: a client that outruns the process is slowed down by TCP.
            let (tx, rx) = mpsc::channel(16);
            senders.insert(*ch, tx);
            inputs.insert(*ch, WsIn(rx));
        }
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let data = match msg {
                    Ok(Message::Binary(b)) => b,
                    Ok(Message::Close(_)) | Err(_) => break,
                    // Pings are answered by tungstenite; text is not in these protocols.
                    Ok(_) => continue,
                };
                let Some((&ch, rest)) = data.split_first() else {
                    continue;
                };
                if close_signal && ch == CLOSE_SIGNAL {
                    if let Some(target) = rest.first() {
                        senders.remove(target);
                    }
                    continue;
                }
                if let Some(tx) = senders.get(&ch)
                    && !rest.is_empty()
                    && tx.send(data.slice(1..)).await.is_err()
                {
                    senders.remove(&ch);
                }
            }
            let _ = gone_tx.send(true);
        });
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let last = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || last {
                    break;
                }
            }
            let _ = sink.flush().await;
        });
        (
            Mux {
                out,
                peer_gone,
                reader,
                writer,
            },
            inputs,
        )
    }

    fn channel(&self, channel: u8) -> WsOut {
        WsOut {
            channel,
            tx: self.out.clone(),
        }
    }

    fn peer_gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.peer_gone.clone();
        async move {
            let _ = rx.wait_for(|g| *g).await;
        }
    }

    /// A normal close, then a moment for the client's close frame.
    async fn close(mut self) {
        let _ = self
            .out
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        drop(self.out);
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.writer).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.reader).await;
        self.reader.abort();
    }
}

/// Serves an exec or attach over a WebSocket with the negotiated `protocol`.
pub async fn serve_remotecommand<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    session: Session,
    containers: &ContainerService,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // v4 and v5 carry a JSON status; the original protocol only a failure's text.
    let version = match protocol {
        "v5.channel.k8s.io" => Version::V5,
        "v4.channel.k8s.io" => Version::V4,
        _ => Version::V1,
    };
    let (stdin, stdout, stderr) = match &session {
        Session::Exec(r) => (r.stdin, r.stdout, r.stderr),
        Session::Attach(r) => (r.stdin, r.stdout, r.stderr),
    };
    let (mux, mut inputs) = Mux::start(ws, &[0, 4], version == Version::V5);
    // As kubelet: an empty message on the first channel the client reads says "ready".
    let first = if stdout {
        1
    } else if stderr {
        2
    } else {
        3
    };
    let _ = mux.out.send(Message::Binary(vec![first].into())).await;
    let ch = Channels {
        stdin: inputs.remove(&0).filter(|_| stdin),
        stdout: stdout.then(|| mux.channel(1)),
        stderr: stderr.then(|| mux.channel(2)),
        error: Some(mux.channel(3)),
        resize: inputs.remove(&4),
    };
    let gone = mux.peer_gone();
    match &session {
        Session::Exec(r) => remotecommand::exec(containers, r, ch, version, gone).await,
        Session::Attach(r) => remotecommand::attach(containers, r, ch, version, gone).await,
    }
    mux.close().await;
}

/// Serves kubelet's port-forward channel pairs, one per port of the request, until every
/// forward ends.
pub async fn serve_portforward_channels<S>(
    ws: WebSocketStream<S>,
    ports: Vec<u16>,
    pod_id: String,
    netns: Netns,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let data_channels: Vec<u8> = (0..ports.len()).map(|i| (2 * i) as u8).collect();
    let (mux, mut inputs) = Mux::start(ws, &data_channels, false);
    let mut forwards = Vec::new();
    for (i, port) in ports.into_iter().enumerate() {
        let data = mux.channel((2 * i) as u8);
        let error = mux.channel((2 * i + 1) as u8);
        let input = inputs
            .remove(&((2 * i) as u8))
            .expect("a data channel per port");
        let (pod_id, netns) = (pod_id.clone(), netns.clone());
        forwards.push(async move {
            let _ = data.write(&port.to_le_bytes()).await;
            let _ = error.write(&port.to_le_bytes()).await;
            match portforward::dial(&netns, port).await {
                Ok(sock) => portforward::pump(sock, input, &data).await,
                Err(e) => {
                    tracing::info!(pod_id, port, error = %e, "port-forward failed");
                    let msg = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
                    let _ = error.write(msg.as_bytes()).await;
                }
            }
        });
    }
    tokio::select! {
        _ = futures_util::future::join_all(forwards) => {}
        () = mux.peer_gone() => {}
    }
    mux.close().await;
}

/// Serves port forwarding as SPDY inside the WebSocket's binary messages.
pub async fn serve_portforward_tunnel<S>(ws: WebSocketStream<S>, pod_id: String, netns: Netns)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(theirs);
    // WebSocket messages in, SPDY bytes out (and the reverse), until either side ends.
    let inbound = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    };
    let pump = tokio::spawn(async move {
        tokio::join!(inbound, outbound);
    });
    portforward::serve_spdy(Connection::new(ours), pod_id, netns).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, pump).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/exec/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn handshake_answers_the_key_and_the_first_supported_protocol() {
        let base = [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            // RFC 6455's example key and answer.
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let mut h = base.to_vec();
        h.push((
            "Sec-WebSocket-Protocol",
            "v6.channel.k8s.io, v4.channel.k8s.io, v5.channel.k8s.io",
        ));
        let r = req(&h);
        assert!(is_websocket(&r));
        let (resp, p) = handshake(&r, REMOTECOMMAND_PROTOCOLS).unwrap();
        assert_eq!(p, "v4.channel.k8s.io");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "v4.channel.k8s.io"
        );
        // No subprotocol: the original one, none named back.
        let (resp, p) = handshake(&req(&base), REMOTECOMMAND_PROTOCOLS).unwrap();
        assert_eq!(p, "");
        assert!(resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
        let mut h = base.to_vec();
        h.push(("Sec-WebSocket-Protocol", "base64.channel.k8s.io"));
        assert_eq!(
            handshake(&req(&h), REMOTECOMMAND_PROTOCOLS)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert!(handshake(&req(&base[..3]), REMOTECOMMAND_PROTOCOLS).is_err());
    }
}
