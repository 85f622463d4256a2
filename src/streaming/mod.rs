//! berthd's streaming server: the HTTP endpoint behind the URLs that the `Exec`, `Attach`
//! and `PortForward` RPCs return, as kubelet's CRI streaming library serves them.
//!
//! An RPC validates its request and parks it under a one-time token (`requests`); the
//! client then connects to `http://ADDR/{exec,attach,portforward}/TOKEN` and upgrades the
//! HTTP/1.1 connection to SPDY/3.1 (`spdy`, `connection`), the protocol client-go speaks.
//! Exec and attach sessions are in `remotecommand` (over the process's stdio from
//! `stdio`), port forwarding in `portforward`; `websocket` carries either over a
//! WebSocket instead of SPDY.

pub mod connection;
pub mod portforward;
pub mod remotecommand;
pub mod requests;
pub mod spdy;
pub mod stdio;
pub mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::container::ContainerService;
use crate::sandbox::SandboxService;
use crate::sandbox::spec::{NsMode, PodState};
use crate::store::containers::ContainerState;
use portforward::Netns;
use remotecommand::{AttachRequest, ExecRequest, Session};
use requests::RequestCache;

/// How long a client may take to open the streams a session needs (kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

pub const HEADER_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "x-accepted-stream-protocol-versions";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Container(#[from] crate::container::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
    #[error(transparent)]
    Requests(#[from] requests::Error),
}

/// Bytes from the client on one channel (a SPDY stream).
pub trait ChannelIn: Send {
    /// The next chunk; None once the client finished the channel or went away.
    fn recv(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// Bytes to the client on one channel.
pub trait ChannelOut: Send + Sync {
    fn write(&self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// No more data on this channel.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A request parked under a token until its client connects.
#[derive(Debug, Clone)]
enum Parked {
    Remote(Session),
    PortForward {
        pod_id: String,
        netns: Netns,
        /// The ports of the request: a WebSocket client gets a channel pair for each.
        ports: Vec<u16>,
    },
}

impl Parked {
    fn path(&self) -> &'static str {
        match self {
            Parked::Remote(Session::Exec(_)) => "exec",
            Parked::Remote(Session::Attach(_)) => "attach",
            Parked::PortForward { .. } => "portforward",
        }
    }
}

/// The streaming server; clones share it.
#[derive(Clone)]
pub struct StreamServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// `http://ADDR` with the port actually bound.
    base_url: String,
    requests: RequestCache<Parked>,
    containers: ContainerService,
    sandboxes: SandboxService,
}

impl StreamServer {
    /// A server whose URLs point at `addr`, the address its listener is bound to.
    pub fn new(
        addr: SocketAddr,
        containers: ContainerService,
        sandboxes: SandboxService,
    ) -> StreamServer {
        StreamServer {
            inner: Arc::new(Inner {
                base_url: format!("http://{addr}"),
                requests: RequestCache::new(requests::TOKEN_TTL),
                containers,
                sandboxes,
            }),
        }
    }

    fn url(&self, parked: Parked) -> Result<String, Error> {
        let path = parked.path();
        let token = self.inner.requests.insert(parked)?;
        Ok(format!("{}/{path}/{token}", self.inner.base_url))
    }

    /// The running container's full id; checks the streams asked for as kubelet does.
    async fn check_streams(
        &self,
        container_id: &str,
        (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
    ) -> Result<crate::store::containers::ContainerRecord, Error> {
        if container_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required container_id".into(),
            ));
        }
        let rec = self.inner.containers.status(container_id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if tty && stderr {
            // A terminal has one output: stdout and stderr cannot be told apart.
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be true".into(),
            ));
        }
        if !stdin && !stdout && !stderr {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout, or stderr must be set".into(),
            ));
        }
        Ok(rec)
    }

    /// The URL for running a command in a running container.
    pub async fn exec(&self, mut req: ExecRequest) -> Result<String, Error> {
        let rec = self
            .check_streams(
                &req.container_id,
                (req.stdin, req.stdout, req.stderr, req.tty),
            )
            .await?;
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec: empty command".into()));
        }
        req.container_id = rec.id;
        self.url(Parked::Remote(Session::Exec(req)))
    }

    /// The URL for attaching to a running container.
    pub async fn attach(&self, mut req: AttachRequest) -> Result<String, Error> {
        let rec = self
            .check_streams(
                &req.container_id,
                (req.stdin, req.stdout, req.stderr, req.tty),
            )
            .await?;
        req.container_id = rec.id;
        req.stdin_once = rec.config.stdin_once;
        self.url(Parked::Remote(Session::Attach(req)))
    }

    /// The URL for forwarding ports of a ready pod. `ports` matter to WebSocket clients
    /// only (SPDY clients name a port per stream).
    pub fn port_forward(&self, pod_id: &str, ports: &[i32]) -> Result<String, Error> {
        if pod_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required pod_sandbox_id".into(),
            ));
        }
        let ports = ports
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Error::InvalidArgument(format!("invalid port {p}")))
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        let pod = self.inner.sandboxes.get(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let netns = if pod.spec.network == NsMode::Node {
            Netns::Host
        } else {
            Netns::Pod(
                crate::sandbox::namespaces::ns_paths(&self.inner.sandboxes.pod_dir(&pod.id)).net,
            )
        };
        self.url(Parked::PortForward {
            pod_id: pod.id,
            netns,
            ports,
        })
    }

    /// Serves HTTP/1.1 on `listener` for as long as berthd runs.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            // A client whose host vanished is noticed in about a minute: its session (and
            // an exec's process) ends instead of waiting for ever.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(3);
            if let Err(e) = socket2::SockRef::from(&sock).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "streaming server: cannot set TCP keepalive");
            }
            let server = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| server.clone().handle(req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(sock), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
                }
            });
        }
    }

    async fn handle(self, mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::POST {
            return Ok(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
            ));
        }
        let Some((kind, token)) = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
        else {
            return Ok(not_found());
        };
        let parked = match self.inner.requests.consume(token) {
            Some(p) if p.path() == kind => p,
            _ => return Ok(not_found()),
        };
        if websocket::is_websocket(&req) {
            return Ok(self.upgrade_websocket(req, parked));
        }
        let supported: &[&str] = match parked {
            Parked::Remote(_) => remotecommand::SPDY_PROTOCOLS,
            Parked::PortForward { .. } => &[portforward::PROTOCOL],
        };
        let protocol = match negotiate(&req, supported) {
            Ok(p) => p,
            Err(resp) => return Ok(*resp),
        };
        if !upgrade_requested(&req, "spdy/3.1") {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request\n",
            ));
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = match upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming: upgrade failed");
                    return;
                }
            };
            let conn = connection::Connection::new(io);
            match parked {
                Parked::Remote(session) => {
                    let version = remotecommand::Version::from_protocol(protocol)
                        .expect("negotiated from SPDY_PROTOCOLS");
                    let id = session.container_id().to_string();
                    tracing::info!(
                        container_id = id,
                        protocol,
                        "{} session",
                        kind_name(&session)
                    );
                    remotecommand::serve_spdy(conn, version, session, &self.inner.containers).await;
                    tracing::debug!(container_id = id, "streaming session ended");
                }
                Parked::PortForward { pod_id, netns, .. } => {
                    tracing::info!(pod_id, "port-forward session");
                    portforward::serve_spdy(conn, pod_id.clone(), netns).await;
                    tracing::debug!(pod_id, "port-forward session ended");
                }
            }
        });
        let mut resp = Response::new(String::new());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(
            HEADER_PROTOCOL_VERSION,
            HeaderValue::from_str(protocol).expect("a protocol name is a header value"),
        );
        Ok(resp)
    }
}

impl StreamServer {
    /// Answers a WebSocket upgrade and runs the session on it once upgraded.
    fn upgrade_websocket(self, mut req: Request<Incoming>, parked: Parked) -> Response<String> {
        let supported = match parked {
            Parked::Remote(_) => websocket::REMOTECOMMAND_PROTOCOLS,
            Parked::PortForward { .. } => websocket::PORTFORWARD_PROTOCOLS,
        };
        let (resp, protocol) = match websocket::handshake(&req, supported) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        // Without ports in the request, the URL's (`?port=80&port=8080`), as kubelet.
        let query_ports: Vec<u16> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.strip_prefix("port="))
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p > 0)
            .collect();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = match upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming: upgrade failed");
                    return;
                }
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                io,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            match parked {
                Parked::Remote(session) => {
                    let id = session.container_id().to_string();
                    tracing::info!(
                        container_id = id,
                        protocol,
                        "{} session (WebSocket)",
                        kind_name(&session)
                    );
                    websocket::serve_remotecommand(ws, &protocol, session, &self.inner.containers)
                        .await;
                    tracing::debug!(container_id = id, "streaming session ended");
                }
                Parked::PortForward {
                    pod_id,
                    netns,
                    mut ports,
                } => {
                    tracing::info!(pod_id, protocol, "port-forward session (WebSocket)");
                    if protocol == websocket::TUNNEL_PROTOCOL {
                        websocket::serve_portforward_tunnel(ws, pod_id.clone(), netns).await;
                    } else {
                        if ports.is_empty() {
                            ports = query_ports;
                        }
                        websocket::serve_portforward_channels(ws, ports, pod_id.clone(), netns)
                            .await;
                    }
                    tracing::debug!(pod_id, "port-forward session ended");
                }
            }
        });
        resp
    }
}

fn kind_name(s: &Session) -> &'static str {
    match s {
        Session::Exec(_) => "exec",
        Session::Attach(_) => "attach",
    }
}

fn plain(status: StatusCode, body: &str) -> Response<String> {
    let mut resp = Response::new(body.to_string());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> Response<String> {
    plain(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Whether the request asks to upgrade to `protocol` (compared case-insensitively).
fn upgrade_requested<B>(req: &Request<B>, protocol: &str) -> bool {
    let has = |name, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(want))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, protocol)
}

/// The first protocol of the client's `X-Stream-Protocol-Version` list that the server
/// supports, or the error response kubelet's handshake gives.
fn negotiate<'a, B>(
    req: &Request<B>,
    supported: &[&'a str],
) -> Result<&'a str, Box<Response<String>>> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(HEADER_PROTOCOL_VERSION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: header X-Stream-Protocol-Version is missing or empty\n",
        )));
    }
    if let Some(p) = offered
        .iter()
        .find_map(|o| supported.iter().find(|s| *s == o))
    {
        return Ok(p);
    }
    let mut resp = plain(
        StatusCode::FORBIDDEN,
        &format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}\n"
        ),
    );
    for s in supported {
        resp.headers_mut().append(
            HEADER_ACCEPTED_PROTOCOL_VERSIONS,
            HeaderValue::from_str(s).expect("a protocol name is a header value"),
        );
    }
    Err(Box::new(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::post("/exec/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn protocol_negotiation_follows_the_clients_order() {
        let sup = ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];
        let r = req(&[
            ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
            (
                "X-Stream-Protocol-Version",
                "v3.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]);
        assert_eq!(negotiate(&r, &sup).unwrap(), "v3.channel.k8s.io");
        let r = req(&[("X-Stream-Protocol-Version", "v9")]);
        let resp = negotiate(&r, &sup).unwrap_err();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            resp.headers()
                .get_all(HEADER_ACCEPTED_PROTOCOL_VERSIONS)
                .iter()
                .count(),
            3
        );
        let resp = negotiate(&req(&[]), &sup).unwrap_err();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn upgrade_headers_are_checked() {
        assert!(upgrade_requested(
            &req(&[
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "SPDY/3.1")
            ]),
            "spdy/3.1"
        ));
        assert!(!upgrade_requested(
            &req(&[("Upgrade", "SPDY/3.1")]),
            "spdy/3.1"
        ));
        assert!(!upgrade_requested(
            &req(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]),
            "spdy/3.1"
        ));
    }
}
