//! The streaming server (Exec, Attach, PortForward) with the real berthd, real pods and
//! containers: a SPDY/3.1 client built on berth's own codec (`berth::streaming::spdy`)
//! drives it as client-go would, and checks what the server must do beyond what client-go
//! notices (flow control windows, stream replies before data, GOAWAY); a WebSocket client
//! (tungstenite) drives the channel protocols and SPDY tunnelled in WebSocket messages.
//!
//! Every test runs its own registry, network and berthd, puts its pods' cgroups under
//! `/berth-test-<pid>-<tag>` (emptied and removed on drop by a [`CgroupGuard`]), and
//! cleans up also when it fails.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth::streaming::spdy::{self, Frame, FrameDecoder, FrameEncoder};
use bytes::{Bytes, BytesMut};
use common::registry::{Registry, testimg};
use common::world::{self, CgroupGuard};
use common::{Berthd, TestNetwork, cri};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::Code;

/// How long a test waits for any one thing the server should do.
const WAIT: Duration = Duration::from_secs(20);

/// One test's world: cgroup tree, berthd, CNI network and registry (dropped in this
/// order), with the busybox test image pulled.
struct Env {
    cg: CgroupGuard,
    d: Berthd,
    #[allow(dead_code)]
    net: TestNetwork,
    #[allow(dead_code)]
    reg: Registry,
    image: String,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let cg = CgroupGuard::new(tag);
        let reg = Registry::start_only(&[testimg::BUSYBOX]);
        let net = TestNetwork::new();
        let (d, image) = world::berthd_with_busybox("", &net, &reg).await;
        Env {
            cg,
            d,
            net,
            reg,
            image,
        }
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        world::pod_config_in(&self.cg, name)
    }

    async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        world::run_pod(&self.d, config).await
    }

    async fn stop_pod(&self, id: &str) {
        world::stop_pod(&self.d, id).await
    }

    async fn remove_pod(&self, id: &str) {
        world::remove_pod(&self.d, id).await
    }

    /// A busybox container config running `cmd`.
    fn config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        world::busybox_config(&self.image, name, cmd)
    }

    /// Creates and starts a busybox container running `cmd`.
    async fn run(&self, pod: &str, pod_config: &cri::PodSandboxConfig, cmd: &[&str]) -> String {
        self.run_config(pod, pod_config, self.config("c", cmd))
            .await
    }

    async fn run_config(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = world::create_container(&self.d, pod, pod_config, config)
            .await
            .expect("create container");
        world::start_container(&self.d, &id)
            .await
            .expect("start container");
        id
    }

    async fn exec_url(&self, req: cri::ExecRequest) -> Result<String, tonic::Status> {
        self.d
            .runtime()
            .await
            .exec(req)
            .await
            .map(|r| r.into_inner().url)
    }

    async fn attach_url(&self, req: cri::AttachRequest) -> Result<String, tonic::Status> {
        self.d
            .runtime()
            .await
            .attach(req)
            .await
            .map(|r| r.into_inner().url)
    }

    async fn container_state(&self, id: &str) -> i32 {
        self.d
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("container status")
            .into_inner()
            .status
            .unwrap()
            .state
    }

    async fn port_forward_url(&self, pod: &str) -> Result<String, tonic::Status> {
        self.d
            .runtime()
            .await
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: vec![],
            })
            .await
            .map(|r| r.into_inner().url)
    }
}

/// `host:port` and path of a streaming URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    (host.to_string(), format!("/{path}"))
}

/// Sends an HTTP/1.1 request and reads the response head: status, headers, and the bytes
/// that followed the head.
async fn http_request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, u16, Vec<(String, String)>, BytesMut) {
    let (host, path) = split_url(url);
    let mut sock = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(WAIT, sock.read_buf(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
    };
    let head = String::from_utf8(buf.split_to(end + 4).to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (sock, status, headers, buf)
}

/// What the client saw of one stream.
#[derive(Default, Debug)]
struct StreamSeen {
    replied: bool,
    data: Vec<u8>,
    fin: bool,
    reset: Option<u32>,
    /// Data received and not yet acknowledged with a WINDOW_UPDATE.
    unacked: u32,
}

/// A SPDY/3.1 client on berth's codec, behaving like client-go (odd stream ids, headers
/// lower case) plus, when `flow_control` is on, a client that keeps windows: it announces
/// a small initial window, acknowledges what it reads, honours the server's windows, and
/// fails the test if the server overruns its window.
struct SpdyClient {
    wr: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    enc: FrameEncoder,
    rx: mpsc::UnboundedReceiver<Frame>,
    next_id: u32,
    streams: HashMap<u32, StreamSeen>,
    goaway: bool,
    /// The window we announced (with flow control), else None.
    flow_control: Option<u32>,
    /// Our send windows as the server grants them: per stream and the connection's.
    send_windows: HashMap<u32, i64>,
    conn_send_window: i64,
    conn_unacked: u32,
    pub protocol: String,
}

impl SpdyClient {
    /// Upgrades to SPDY/3.1 offering `protocols`; panics unless the server switches.
    async fn connect(url: &str, protocols: &str, flow_window: Option<u32>) -> SpdyClient {
        let (sock, status, headers, rest) = http_request(
            url,
            "POST",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocols),
            ],
        )
        .await;
        assert_eq!(status, 101, "upgrade refused: {headers:?}");
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("upgrade"), "SPDY/3.1");
        let protocol = header("x-stream-protocol-version");
        let (rd, wr) = sock.into_split();
        Self::over(rd, wr, rest, protocol, flow_window).await
    }

    /// SPDY on an already upgraded byte stream (`rest`: bytes already read from it).
    async fn over(
        mut rd: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        wr: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
        rest: BytesMut,
        protocol: String,
        flow_window: Option<u32>,
    ) -> SpdyClient {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::new();
            let mut buf = rest;
            loop {
                while let Some(f) = dec.decode(&mut buf).expect("the server's frames decode") {
                    if tx.send(f).is_err() {
                        return;
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        let mut c = SpdyClient {
            wr: Box::new(wr),
            enc: FrameEncoder::new(),
            rx,
            next_id: 1,
            streams: HashMap::new(),
            goaway: false,
            flow_control: flow_window,
            send_windows: HashMap::new(),
            conn_send_window: spdy::INITIAL_WINDOW as i64,
            conn_unacked: 0,
            protocol,
        };
        if let Some(w) = flow_window {
            c.send(Frame::Settings {
                flags: 0,
                entries: vec![(0, spdy::SETTINGS_INITIAL_WINDOW_SIZE, w)],
            })
            .await;
        }
        c
    }

    async fn send(&mut self, f: Frame) {
        let mut buf = BytesMut::new();
        self.enc.encode(&f, &mut buf).unwrap();
        self.wr.write_all(&buf).await.expect("write to the server");
    }

    /// Opens a stream with these headers; returns its id.
    async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        self.streams.insert(id, StreamSeen::default());
        self.send_windows.insert(id, spdy::INITIAL_WINDOW as i64);
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await;
        id
    }

    /// Sends `data` on a stream, within the server's windows when keeping them (reading
    /// what arrives meanwhile), and FIN when `fin`.
    async fn write(&mut self, id: u32, mut data: &[u8], fin: bool) {
        while !data.is_empty() {
            let mut n = data.len().min(16 * 1024);
            if self.flow_control.is_some() {
                let open = self.send_windows[&id].min(self.conn_send_window);
                if open <= 0 {
                    self.next().await;
                    continue;
                }
                n = n.min(open as usize);
                *self.send_windows.get_mut(&id).unwrap() -= n as i64;
                self.conn_send_window -= n as i64;
            }
            self.send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::copy_from_slice(&data[..n]),
            })
            .await;
            data = &data[n..];
        }
        if fin {
            self.send(Frame::Data {
                stream_id: id,
                flags: spdy::FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
        }
    }

    /// Reads one frame and records it; false once the server closed the connection.
    async fn next(&mut self) -> bool {
        let f = match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(_) => panic!(
                "no frame from the server within {WAIT:?}: {:?}",
                self.streams
            ),
        };
        match f {
            Frame::SynReply { stream_id, .. } => {
                let s = self
                    .streams
                    .get_mut(&stream_id)
                    .expect("reply to our stream");
                assert!(!s.replied, "stream {stream_id} replied twice");
                s.replied = true;
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let s = self
                    .streams
                    .get_mut(&stream_id)
                    .expect("data on our stream");
                assert!(s.replied, "data before SYN_REPLY on stream {stream_id}");
                assert!(!s.fin, "data after FIN on stream {stream_id}");
                s.data.extend_from_slice(&data);
                s.fin |= flags & spdy::FLAG_FIN != 0;
                if let Some(window) = self.flow_control {
                    s.unacked += data.len() as u32;
                    self.conn_unacked += data.len() as u32;
                    assert!(
                        s.unacked <= window,
                        "the server overran stream {stream_id}'s window: {} > {window}",
                        s.unacked
                    );
                    assert!(
                        self.conn_unacked <= spdy::INITIAL_WINDOW,
                        "the server overran the connection window"
                    );
                    // Acknowledge in halves of the window, as flow-controlling clients
                    // do: the server must stop once the unacknowledged rest is used up.
                    if s.unacked >= window / 2 {
                        let delta = std::mem::take(&mut s.unacked);
                        self.send(Frame::WindowUpdate { stream_id, delta }).await;
                    }
                    if self.conn_unacked >= spdy::INITIAL_WINDOW / 2 {
                        let delta = std::mem::take(&mut self.conn_unacked);
                        self.send(Frame::WindowUpdate {
                            stream_id: 0,
                            delta,
                        })
                        .await;
                    }
                }
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(s) = self.streams.get_mut(&stream_id) {
                    s.reset = Some(status);
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if stream_id == 0 {
                    self.conn_send_window += delta as i64;
                } else if let Some(w) = self.send_windows.get_mut(&stream_id) {
                    *w += delta as i64;
                }
            }
            Frame::GoAway { .. } => self.goaway = true,
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            other => panic!("unexpected frame from the server: {other:?}"),
        }
        true
    }

    /// Reads frames until `done` holds; panics if the connection ends first.
    async fn until(&mut self, what: &str, done: impl Fn(&SpdyClient) -> bool) {
        while !done(self) {
            assert!(
                self.next().await,
                "connection closed while waiting for {what}: {:?}",
                self.streams
            );
        }
    }

    fn seen(&self, id: u32) -> &StreamSeen {
        &self.streams[&id]
    }

    /// Reads until the server closes the connection.
    async fn until_closed(&mut self) {
        while self.next().await {}
    }
}

/// The streams client-go opens for a remote command, in its order: error, stdin, stdout,
/// stderr, resize (each only when asked for). Returns their ids by type.
async fn remote_streams(c: &mut SpdyClient, types: &[&str]) -> HashMap<String, u32> {
    let mut ids = HashMap::new();
    for t in types {
        let id = c.open(&[("streamtype", t)]).await;
        ids.insert(t.to_string(), id);
    }
    let all: Vec<u32> = ids.values().copied().collect();
    c.until("the replies", |c| all.iter().all(|id| c.seen(*id).replied))
        .await;
    ids
}

/// The error stream's v4 status, once the server finished it.
fn status_of(c: &SpdyClient, error: u32) -> serde_json::Value {
    assert!(c.seen(error).fin, "error stream not finished");
    serde_json::from_slice(&c.seen(error).data).unwrap_or_else(|e| {
        panic!(
            "status is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&c.seen(error).data)
        )
    })
}

fn exec_req(container: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

const V4: &str = "v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io";

/// A WebSocket client offering `protocols` (comma-separated; "" for none); returns the
/// socket and the subprotocol the server chose.
async fn ws_connect(url: &str, protocols: &str) -> (WebSocketStream<TcpStream>, String) {
    let (host, _) = split_url(url);
    let mut req = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let tcp = TcpStream::connect(&host).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("WebSocket handshake");
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ws, chosen)
}

/// Channel messages received on a WebSocket, by channel.
#[derive(Default, Debug)]
struct WsSeen {
    data: HashMap<u8, Vec<u8>>,
    /// Messages as they came: (channel, payload length).
    messages: Vec<(u8, usize)>,
    closed: bool,
}

impl WsSeen {
    fn text(&self, ch: u8) -> String {
        String::from_utf8_lossy(self.data.get(&ch).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }
}

/// Reads channel messages until `done` holds or the server closes.
async fn ws_read(
    ws: &mut WebSocketStream<TcpStream>,
    seen: &mut WsSeen,
    done: impl Fn(&WsSeen) -> bool,
) {
    while !seen.closed && !done(seen) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {WAIT:?}: {seen:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let (ch, rest) = b.split_first().expect("a channel byte");
                seen.messages.push((*ch, rest.len()));
                seen.data.entry(*ch).or_default().extend_from_slice(rest);
            }
            Some(Ok(Message::Close(_))) | None => seen.closed = true,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("WebSocket error: {e}"),
        }
    }
}

/// A SPDY client inside a WebSocket's binary messages (client-go's tunnelling).
async fn spdy_over_websocket(ws: WebSocketStream<TcpStream>, flow: Option<u32>) -> SpdyClient {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let (r, w) = tokio::io::split(ours);
    SpdyClient::over(r, w, BytesMut::new(), String::new(), flow).await
}

/// PIDs whose command line is exactly `cmd` (NUL-separated words).
fn pids_running(cmd: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = cmd.iter().flat_map(|w| w.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
        })
        .collect()
}

/// Opens a port-forward stream pair (error, then data, as client-go) for `port`.
async fn forward_pair(c: &mut SpdyClient, port: u16, request: u32) -> (u32, u32) {
    let (port, request) = (port.to_string(), request.to_string());
    let err = c
        .open(&[
            ("streamtype", "error"),
            ("port", &port),
            ("requestid", &request),
        ])
        .await;
    let data = c
        .open(&[
            ("streamtype", "data"),
            ("port", &port),
            ("requestid", &request),
        ])
        .await;
    c.until("both replies", |c| {
        c.seen(err).replied && c.seen(data).replied
    })
    .await;
    (err, data)
}

/// Deterministic bytes that make reordering or loss visible.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_a_pod() {
    let env = Env::new("pf").await;
    let pc = env.pod_config("pf");
    let pod = env.run_pod(&pc).await;
    // A persistent echo server in the pod.
    env.run(&pod, &pc, &["nc", "-ll", "-p", "8080", "-e", "cat"])
        .await;

    let url = env.port_forward_url(&pod).await.expect("PortForward");
    let mut c = SpdyClient::connect(&url, "portforward.k8s.io", Some(8 * 1024)).await;
    assert_eq!(c.protocol, "portforward.k8s.io");

    // The server starts listening soon after the container starts: retry until it does.
    let deadline = Instant::now() + WAIT;
    let mut request = 0;
    let (err, data) = loop {
        let (err, data) = forward_pair(&mut c, 8080, request).await;
        request += 1;
        c.write(data, b"ping\n", false).await;
        c.until("echo or error", |c| {
            c.seen(data).data.len() >= 5 || c.seen(err).fin || c.seen(data).reset.is_some()
        })
        .await;
        if c.seen(data).data == b"ping\n" {
            break (err, data);
        }
        assert!(
            Instant::now() < deadline,
            "the echo server never answered: {:?}",
            String::from_utf8_lossy(&c.seen(err).data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // 1 MiB through the echo server, both ways at once, within 8 KiB windows.
    let payload = pattern(1 << 20);
    c.write(data, &payload, true).await;
    c.until("the echo and FIN", |c| c.seen(data).fin).await;
    assert_eq!(c.seen(data).data.len(), 5 + payload.len());
    assert!(c.seen(data).data[5..] == payload[..], "echo differs");
    c.until("the error stream's FIN", |c| c.seen(err).fin).await;
    assert!(c.seen(err).data.is_empty(), "{:?}", c.seen(err));

    // Nothing listens on port 9: the error stream says so, the data stream is reset.
    let (err, data) = forward_pair(&mut c, 9, 1000).await;
    c.until("the error", |c| {
        c.seen(err).fin && c.seen(data).reset.is_some()
    })
    .await;
    let msg = String::from_utf8_lossy(&c.seen(err).data).into_owned();
    assert!(
        msg.contains("error forwarding port 9 to pod") && msg.contains("refused"),
        "{msg}"
    );

    // Streams without a valid port or type are refused.
    let bad = c.open(&[("streamtype", "data"), ("port", "0")]).await;
    c.until("a refusal", |c| c.seen(bad).reset.is_some()).await;
    assert_eq!(c.seen(bad).reset, Some(spdy::REFUSED_STREAM));
    assert!(!c.seen(bad).replied);
    drop(c);

    // A client that never sends WINDOW_UPDATE (moby/spdystream) still gets everything.
    let url = env.port_forward_url(&pod).await.expect("PortForward");
    let mut c = SpdyClient::connect(&url, "portforward.k8s.io", None).await;
    let (err, data) = forward_pair(&mut c, 8080, 0).await;
    let payload = pattern(300 * 1024);
    c.write(data, &payload, true).await;
    c.until("the echo and FIN", |c| c.seen(data).fin).await;
    assert!(c.seen(data).data == payload, "echo differs");
    c.until("the error stream's FIN", |c| c.seen(err).fin).await;
    // The client leaves: GOAWAY, then the server lets go of the connection.
    c.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: 0,
    })
    .await;
    drop(c);

    // Over a WebSocket: SPDY tunnelled (client-go's port-forward over WebSocket) ...
    let url = env.port_forward_url(&pod).await.unwrap();
    let (ws, proto) = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(proto, "SPDY/3.1+portforward.k8s.io");
    let mut c = spdy_over_websocket(ws, Some(8 * 1024)).await;
    let (err, data) = forward_pair(&mut c, 8080, 0).await;
    let payload = pattern(200 * 1024);
    c.write(data, &payload, true).await;
    c.until("the echo and FIN", |c| c.seen(data).fin).await;
    assert!(c.seen(data).data == payload, "echo differs");
    c.until("the error stream's FIN", |c| c.seen(err).fin).await;
    drop(c);
    // ... and kubelet's channel pairs, one per port of the request: 0/1 for 8080, 2/3 for
    // port 9 where nothing listens. Each channel starts with its port (little-endian).
    let url = env
        .d
        .runtime()
        .await
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080, 9],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(proto, "v4.channel.k8s.io");
    ws.send(Message::Binary(Bytes::from_static(b"\x00ping\n")))
        .await
        .unwrap();
    let mut seen = WsSeen::default();
    ws_read(&mut ws, &mut seen, |s| {
        s.data.get(&0).is_some_and(|d| d.len() >= 7) && s.text(3).contains("refused")
    })
    .await;
    assert_eq!(seen.data[&0], b"\x90\x1fping\n");
    assert_eq!(&seen.data[&1], &8080u16.to_le_bytes());
    assert_eq!(&seen.data[&2], &9u16.to_le_bytes());
    assert!(
        seen.text(3).contains("error forwarding port 9 to pod"),
        "{:?}",
        seen.text(3)
    );
    ws.close(None).await.unwrap();
    ws_read(&mut ws, &mut seen, |_| false).await;

    env.remove_pod(&pod).await;
    let err = env.port_forward_url(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket() {
    let env = Env::new("wsexec").await;
    let pc = env.pod_config("wsexec");
    let pod = env.run_pod(&pc).await;
    let ctr = env.run(&pod, &pc, &["sleep", "3600"]).await;

    // v5: channel-prefixed messages, the client closing stdin with 255 0, a JSON status.
    let mut req = exec_req(&ctr, &["sh", "-c", "cat; echo err >&2; exit 2"]);
    req.stdin = true;
    let url = env.exec_url(req).await.unwrap();
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(proto, "v5.channel.k8s.io");
    ws.send(Message::Binary(Bytes::from_static(b"\x00hi\n")))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
        .await
        .unwrap();
    let mut seen = WsSeen::default();
    ws_read(&mut ws, &mut seen, |_| false).await;
    // As kubelet: first an empty message on stdout, the first channel the client reads.
    assert_eq!(seen.messages[0], (1, 0), "{seen:?}");
    assert_eq!(seen.text(1), "hi\n");
    assert_eq!(seen.text(2), "err\n");
    let st: serde_json::Value = serde_json::from_slice(&seen.data[&3]).unwrap();
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "2", "{st}");

    // v4 with a terminal: the size from channel 4.
    let mut req = exec_req(&ctr, &["sh", "-c", "read x; stty size"]);
    (req.tty, req.stdin, req.stderr) = (true, true, false);
    let url = env.exec_url(req).await.unwrap();
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(proto, "v4.channel.k8s.io");
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":90,\"Height\":20}",
    )))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Binary(Bytes::from_static(b"\x00go\n")))
        .await
        .unwrap();
    let mut seen = WsSeen::default();
    ws_read(&mut ws, &mut seen, |_| false).await;
    assert!(seen.text(1).contains("20 90\r\n"), "{:?}", seen.text(1));
    let st: serde_json::Value = serde_json::from_slice(&seen.data[&3]).unwrap();
    assert_eq!(st["status"], "Success", "{st}");

    // The original protocol (no subprotocol named): a failure's text only.
    let url = env
        .exec_url(exec_req(&ctr, &["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, "").await;
    assert_eq!(proto, "");
    let mut seen = WsSeen::default();
    ws_read(&mut ws, &mut seen, |_| false).await;
    assert!(
        seen.text(3)
            .starts_with("command terminated with non-zero exit code"),
        "{:?}",
        seen.text(3)
    );

    // A client that goes away mid-exec leaves no process behind.
    let marker = ["sleep", "4321.7"];
    let url = env.exec_url(exec_req(&ctr, &marker)).await.unwrap();
    let (ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    let deadline = Instant::now() + WAIT;
    while pids_running(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
    let deadline = Instant::now() + WAIT;
    while !pids_running(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_of_a_host_network_pod_reaches_the_host() {
    let env = Env::new("pfhost").await;
    let mut pc = env.pod_config("pfhost");
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.run_pod(&pc).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello from the host").await.unwrap();
    });
    let url = env.port_forward_url(&pod).await.expect("PortForward");
    let mut c = SpdyClient::connect(&url, "portforward.k8s.io", None).await;
    let (err, data) = forward_pair(&mut c, port, 0).await;
    c.until("the host's greeting", |c| c.seen(data).fin).await;
    assert_eq!(c.seen(data).data, b"hello from the host");
    c.until("the error stream's FIN", |c| c.seen(err).fin).await;
    server.await.unwrap();

    // A pod that is not ready cannot forward.
    env.stop_pod(&pod).await;
    let err = env.port_forward_url(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    env.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_one_time_tokens_and_handshakes_are_checked() {
    let env = Env::new("tokens").await;
    let pc = env.pod_config("tokens");
    let pod = env.run_pod(&pc).await;
    let spdy_headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "portforward.k8s.io"),
    ];
    let url = env.port_forward_url(&pod).await.expect("PortForward");
    let (host, path) = split_url(&url);
    assert!(host.starts_with("127.0.0.1:"), "{url}");
    assert!(path.starts_with("/portforward/"), "{url}");

    // Unknown tokens, and tokens on another endpoint's path, are 404.
    let bogus = format!("http://{host}/portforward/AAAAAAAA");
    assert_eq!(http_request(&bogus, "POST", &spdy_headers).await.1, 404);
    let wrong = url.replace("/portforward/", "/exec/");
    assert_eq!(http_request(&wrong, "POST", &spdy_headers).await.1, 404);
    // ... which used that token up.
    assert_eq!(http_request(&url, "POST", &spdy_headers).await.1, 404);

    // A protocol the server does not speak: 403 naming the ones it does.
    let url = env.port_forward_url(&pod).await.unwrap();
    let (_, status, headers, _) = http_request(
        &url,
        "POST",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-accepted-stream-protocol-versions" && v == "portforward.k8s.io"),
        "{headers:?}"
    );
    // No upgrade asked for: 400.
    let url = env.port_forward_url(&pod).await.unwrap();
    let (_, status, _, _) = http_request(
        &url,
        "GET",
        &[("X-Stream-Protocol-Version", "portforward.k8s.io")],
    )
    .await;
    assert_eq!(status, 400);

    // A token works once.
    let url = env.port_forward_url(&pod).await.unwrap();
    let c = SpdyClient::connect(&url, "portforward.k8s.io", None).await;
    drop(c);
    assert_eq!(http_request(&url, "POST", &spdy_headers).await.1, 404);

    let err = env.port_forward_url("nosuchpod").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    env.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy() {
    let env = Env::new("exec").await;
    let pc = env.pod_config("exec");
    let pod = env.run_pod(&pc).await;
    let ctr = env.run(&pod, &pc, &["sleep", "3600"]).await;

    // stdout and stderr apart, and the exit code in a v4 status.
    let url = env
        .exec_url(exec_req(
            &ctr,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
        ))
        .await
        .expect("Exec");
    assert!(url.contains("/exec/"), "{url}");
    let mut c = SpdyClient::connect(&url, V4, None).await;
    assert_eq!(c.protocol, "v4.channel.k8s.io");
    let s = remote_streams(&mut c, &["error", "stdout", "stderr"]).await;
    c.until_closed().await;
    assert!(c.goaway, "no GOAWAY before the close");
    assert_eq!(c.seen(s["stdout"]).data, b"out\n");
    assert_eq!(c.seen(s["stderr"]).data, b"err\n");
    assert!(c.seen(s["stdout"]).fin && c.seen(s["stderr"]).fin);
    assert_eq!(
        status_of(&c, s["error"]),
        serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command [sh -c echo out; echo err >&2; exit 3], exit code 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        })
    );

    // stdin to the process, its EOF when the client finishes stdin; success.
    let mut req = exec_req(&ctr, &["sh", "-c", "cat; echo done"]);
    req.stdin = true;
    req.stderr = false;
    let url = env.exec_url(req).await.unwrap();
    let mut c = SpdyClient::connect(&url, "v5.channel.k8s.io", None).await;
    assert_eq!(c.protocol, "v5.channel.k8s.io");
    let s = remote_streams(&mut c, &["error", "stdin", "stdout"]).await;
    let stdin = s["stdin"];
    c.write(stdin, b"hello ", false).await;
    c.write(stdin, b"world\n", true).await;
    c.until_closed().await;
    assert_eq!(c.seen(s["stdout"]).data, b"hello world\ndone\n");
    assert_eq!(
        status_of(&c, s["error"]),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );

    // Large output: a client that keeps 8 KiB windows and one that keeps none.
    let expected: Vec<u8> = (1..=60000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    for window in [Some(8 * 1024), None] {
        let url = env
            .exec_url(exec_req(&ctr, &["seq", "1", "60000"]))
            .await
            .unwrap();
        let mut c = SpdyClient::connect(&url, V4, window).await;
        let s = remote_streams(&mut c, &["error", "stdout", "stderr"]).await;
        c.until_closed().await;
        assert!(
            c.seen(s["stdout"]).data == expected,
            "output differs ({window:?})"
        );
        assert_eq!(status_of(&c, s["error"])["status"], "Success");
    }

    // A terminal: one output stream, the size the client sends, the process's exit code.
    let mut req = exec_req(
        &ctr,
        &["sh", "-c", "read x; stty size; tty; echo tty=$TERM; exit 4"],
    );
    req.tty = true;
    req.stdin = true;
    req.stderr = false;
    let url = env.exec_url(req).await.unwrap();
    let mut c = SpdyClient::connect(&url, V4, None).await;
    let s = remote_streams(&mut c, &["error", "stdin", "stdout", "resize"]).await;
    c.write(s["resize"], br#"{"Width":77,"Height":33}"#, false)
        .await;
    c.write(s["resize"], b"\n", false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write(s["stdin"], b"go\n", false).await;
    c.until_closed().await;
    let out = String::from_utf8_lossy(&c.seen(s["stdout"]).data).into_owned();
    assert!(out.contains("33 77\r\n"), "{out:?}");
    assert!(out.contains("tty=xterm\r\n"), "{out:?}");
    // The terminal is the container's own: it has a name there.
    assert!(out.contains("/dev/pts/"), "{out:?}");
    let st = status_of(&c, s["error"]);
    assert_eq!(st["details"]["causes"][0]["message"], "4", "{st}");

    // A client that goes away mid-exec leaves no process behind.
    let marker = ["sleep", "4321.5"];
    let url = env.exec_url(exec_req(&ctr, &marker)).await.unwrap();
    let mut c = SpdyClient::connect(&url, V4, None).await;
    remote_streams(&mut c, &["error", "stdout", "stderr"]).await;
    let deadline = Instant::now() + WAIT;
    while pids_running(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let deadline = Instant::now() + WAIT;
    while !pids_running(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad requests.
    let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(env.exec_url(exec_req("nosuch", &["true"])).await),
        Code::NotFound
    );
    let mut r = exec_req(&ctr, &["true"]);
    r.tty = true;
    assert_eq!(code(env.exec_url(r).await), Code::InvalidArgument);
    let mut r = exec_req(&ctr, &["true"]);
    (r.stdout, r.stderr) = (false, false);
    assert_eq!(code(env.exec_url(r).await), Code::InvalidArgument);
    env.d
        .runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        code(env.exec_url(exec_req(&ctr, &["true"])).await),
        Code::FailedPrecondition
    );
    env.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_spdy() {
    let env = Env::new("attach").await;
    let pc = env.pod_config("attach");
    let pod = env.run_pod(&pc).await;
    // As critest's attach container: sh reading its stdin, stdin_once.
    let mut cfg = env.config("sh-once", &["sh"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let once = env.run_config(&pod, &pc, cfg).await;
    let attach = |id: &str| cri::AttachRequest {
        container_id: id.into(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = env.attach_url(attach(&once)).await.expect("Attach");
    assert!(url.contains("/attach/"), "{url}");
    let mut c = SpdyClient::connect(&url, V4, None).await;
    let s = remote_streams(&mut c, &["error", "stdin", "stdout", "stderr"]).await;
    c.write(s["stdin"], b"echo hello; echo oops >&2\n", false)
        .await;
    c.until("the output", |c| {
        c.seen(s["stdout"]).data == b"hello\n" && c.seen(s["stderr"]).data == b"oops\n"
    })
    .await;
    // Ending stdin closes the container's (stdin_once): sh exits, the session ends.
    c.write(s["stdin"], b"", true).await;
    c.until_closed().await;
    assert_eq!(status_of(&c, s["error"])["status"], "Success");
    let deadline = Instant::now() + WAIT;
    while env.container_state(&once).await != cri::ContainerState::ContainerExited as i32 {
        assert!(Instant::now() < deadline, "sh did not exit on EOF");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without stdin_once, ending stdin detaches: the container keeps running.
    let mut cfg = env.config("sh", &["sh"]);
    cfg.stdin = true;
    let keep = env.run_config(&pod, &pc, cfg).await;
    let url = env.attach_url(attach(&keep)).await.unwrap();
    let mut c = SpdyClient::connect(&url, V4, None).await;
    let s = remote_streams(&mut c, &["error", "stdin", "stdout", "stderr"]).await;
    c.write(s["stdin"], b"echo still here\n", false).await;
    c.until("the output", |c| {
        c.seen(s["stdout"]).data == b"still here\n"
    })
    .await;
    c.write(s["stdin"], b"", true).await;
    c.until_closed().await;
    assert_eq!(status_of(&c, s["error"])["status"], "Success");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.container_state(&keep).await,
        cri::ContainerState::ContainerRunning as i32
    );
    // Attached without stdin: the output until the container exits.
    let url = env
        .attach_url(cri::AttachRequest {
            stdin: false,
            ..attach(&keep)
        })
        .await
        .unwrap();
    let mut c = SpdyClient::connect(&url, V4, None).await;
    let s = remote_streams(&mut c, &["error", "stdout", "stderr"]).await;
    // Feed the container from another attach: its output reaches this one too.
    let url2 = env.attach_url(attach(&keep)).await.unwrap();
    let mut c2 = SpdyClient::connect(&url2, V4, None).await;
    let s2 = remote_streams(&mut c2, &["error", "stdin", "stdout", "stderr"]).await;
    c2.write(s2["stdin"], b"echo bye; exit 0\n", false).await;
    c.until_closed().await;
    assert_eq!(c.seen(s["stdout"]).data, b"bye\n");
    assert_eq!(status_of(&c, s["error"])["status"], "Success");
    c2.until_closed().await;

    let err = env.attach_url(attach(&keep)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    env.remove_pod(&pod).await;
}
