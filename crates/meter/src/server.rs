//! Client-facing listeners: accept, admit the connection, serve HTTP/1.1 and h2c on one port.
//!
//! Everything is bounded. The connection count is capped by a semaphore and a connection past
//! the cap is answered `503` at once and counted, instead of waiting in an unbounded queue.
//! hyper's HTTP/1 header-read timeout (which needs a timer, configured here) bounds slow request
//! heads and idle keep-alive connections; HTTP/2 has stream, header-list and reset-flood limits;
//! and a watchdog closes client connections on which no byte moved for `client_idle_timeout`
//! (unless they carry an HTTP/2 tunnel, which has its own idle timeout).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pt_config::{LimitsConfig, VendorIndex};
use pt_metrics::labels::RejectReason;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ProxyBody;
use crate::activity::Activity;
use crate::admission::ConnInfo;
use crate::counting_io::ObservedIo;
use crate::shared::Shared;
use crate::{forward, tunnel};

/// How long a refused connection gets to receive its one-line answer before it is closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (for example out of file descriptors), so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Resets a client may cause before hyper/h2 answers with GOAWAY (Rapid Reset, CVE-2023-44487).
/// The h2 crate's default is 20; this keeps it explicit.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// The HTTP server settings shared by every client connection.
pub fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .preserve_header_case(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .keep_alive_interval(None);
    builder
}

/// The next accepted connection, or `None` once draining starts. Accept errors (such as running
/// out of file descriptors) are logged and retried after a pause.
pub async fn next_connection(
    listener: &TcpListener,
    shared: &Shared,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.draining.cancelled() => return None,
        };
        match accepted {
            Ok(pair) => return Some(pair),
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Accepts connections until draining starts.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    listener_vendor: Option<VendorIndex>,
    limit: Arc<Semaphore>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    while let Some((stream, peer)) = next_connection(&listener, &shared).await {
        let sources = &shared.config.clients.allowed_sources;
        if !sources.is_empty() && !sources.iter().any(|net| net.contains(peer.ip())) {
            shared.metrics.reject(RejectReason::SourceNotAllowed);
            tokio::spawn(refuse_connection(stream, REFUSED_FORBIDDEN));
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.metrics.reject(RejectReason::Overloaded);
            tokio::spawn(refuse_connection(stream, REFUSED_OVERLOADED));
            continue;
        };
        let info = ConnInfo {
            peer,
            listener_vendor,
        };
        shared
            .tasks
            .spawn(serve(shared.clone(), stream, info, builder.clone(), permit));
    }
}

const REFUSED_FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\nX-Proxy-Telemetry-Error: source_not_allowed\r\n\r\n";
const REFUSED_OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nX-Proxy-Telemetry-Error: overloaded\r\n\r\n";

async fn refuse_connection(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Keeps `proxy_open_connections` up while a client connection is served.
pub struct OpenConnection<'a>(pub &'a Shared);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metrics.open_connections.dec();
    }
}

/// Serves one client connection until it closes, idles out, or the meter stops.
async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    info: ConnInfo,
    builder: Arc<auto::Builder<TokioExecutor>>,
    _permit: OwnedSemaphorePermit,
) {
    shared.metrics.open_connections.inc();
    let _open = OpenConnection(&shared);
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let tunnels = Arc::new(AtomicUsize::new(0));
    // The client socket records when bytes last moved, for the idle watchdog.
    let io = TokioIo::new(ObservedIo::new(stream, activity.clone()));
    let service_shared = shared.clone();
    let service_tunnels = tunnels.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = service_shared.clone();
        let info = info.clone();
        let tunnels = service_tunnels.clone();
        async move { Ok::<_, Infallible>(route(shared, info, tunnels, request).await) }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let idle_timeout = shared.config.limits.client_idle_timeout;
    let mut draining = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => break,
            () = shared.draining.cancelled(), if !draining => {
                draining = true;
                // HTTP/1.1: close after the response in flight; HTTP/2: GOAWAY.
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle(idle_timeout, || tunnels.load(Ordering::Relaxed) > 0) => break,
            () = shared.stopped.cancelled() => break,
        }
    }
}

/// Sends each request to the tunnel or the forwarding path.
async fn route(
    shared: Arc<Shared>,
    info: ConnInfo,
    tunnels: Arc<AtomicUsize>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        tunnel::connect(shared, info, tunnels, request).await
    } else {
        forward::forward(shared, info, request).await
    }
}
