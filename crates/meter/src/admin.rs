//! The admin endpoint: `/metrics` (OpenMetrics), `/healthz` (the process serves) and `/readyz`
//! (the meter accepts new traffic; false while draining). It stays up until the very end of a
//! shutdown so that a last scrape can collect the final counts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Admin connections served at once: Prometheus, a kubelet probe or two, and an operator.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Slow admin clients are cut off after this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At the limit, how long the oldest connection has to finish the response it is sending
/// before it is closed anyway, and a new connection waits for its place.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// The open admin connections, oldest first, each with the token that asks it to close.
#[derive(Debug, Default)]
struct Open {
    next: u64,
    connections: VecDeque<(u64, CancellationToken)>,
}

/// Serves the admin endpoint until `stop` is cancelled.
///
/// At [`MAX_ADMIN_CONNECTIONS`] a new connection is not refused: the oldest one is closed
/// (at once when it is between requests, else after its response or [`EVICTION_GRACE`]), so
/// idle or hostile connections cannot keep Prometheus from scraping.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    drain: Arc<Drain>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = lock(&open).connections.pop_front();
                if let Some((_, close)) = oldest {
                    close.cancel();
                }
                let waited = tokio::time::timeout(
                    EVICTION_GRACE + Duration::from_millis(100),
                    limit.clone().acquire_owned(),
                );
                match waited.await {
                    Ok(Ok(permit)) => permit,
                    _ => continue,
                }
            }
        };
        let close = CancellationToken::new();
        let id = {
            let mut open = lock(&open);
            let id = open.next;
            open.next += 1;
            open.connections.push_back((id, close.clone()));
            id
        };
        let registry = registry.clone();
        let drain = drain.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &registry, &drain);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = close.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(EVICTION_GRACE, connection).await;
                }
                () = stop.cancelled() => {}
            }
            lock(&open).connections.retain(|(other, _)| *other != id);
        });
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    // A panic while holding it left a list of tokens, still consistent.
    open.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn answer(
    request: &Request<Incoming>,
    registry: &Registry,
    drain: &Drain,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if drain.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
