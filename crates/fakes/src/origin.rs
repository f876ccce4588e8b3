//! Origin sites: one server answering for several host names, over HTTP/1.1 (plain) and HTTPS
//! (HTTP/1.1 or HTTP/2, chosen by ALPN).
//!
//! Paths:
//! - `GET /bytes/N` answers `N` bytes (Content-Length); `GET /chunked/N` answers them chunked;
//! - `GET /random/MIN-MAX` answers a size drawn uniformly from the range (varied responses);
//! - `GET /stall/N` announces `2N` bytes, sends `N` and then nothing, keeping the connection;
//! - any request with a body is read to its end and answered `received N`;
//! - anything else answers a short page naming the host and path.
//!
//! Every request is recorded (host, method, path, headers and body size), so tests can check
//! what reached the destination, e.g. that no credential leaked to it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pki::TestPki;

/// Largest body `/bytes/N` serves: 1 GiB, enough for streaming tests, bounded for safety.
const MAX_GENERATED_BODY: u64 = 1 << 30;
/// Frame size of generated bodies.
const CHUNK: usize = 16 * 1024;

/// What an origin received.
#[derive(Clone, Debug)]
pub struct OriginRequest {
    pub host: String,
    pub method: String,
    pub path: String,
    /// Every header as `name: value`, in order.
    pub headers: Vec<String>,
    pub body_bytes: u64,
    pub tls: bool,
}

/// A running origin.
#[derive(Debug, Clone)]
pub struct Origin {
    pub http: SocketAddr,
    pub https: SocketAddr,
    requests: Arc<Mutex<Vec<OriginRequest>>>,
}

impl Origin {
    /// Starts an origin on `127.0.0.1:0` (two ports) with certificates from `pki`.
    pub async fn start(pki: &TestPki) -> std::io::Result<Origin> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let https = TcpListener::bind("127.0.0.1:0").await?;
        Origin::serve(http, https, pki.server_config(&["h2", "http/1.1"]))
    }

    /// Serves on the given listeners: plain HTTP, and HTTPS with `tls`.
    pub fn serve(
        http: TcpListener,
        https: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let origin = Origin {
            http: http.local_addr()?,
            https: https.local_addr()?,
            requests: requests.clone(),
        };
        tokio::spawn(serve(http, None, requests.clone()));
        tokio::spawn(serve(https, Some(TlsAcceptor::from(tls)), requests));
        Ok(origin)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<OriginRequest> {
        crate::unpoisoned(&self.requests).clone()
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    requests: Arc<Mutex<Vec<OriginRequest>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Like real servers: small responses leave at once (no Nagle / delayed-ACK stalls).
        let _ = stream.set_nodelay(true);
        let requests = requests.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let is_tls = tls.is_some();
            let service = service_fn(move |request| {
                let requests = requests.clone();
                async move { Ok::<_, Infallible>(answer(request, is_tls, &requests).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

type OriginBody = BoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<Incoming>,
    tls: bool,
    requests: &Mutex<Vec<OriginRequest>>,
) -> Response<OriginBody> {
    let host = request
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        })
        .unwrap_or_default();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let mut body = request.into_body();
    let mut body_bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            body_bytes += data.len() as u64;
        }
    }
    crate::unpoisoned(requests).push(OriginRequest {
        host: host.clone(),
        method: method.clone(),
        path: path.clone(),
        headers,
        body_bytes,
        tls,
    });

    let size = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n <= MAX_GENERATED_BODY)
    };
    if body_bytes > 0 || method == "POST" {
        return text(format!("received {body_bytes}\n"));
    }
    if let Some(n) = size("/bytes/") {
        return generated(n, true);
    }
    if let Some(n) = size("/chunked/") {
        return generated(n, false);
    }
    if let Some(n) = size("/stall/") {
        return stalled(n);
    }
    if let Some((min, max)) = path
        .strip_prefix("/random/")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b && *b <= MAX_GENERATED_BODY)
    {
        return generated(rand::random_range(min..=max), true);
    }
    text(format!("hello from {host}{path}\n"))
}

/// `n` bytes of a body announced as `2n`, then nothing until the client goes away: a server that
/// stops mid-body without closing.
fn stalled(n: u64) -> Response<OriginBody> {
    use futures_util::StreamExt;
    let data = Bytes::from(vec![b'x'; usize::try_from(n).unwrap_or(0)]);
    let frames = futures_util::stream::once(async move { Ok::<_, Infallible>(Frame::data(data)) })
        .chain(futures_util::stream::pending());
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(2 * n));
    response
}

fn text(body: String) -> Response<OriginBody> {
    Response::new(Full::new(Bytes::from(body)).boxed())
}

/// `n` bytes of a repeating pattern, streamed in frames; with or without Content-Length.
fn generated(n: u64, with_length: bool) -> Response<OriginBody> {
    let pattern: Bytes = (0..CHUNK)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let frames = futures_util::stream::unfold(n, move |left| {
        let pattern = pattern.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(pattern.slice(..take))),
                left - take as u64,
            ))
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    if with_length {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    *response.status_mut() = StatusCode::OK;
    response
}
