//! Serving: the accept loop on the unix socket, one HTTP/2 connection per client, and
//! around every RPC a span (method, ids, duration, status code) and the client's deadline.
//!
//! Served with hyper directly rather than `tonic::transport::Server` because tonic answers
//! an expired `grpc-timeout` with CANCELLED; the CRI client expects DEADLINE_EXCEEDED.

use std::future::Future;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tonic::Status;
use tower::ServiceExt;
use tracing::Instrument;

/// How long in-flight RPCs may finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);

/// Client-cancelled RPCs still being served before a connection is refused (h2: 20).
const MAX_CANCELLED_IN_FLIGHT: usize = 4096;

/// Serves `routes` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: UnixListener,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // h2 answers the 21st stream that a client cancels before berthd took it up with a
    // GOAWAY (its guard against "rapid reset" floods), failing every RPC on the connection:
    // seen with `crictl rmp -fa` on 300 pods, which cancels its 2 s StopPodSandbox calls in
    // bulk on a busy node. The socket admits only root and its group; the bound can be high.
    builder.max_pending_accept_reset_streams(MAX_CANCELLED_IN_FLIGHT);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let routes = routes.clone();
                let svc = tower::service_fn(move |req| handle(routes.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}

async fn handle(
    routes: tonic::service::Routes,
    req: Request<Incoming>,
) -> Result<Response<tonic::body::Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let method = path.rsplit('/').next().unwrap_or_default().to_string();
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout);
    let span = tracing::info_span!(
        "rpc",
        method = %method,
        pod_id = tracing::field::Empty,
        container_id = tracing::field::Empty,
        image = tracing::field::Empty,
    );
    let start = Instant::now();
    let mut pending = Pending {
        span: span.clone(),
        start,
        done: false,
    };
    let call = routes.oneshot(req).instrument(span.clone());
    let resp = match deadline {
        Some(d) => match tokio::time::timeout(d, call).await {
            Ok(r) => r,
            Err(_) => Ok(Status::deadline_exceeded(format!(
                "{method}: deadline of {d:?} exceeded"
            ))
            .into_http()),
        },
        None => call.await,
    };
    let resp = resp.unwrap_or_else(|never| match never {});
    pending.done = true;
    let elapsed = start.elapsed();
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    let code_name = tonic::Code::from_i32(code);
    let _e = span.enter();
    let ms = elapsed.as_secs_f64() * 1e3;
    if code != 0 {
        let message = resp
            .headers()
            .get("grpc-message")
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        if code == tonic::Code::Unimplemented as i32 || code == tonic::Code::NotFound as i32 {
            tracing::info!(code = ?code_name, ms, %message, "rpc failed");
        } else {
            tracing::warn!(code = ?code_name, ms, %message, "rpc failed");
        }
    } else if is_query(&method) {
        tracing::debug!(ms, "rpc");
    } else {
        tracing::info!(ms, "rpc");
    }
    Ok(resp)
}

/// Logs an RPC whose client went away (cancelled, or its own deadline passed) before
/// berthd answered: hyper then drops the handler, and nothing else would say so.
struct Pending {
    span: tracing::Span,
    start: Instant,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _e = self.span.enter();
            let ms = self.start.elapsed().as_secs_f64() * 1e3;
            tracing::info!(ms, "rpc cancelled by the client");
        }
    }
}

/// Reads that kubelet repeats every few seconds: logged at debug level only.
fn is_query(method: &str) -> bool {
    method.starts_with("List")
        || method.ends_with("Status")
        || method.ends_with("Stats")
        || matches!(
            method,
            "Version" | "ImageFsInfo" | "RuntimeConfig" | "ExecSync"
        )
}

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H M S m u n).
fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_timeout("999999u"),
            Some(Duration::from_micros(999_999))
        );
        assert_eq!(parse_timeout("5x"), None);
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("123456789S"), None);
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(
            percent_decode(b"image %22x%22 not found"),
            "image \"x\" not found"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }
}
