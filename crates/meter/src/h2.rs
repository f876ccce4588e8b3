//! HTTP/2 client connections with prior knowledge (h2c): absolute requests and CONNECT streams.
//!
//! The `h2` crate (through hyper) speaks HTTP/2; the meter bounds what a connection may hold
//! around it. The first request's header block must arrive within `limits.header_read_timeout`
//! of the accept, however the bytes trickle ([`pt_sniff::h2::FirstRequest`] watches them on their
//! way in). A connection with no open stream for `limits.client_idle_timeout` is sent GOAWAY and
//! closed, whatever PINGs or SETTINGS it sends meanwhile; while it has no open stream its slot may
//! be reclaimed for a new client. So is a connection whose request streams all stopped moving for
//! that long (a body that stops coming, a client whose flow-control window stays shut): only body
//! bytes and new streams count as progress, not PINGs; a stream whose vendor sends nothing
//! mid-body for that long is reset on its own. A request is admitted (credentials,
//! vendor, destination) on its header block, before any of its body is read. Every stream needs
//! a vendor connection, taken from the global bound ([`crate::vendor`]); past it, a stream is
//! answered 503 and counted.
//!
//! Each request goes to its vendor as HTTP/1.1 over the same pooled connections and the same
//! lifecycle as HTTP/1.1 requests: the request body as it arrives (with its `content-length`, or
//! chunked), the response decoded from its framing into DATA frames. Request trailers are not
//! forwarded; trailers that carry fields a trailer may not (`content-length`, hop-by-hop fields)
//! or that are empty (a block of pseudo-headers only, which the HTTP/2 layer drops before the
//! meter sees it) make the request malformed.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pt_config::VendorIndex;
use pt_metrics::labels::{Protocol, RejectReason, UpstreamErrorReason};
use pt_sniff::h2::FirstRequest;
use pt_sniff::http1::{Body, Framing, RequestKind};
use pt_sniff::request::{FieldKind, RequestError, kind_of, parse_http_authority};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access_log::redact_target;
use crate::activity::Activity;
use crate::context::Context;
use crate::exchange::Exchange;
use crate::failure::Outcome;
use crate::failure::{Error, Failure};
use crate::http1::message;
use crate::lifecycle::{self, Admitted, ConnInfo, Request as MeterRequest, Route};
use crate::relay::Start;
use crate::slots::Slot;
use crate::tunnel;
use crate::vendor::{self, VendorConn, pool::PoolKey};

/// The body of every answer to an HTTP/2 client.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, io::Error>;

/// Resets a client may cause before the connection is sent GOAWAY (Rapid Reset,
/// CVE-2023-44487). The h2 crate's default is 20; this keeps it explicit.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// After GOAWAY, how long streams still open may take before the connection is closed.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// Serves one HTTP/2 client connection; `buf` holds the bytes already read from it.
pub async fn serve(
    ctx: Arc<Context>,
    stream: TcpStream,
    conn: ConnInfo,
    mut slot: Slot,
    buf: BytesMut,
    first_deadline: Instant,
) {
    let first = Arc::new(AtomicBool::new(false));
    let io = Prefaced {
        buf: buf.freeze(),
        stream,
        scan: Some(FirstRequest::default()),
        first: first.clone(),
    };
    let (streams, mut open) = Streams::new();
    let watched = streams.clone();
    let service_ctx = ctx.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let ctx = service_ctx.clone();
        let guard = StreamGuard::new(streams.clone(), request.method() != Method::CONNECT);
        async move { Ok::<_, Infallible>(handle(ctx, conn, guard, request).await) }
    });
    let limits = &ctx.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .keep_alive_interval(None);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut idle_since = Some(Instant::now());
    let mut closing: Option<Instant> = None;
    loop {
        let first_pending = !first.load(Ordering::Relaxed);
        let idle_deadline = idle_since.map(|t| t + limits.client_idle_timeout);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(first_deadline), if first_pending => return,
            changed = open.changed() => {
                if changed.is_err() {
                    continue;
                }
                if *open.borrow_and_update() == 0 {
                    idle_since = Some(Instant::now());
                    slot.idle();
                } else {
                    idle_since = None;
                    if !slot.busy() && closing.is_none() {
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + GOAWAY_GRACE);
                    }
                }
            }
            () = sleep_until_some(idle_deadline), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + GOAWAY_GRACE);
            }
            () = watched.stuck(limits.client_idle_timeout), if closing.is_none() && idle_since.is_none() => {
                tracing::debug!(peer = %conn.peer, "no request stream moved a byte: closing");
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + GOAWAY_GRACE);
            }
            () = slot.reclaimed(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + GOAWAY_GRACE);
            }
            () = ctx.drain.draining.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + ctx.limits.client_idle_timeout);
            }
            () = sleep_until_some(closing) => return,
            () = ctx.drain.stopped.cancelled() => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The streams of one client connection, as its task watches them.
#[derive(Debug)]
struct Streams {
    /// Open streams: requests and tunnels.
    open: watch::Sender<usize>,
    /// Open request streams (tunnels have their own idle timeout).
    requests: AtomicUsize,
    /// When a request stream last began or moved body bytes, to or from the client or its
    /// vendor. PINGs and SETTINGS do not count: they keep no request going.
    progress: Activity,
}

impl Streams {
    fn new() -> (Arc<Streams>, watch::Receiver<usize>) {
        let (open, watched) = watch::channel(0);
        let streams = Streams {
            open,
            requests: AtomicUsize::new(0),
            progress: Activity::default(),
        };
        (Arc::new(streams), watched)
    }

    /// Resolves once request streams are open and none moved a byte for `timeout`: a client
    /// that stopped sending its body or reading its responses (its flow-control window at
    /// zero), or vendors gone quiet mid-body, on every stream at once.
    async fn stuck(&self, timeout: Duration) {
        self.progress
            .idle(timeout, || self.requests.load(Ordering::Relaxed) == 0)
            .await;
    }
}

/// Counts a stream as open until dropped (with its response body, or its tunnel).
#[derive(Debug)]
struct StreamGuard {
    streams: Arc<Streams>,
    request: bool,
}

impl StreamGuard {
    fn new(streams: Arc<Streams>, request: bool) -> StreamGuard {
        if request {
            streams.requests.fetch_add(1, Ordering::Relaxed);
            streams.progress.touch();
        }
        streams.open.send_modify(|n| *n += 1);
        StreamGuard { streams, request }
    }

    /// Body bytes moved on this stream.
    fn moved(&self) {
        self.streams.progress.touch();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.request {
            self.streams.requests.fetch_sub(1, Ordering::Relaxed);
        }
        self.streams.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The client socket, with the bytes read before HTTP/2 was recognised replayed first and the
/// incoming bytes followed until the first request's header block is complete.
struct Prefaced {
    buf: Bytes,
    stream: TcpStream,
    scan: Option<FirstRequest>,
    first: Arc<AtomicBool>,
}

impl Prefaced {
    fn saw(&mut self, bytes: &[u8]) {
        if let Some(scan) = &mut self.scan
            && scan.feed(bytes)
        {
            self.first.store(true, Ordering::Relaxed);
            self.scan = None;
        }
    }
}

impl AsyncRead for Prefaced {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            let replay = this.buf.split_to(n);
            this.saw(&replay);
            out.put_slice(&replay);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, out))?;
        if this.scan.is_some() {
            let new = out.filled()[before..].to_vec();
            this.saw(&new);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefaced {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Answers one stream; never fails (errors become answers).
async fn handle(
    ctx: Arc<Context>,
    conn: ConnInfo,
    guard: StreamGuard,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    if request.method() == Method::CONNECT {
        connect(ctx, conn, guard, request).await
    } else {
        forward(ctx, conn, guard, request).await
    }
}

/// The meter's own answer to a failed stream.
fn answer(failure: Failure, vendor: Option<&str>) -> Response<ResponseBody> {
    let body = format!("proxy-telemetry: {}\n", failure.explain(vendor));
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-proxy-telemetry-error",
        HeaderValue::from_static(failure.reason()),
    );
    if failure.challenges() {
        headers.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"proxy-telemetry\""),
        );
    }
    response
}

fn empty() -> ResponseBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The values of a field, as bytes.
fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

/// An HTTP/2 CONNECT stream (RFC 9113 §8.5): `:authority` only, no `:scheme` or `:path`.
async fn connect(
    ctx: Arc<Context>,
    conn: ConnInfo,
    guard: StreamGuard,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    let uri = request.uri();
    let target = match (uri.scheme(), uri.path_and_query(), uri.authority()) {
        (None, None, Some(authority)) => pt_sniff::authority::parse_authority(authority.as_str())
            .map_err(|_| Failure::Rejected(RejectReason::BadRequest)),
        _ => Err(Failure::Rejected(RejectReason::BadRequest)),
    };
    let target = match target {
        Ok(target) => target,
        Err(failure) => {
            let refused = lifecycle::refuse(
                &ctx.metering,
                &conn,
                Protocol::Connect,
                "CONNECT",
                None,
                None,
                failure,
            );
            return answer(refused.failure, None);
        }
    };
    let headers = request.headers();
    let authorization = values(headers, "proxy-authorization");
    let vendor_header = match &ctx.gate.vendor_header {
        Some(name) => values(headers, name),
        None => Vec::new(),
    };
    let meter_request = MeterRequest {
        protocol: Protocol::Connect,
        method: "CONNECT",
        target: &target,
        route: Route::Proxy {
            proxy_authorization: &authorization,
            vendor_header: &vendor_header,
        },
        url: None,
    };
    let admitted = lifecycle::admit(&ctx.gate, &ctx.metering, &ctx.vendors, &conn, meter_request);
    let Admitted {
        vendor,
        mut exchange,
        client_authorization,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            return answer(refused.failure, refused.vendor.as_ref().map(|v| v.as_str()));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let opened = ctx
        .vendors
        .open_tunnel(
            vendor,
            &target,
            exchange.attribution().clone(),
            client_authorization.as_deref(),
        )
        .await;
    let (vendor_conn, leftover) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            exchange.failed(&error);
            return answer(error.failure, Some(vendor.name.as_str()));
        }
    };
    exchange.responded(200);
    // Copied out here: the read buffer the answer came in must not live as long as the tunnel.
    let start = Start::copied(&[], &leftover);
    drop(leftover);
    let task_ctx = ctx.clone();
    ctx.drain.tasks.spawn(async move {
        let _guard = guard;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(_) => {
                drop(vendor_conn);
                exchange.failed(&Failure::ClientGone.into());
                return;
            }
        };
        let activity = Activity::default();
        let stop = std::pin::pin!(async {
            task_ctx.drain.stopped.cancelled().await;
            Outcome::Shutdown
        });
        let (vendor_read, vendor_write, _lease) = vendor_conn.into_halves();
        tunnel::run(
            tokio::io::split(TokioIo::new(upgraded)),
            (vendor_read, vendor_write),
            exchange,
            start,
            tunnel::limits(
                task_ctx.limits.tunnel_idle_timeout,
                task_ctx.limits.sniff_timeout,
            ),
            &activity,
            stop,
        )
        .await;
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Fields never forwarded from an HTTP/2 request to the vendor: connection-specific ones
/// (which HTTP/2 forbids anyway), the client's credentials, `host` (rebuilt from
/// `:authority`), and the framing fields the meter sets itself.
const NOT_FORWARDED: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
];

/// Fields a trailer section may not carry (RFC 9110 §6.5.1): framing, routing, credentials.
fn forbidden_in_trailers(name: &HeaderName) -> bool {
    NOT_FORWARDED.contains(name)
        || *name == header::EXPECT
        || *name == header::AUTHORIZATION
        || *name == header::TRAILER
}

/// A plain-HTTP request on an HTTP/2 stream.
async fn forward(
    ctx: Arc<Context>,
    conn: ConnInfo,
    guard: StreamGuard,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let refuse = |failure: Failure| {
        let refused = lifecycle::refuse(
            &ctx.metering,
            &conn,
            Protocol::H2,
            &method,
            None,
            None,
            failure,
        );
        answer(refused.failure, None)
    };
    let bad = Failure::Rejected(RejectReason::BadRequest);
    let uri = &parts.uri;
    if uri.scheme_str() != Some("http") {
        return refuse(bad);
    }
    let Some(authority) = uri.authority() else {
        return refuse(bad);
    };
    let (target, explicit_port) = match parse_http_authority(authority.as_str()) {
        Ok(parsed) => parsed,
        Err(error) => return refuse(Failure::Malformed(error)),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if !path.starts_with('/') {
        // `*` (or anything but an origin-form path) has no absolute form to forward.
        return refuse(bad);
    }
    // The same field rules as HTTP/1.1: as many fields, and no name that a vendor mapping `_`
    // to `-` would read as framing or credentials.
    if parts.headers.len() > ctx.limits.max_headers {
        return refuse(Failure::Malformed(RequestError::TooManyHeaders));
    }
    if let Some(error) = parts
        .headers
        .keys()
        .find_map(|name| kind_of(name.as_str().as_bytes()).err())
    {
        return refuse(Failure::Malformed(error));
    }
    let host = if explicit_port {
        target.to_string()
    } else {
        target.host.to_string()
    };
    let authorization = values(&parts.headers, "proxy-authorization");
    let vendor_header = match &ctx.gate.vendor_header {
        Some(name) => values(&parts.headers, name),
        None => Vec::new(),
    };
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let meter_request = MeterRequest {
        protocol: Protocol::H2,
        method: &method,
        target: &target,
        route: Route::Proxy {
            proxy_authorization: &authorization,
            vendor_header: &vendor_header,
        },
        url: Some(redact_target(&host, path)),
    };
    let admitted = lifecycle::admit(&ctx.gate, &ctx.metering, &ctx.vendors, &conn, meter_request);
    let Admitted {
        vendor,
        mut exchange,
        client_authorization,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            return answer(refused.failure, refused.vendor.as_ref().map(|v| v.as_str()));
        }
    };
    // Admitted first (credentials, vendor, destination), then the body: a client the meter
    // refuses gets nothing read. A body that fits in hand is read whole before anything goes to
    // the vendor: a length mismatch or forbidden trailers are refused with nothing forwarded,
    // and the request can be sent again on a fresh connection.
    let body = match gather(body, &guard).await {
        Ok(body) => body,
        Err(error) => {
            exchange.failed(&error);
            if error.failure == Failure::ClientGone {
                return Response::new(empty());
            }
            return answer(error.failure, Some(vendor.name.as_str()));
        }
    };
    let vendor_index = ctx
        .vendors
        .list
        .iter()
        .position(|v| std::ptr::eq(v, vendor))
        .unwrap_or(0);

    let framing = match &body {
        RequestBody::InHand(data) if data.is_empty() && length.is_none() => Framing::Empty,
        RequestBody::InHand(data) => Framing::Length(data.len() as u64),
        RequestBody::Streaming { .. } => match length {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        },
    };
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    if !vendor.is_direct() {
        head.extend_from_slice(b"http://");
        head.extend_from_slice(host.as_bytes());
    }
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\n");
    let vendor_header_name = ctx.gate.vendor_header.as_deref();
    for (name, value) in &parts.headers {
        if NOT_FORWARDED.contains(name) || Some(name.as_str()) == vendor_header_name {
            continue;
        }
        push_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::Length(n) => push_field(&mut head, b"Content-Length", n.to_string().as_bytes()),
        Framing::Chunked => push_field(&mut head, b"Transfer-Encoding", b"chunked"),
        _ => {}
    }
    if let Some(value) = vendor.proxy_authorization(client_authorization.as_deref()) {
        push_field(&mut head, b"Proxy-Authorization", value.as_bytes());
    }
    head.extend_from_slice(b"\r\n");

    let kind = if parts.method == Method::HEAD {
        RequestKind::Head
    } else {
        RequestKind::Other
    };
    let replayable = framing == Framing::Empty && message::idempotent(&method);
    let mut body = Some(body);
    let mut retried = false;
    loop {
        let mut vendor_conn = match ctx
            .vendors
            .http_connection(vendor, &target, exchange.attribution())
            .await
        {
            Ok(c) => c,
            Err(error) => {
                exchange.failed(&error);
                return answer(error.failure, Some(vendor.name.as_str()));
            }
        };
        let attempt = match &body {
            Some(RequestBody::InHand(data)) => Some(RequestBody::InHand(data.clone())),
            _ => body.take(),
        };
        let sent = send(
            &ctx,
            &mut vendor_conn,
            &head,
            attempt,
            framing,
            kind,
            &guard,
        )
        .await;
        match sent {
            Ok(Sent {
                head: response,
                buf,
                upload_done,
            }) => {
                if response.status == 407 && !vendor.is_direct() {
                    drop(vendor_conn);
                    let failure = Failure::Upstream(UpstreamErrorReason::VendorAuth);
                    exchange.failed(&failure.into());
                    return answer(failure, Some(vendor.name.as_str()));
                }
                exchange.responded(response.status);
                return respond(ResponseParts {
                    ctx: ctx.clone(),
                    vendor: vendor_index,
                    key: vendor.pool_key(&target),
                    conn: vendor_conn,
                    exchange,
                    guard,
                    raw: buf,
                    head: response,
                    reusable_request: upload_done,
                });
            }
            Err(Failed { error, stale }) => {
                if stale && vendor_conn.reused && replayable && !retried {
                    retried = true;
                    drop(vendor_conn);
                    continue;
                }
                drop(vendor_conn);
                exchange.failed(&error);
                if error.failure == Failure::ClientGone {
                    return Response::new(empty());
                }
                return answer(error.failure, Some(vendor.name.as_str()));
            }
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response head received.
struct Sent {
    head: pt_sniff::http1::ResponseHead,
    /// The head and whatever of the body arrived with it.
    buf: BytesMut,
    /// The request body went out whole (the connection may be reused).
    upload_done: bool,
}

/// A failed send; `stale` when nothing came back on a connection the vendor had closed.
struct Failed {
    error: Error,
    stale: bool,
}

/// Sends the head and the body (side by side with waiting for the response head, so that an
/// early answer is heard), and reads the response head.
async fn send(
    ctx: &Context,
    conn: &mut VendorConn,
    head: &[u8],
    body: Option<RequestBody>,
    framing: Framing,
    kind: RequestKind,
    guard: &StreamGuard,
) -> Result<Sent, Failed> {
    let stream = &mut conn.stream;
    let (read, write) = (&mut stream.read, &mut stream.write);
    let reset = |e: io::Error| Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e);
    let upload = async {
        match body {
            None => write.write_all(head).await.map_err(reset)?,
            Some(RequestBody::InHand(data)) => message::write_two(write, head, &data)
                .await
                .map_err(reset)?,
            Some(RequestBody::Streaming { first, rest }) => {
                let chunked = framing == Framing::Chunked;
                write.write_all(head).await.map_err(reset)?;
                write_data(write, &first, chunked).await.map_err(reset)?;
                upload(rest, write, chunked, guard).await?;
            }
        }
        Ok::<(), Error>(())
    };
    let deadline = Instant::now() + ctx.vendors.response_timeout;
    // The head, or the error with whether anything at all came back.
    let response = async {
        let mut buf = BytesMut::new();
        loop {
            match vendor::read_response_head(read, &mut buf, kind, vendor::RESPONSE_READ).await {
                Ok(head) if head.interim => buf.advance(head.len),
                Ok(head) => return Ok((head, buf)),
                Err(error) => return Err((error, buf.is_empty())),
            }
        }
    };
    let response = tokio::time::timeout_at(deadline, response);
    tokio::pin!(upload, response);
    let mut upload_done = false;
    loop {
        tokio::select! {
            uploaded = &mut upload, if !upload_done => match uploaded {
                Ok(()) => upload_done = true,
                // The vendor stopped reading: its answer may still come.
                Err(error) if error.failure == Failure::Upstream(UpstreamErrorReason::Reset) => {
                    upload_done = true;
                }
                Err(error) => return Err(Failed { error, stale: false }),
            },
            head = &mut response => {
                guard.moved();
                return match head {
                    Ok(Ok((head, buf))) => Ok(Sent { head, buf, upload_done }),
                    Ok(Err((error, nothing))) => Err(Failed {
                        stale: nothing && error.failure == Failure::Upstream(UpstreamErrorReason::Reset),
                        error,
                    }),
                    Err(_) => Err(Failed {
                        error: Failure::Upstream(UpstreamErrorReason::Timeout).into(),
                        stale: false,
                    }),
                };
            }
        }
    }
}

/// Largest request body read whole before the request goes to the vendor. Crawler uploads
/// (form posts, API calls) fit; a larger body streams.
const MAX_BODY_IN_HAND: usize = 64 * 1024;

/// An HTTP/2 request body, as the vendor will get it.
enum RequestBody {
    /// All of it (perhaps nothing).
    InHand(Bytes),
    /// The first part, and the stream of the rest.
    Streaming { first: Bytes, rest: Incoming },
}

/// Reads the body while it fits in hand; refuses trailers no trailer section may carry.
async fn gather(mut body: Incoming, guard: &StreamGuard) -> Result<RequestBody, Error> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // The HTTP/2 layer reset the stream (a length mismatch, say): the client gets no answer.
        let frame = frame.map_err(|e| Error::new(Failure::ClientGone, io::Error::other(e)))?;
        guard.moved();
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > MAX_BODY_IN_HAND {
                    return Ok(RequestBody::Streaming {
                        first: data.freeze(),
                        rest: body,
                    });
                }
            }
            Err(frame) => check_trailers(frame)?,
        }
    }
    Ok(RequestBody::InHand(data.freeze()))
}

/// Trailers are not forwarded; ones that carry fields a trailer section may not, or that are
/// empty (only pseudo-headers, which the HTTP/2 layer drops), make the request malformed.
fn check_trailers(frame: Frame<Bytes>) -> Result<(), Failure> {
    match frame.into_trailers() {
        Ok(trailers) if trailers.is_empty() || trailers.keys().any(forbidden_in_trailers) => {
            Err(Failure::Rejected(RejectReason::BadRequest))
        }
        _ => Ok(()),
    }
}

/// Writes a piece of body data: as is, or as one chunk.
async fn write_data<W: AsyncWrite + Unpin>(
    to: &mut W,
    data: &[u8],
    chunked: bool,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if chunked {
        let size = format!("{:x}\r\n", data.len());
        message::write_two(to, size.as_bytes(), data).await?;
        to.write_all(b"\r\n").await
    } else {
        to.write_all(data).await
    }
}

/// Writes the rest of an HTTP/2 request body to the vendor: as is (with its `content-length`)
/// or chunked, ending a chunked body with its last chunk.
async fn upload<W: AsyncWrite + Unpin>(
    mut body: Incoming,
    to: &mut W,
    chunked: bool,
    guard: &StreamGuard,
) -> Result<(), Error> {
    let reset = |e: io::Error| Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::new(Failure::ClientGone, io::Error::other(e)))?;
        guard.moved();
        match frame.into_data() {
            Ok(data) => write_data(to, &data, chunked).await.map_err(reset)?,
            Err(frame) => check_trailers(frame)?,
        }
    }
    if chunked {
        to.write_all(b"0\r\n\r\n").await.map_err(reset)?;
    }
    Ok(())
}

/// What a response is built from.
struct ResponseParts {
    ctx: Arc<Context>,
    vendor: VendorIndex,
    key: PoolKey,
    conn: VendorConn,
    exchange: Exchange,
    guard: StreamGuard,
    raw: BytesMut,
    head: pt_sniff::http1::ResponseHead,
    reusable_request: bool,
}

/// The client's response: the vendor's status and fields (without hop-by-hop ones), its body
/// decoded from its HTTP/1.1 framing.
fn respond(mut parts: ResponseParts) -> Response<ResponseBody> {
    let raw = parts.raw.split_to(parts.head.len);
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut storage);
    let _ = parsed.parse(&raw);
    let mut response = Response::new(empty());
    *response.status_mut() =
        StatusCode::from_u16(parts.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    // As to an HTTP/1.1 client, and without `Transfer-Encoding`: DATA frames carry the body.
    for (name, value, kind) in message::forwarded_response_fields(parsed.headers) {
        if kind == FieldKind::TransferEncoding {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            response.headers_mut().append(name, value);
        }
    }
    let keeps_alive = parts.head.keep_alive && parts.head.framing != Framing::UntilClose;
    let body = VendorBody {
        conn: Some(parts.conn),
        buf: parts.raw,
        body: Body::new(parts.head.framing),
        reusable: keeps_alive && parts.reusable_request,
        quiet_limit: parts.ctx.limits.client_idle_timeout,
        quiet: None,
        moved: false,
        pool: Some((parts.ctx, parts.vendor, parts.key)),
        exchange: Some(parts.exchange),
        guard: parts.guard,
        finished: false,
    };
    *response.body_mut() = body.boxed_unsync();
    response
}

/// A response body read from the vendor connection and decoded into DATA frames.
struct VendorBody {
    /// Declared before the exchange: dropped first, so bytes unread at close are in its line.
    conn: Option<VendorConn>,
    buf: BytesMut,
    body: Body,
    reusable: bool,
    /// How long the vendor may send nothing while the body waits on it (as for HTTP/1.1, an
    /// exchange on which nothing moved for `limits.client_idle_timeout`): the stream is reset,
    /// the connection's other streams go on.
    quiet_limit: Duration,
    /// The timer of that wait, armed when a read first waits on the vendor and moved on when
    /// one waits again after bytes moved (`moved`).
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
    pool: Option<(Arc<Context>, VendorIndex, PoolKey)>,
    exchange: Option<Exchange>,
    guard: StreamGuard,
    finished: bool,
}

/// Bytes reserved per read of a response body.
const BODY_READ: usize = 16 * 1024;

impl VendorBody {
    /// Ends the body: the connection back to its pool when in step, the exchange recorded.
    fn finish(&mut self, error: Option<Error>) {
        self.finished = true;
        let conn = self.conn.take();
        if let (Some(mut conn), None, true, true, Some((ctx, vendor, key))) = (
            conn,
            &error,
            self.reusable,
            self.buf.is_empty(),
            self.pool.take(),
        ) {
            conn.reused = true;
            ctx.vendors.list[vendor].pool.checkin(key, conn);
        }
        if let (Some(exchange), Some(error)) = (&mut self.exchange, &error) {
            exchange.failed(error);
        }
        self.exchange = None;
    }
}

impl HttpBody for VendorBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            while !this.buf.is_empty() && !this.body.is_done() {
                let run = usize::try_from(this.body.opaque_run()).unwrap_or(usize::MAX);
                if run > 0 {
                    let data = this.buf.split_to(run.min(this.buf.len())).freeze();
                    let _ = this.body.advance(&data);
                    // Asked for more: the client's window had room for the last.
                    this.guard.moved();
                    this.moved = true;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match this.body.advance_framing(&this.buf) {
                    Ok(n) => this.buf.advance(n),
                    Err(_) => {
                        this.finish(Some(
                            Failure::Upstream(UpstreamErrorReason::Protocol).into(),
                        ));
                        return Poll::Ready(Some(Err(io::ErrorKind::InvalidData.into())));
                    }
                }
            }
            if this.body.is_done() {
                this.finish(None);
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < BODY_READ / 2 {
                this.buf.reserve(BODY_READ);
            }
            let read = match tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream.read),
                cx,
                &mut this.buf,
            ) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    // Waiting on the vendor (the client's wait for window is not counted: the
                    // timer moves on after every frame it took).
                    let deadline = Instant::now() + this.quiet_limit;
                    let quiet = match &mut this.quiet {
                        Some(quiet) => {
                            if std::mem::take(&mut this.moved) {
                                quiet.as_mut().reset(deadline);
                            }
                            quiet
                        }
                        None => this
                            .quiet
                            .insert(Box::pin(tokio::time::sleep_until(deadline))),
                    };
                    if quiet.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.finish(Some(Failure::Upstream(UpstreamErrorReason::Timeout).into()));
                    return Poll::Ready(Some(Err(io::ErrorKind::TimedOut.into())));
                }
            };
            match read {
                Ok(0) if this.body.opaque_run() == u64::MAX => {
                    this.finish(None);
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.finish(Some(Failure::Upstream(UpstreamErrorReason::Reset).into()));
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => this.moved = true,
                Err(e) => {
                    let kind = e.kind();
                    this.finish(Some(Error::new(
                        Failure::Upstream(UpstreamErrorReason::Reset),
                        e,
                    )));
                    return Poll::Ready(Some(Err(kind.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.body.is_done() && self.buf.is_empty()
    }
}

impl Drop for VendorBody {
    fn drop(&mut self) {
        if !self.finished && self.body.is_done() && self.buf.is_empty() {
            // A body with nothing to read (HEAD, 204, 304): never polled.
            self.finish(None);
        } else if !self.finished {
            // The client reset the stream before the body ended.
            self.conn = None;
            if let Some(exchange) = &mut self.exchange {
                exchange.failed(&Failure::ClientGone.into());
            }
        }
    }
}
