//! HTTP/1.1 client connections: absolute-form requests and CONNECT, one request at a time.
//!
//! The meter speaks HTTP/1.1 to clients itself rather than through a general-purpose server:
//! it must refuse anything whose framing is not plainly one message before a byte leaves
//! ([`pt_sniff::request`]), forward bodies in their own framing, and hold nothing while a
//! keep-alive connection waits for its next request. Between requests a connection is a socket
//! and a task: no buffer is allocated until the next request's first byte arrives, and the
//! connection's slot may be reclaimed for a new client ([`crate::slots`]).
//!
//! Timeouts: a request head must arrive whole within `limits.header_read_timeout` of its first
//! byte (for a connection's first request, of its accept), however the bytes trickle; a
//! connection waits at most `limits.client_idle_timeout` for its next request.

mod forward;
pub mod message;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pt_metrics::labels::Protocol;
use pt_sniff::request::{
    FieldKind, HeadLimits, RequestError, RequestHead, RequestTarget, parse_request_from,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::activity::Activity;
use crate::context::Context;
use crate::exchange::Exchange;
use crate::failure::Failure;
use crate::failure::Outcome;
use crate::lifecycle::{self, Admitted, ConnInfo, Request, Route};
use crate::relay::Start;
use crate::slots::Slot;
use crate::tunnel;
use crate::vendor::VendorConn;

/// Bytes reserved per read of a request head: a typical head in one read.
pub const HEAD_READ: usize = 4096;
/// How long an answer to a client that is being closed may take to leave.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one HTTP/1.x client connection; `buf` holds the bytes already read from it and
/// `first_deadline` is when its first request head must be complete.
pub async fn serve(
    ctx: Arc<Context>,
    mut stream: TcpStream,
    conn: ConnInfo,
    mut slot: Slot,
    mut buf: BytesMut,
    first_deadline: Instant,
) {
    let limits = HeadLimits {
        max_bytes: ctx.limits.max_header_bytes,
        max_headers: ctx.limits.max_headers,
    };
    let mut deadline = Some(first_deadline);
    let mut response_timer = forward::ResponseTimer::default();
    loop {
        if buf.is_empty() {
            // Between requests a connection holds no buffer.
            buf = BytesMut::new();
            slot.idle();
            let idle_until =
                deadline.unwrap_or_else(|| Instant::now() + ctx.limits.client_idle_timeout);
            tokio::select! {
                ready = stream.readable() => if ready.is_err() { return },
                () = tokio::time::sleep_until(idle_until) => return,
                () = slot.reclaimed() => return,
                () = ctx.drain.draining.cancelled() => return,
            }
        }
        if !slot.busy() {
            return;
        }
        let head_deadline = deadline
            .take()
            .unwrap_or_else(|| Instant::now() + ctx.limits.header_read_timeout);
        let head = tokio::select! {
            read = tokio::time::timeout_at(head_deadline, read_head(&mut stream, &mut buf, limits)) => read,
            () = ctx.drain.stopped.cancelled() => return,
        };
        let head = match head {
            Ok(Ok(Some(head))) => head,
            // The client closed, or its connection failed, between or inside heads.
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                let refused = lifecycle::refuse(
                    &ctx.metering,
                    &conn,
                    Protocol::Http1,
                    "",
                    None,
                    None,
                    Failure::Malformed(error),
                );
                answer(&mut stream, refused.failure, None, true).await;
                return;
            }
            Err(_elapsed) => {
                if !buf.is_empty() {
                    let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.write_all(REQUEST_TIMEOUT))
                        .await;
                }
                return;
            }
        };
        // The exchange's state lives on the heap while it runs: between requests the
        // connection's task is only as large as this loop's own state.
        let keep_alive = match &head.target {
            RequestTarget::Connect(_) => {
                Box::pin(connect(&ctx, stream, buf, &head, &conn, slot)).await;
                return;
            }
            RequestTarget::Absolute { .. } => {
                Box::pin(forward::forward(
                    &ctx,
                    &mut stream,
                    &mut buf,
                    &head,
                    &conn,
                    &mut response_timer,
                ))
                .await
            }
        };
        if !keep_alive || ctx.drain.draining.is_cancelled() {
            return;
        }
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Reads until `buf` holds a complete request head. `Ok(None)`: the client closed or its
/// connection failed first.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, RequestError> {
    let mut scanned = 0;
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_request_from(buf, limits, &mut scanned)?
        {
            return Ok(Some(head));
        }
        buf.reserve(HEAD_READ);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// The values of the fields of `kind`, or of the field named `name` (lower case).
fn values<'b>(
    buf: &'b [u8],
    head: &RequestHead,
    kind: FieldKind,
    name: Option<&str>,
) -> Vec<&'b [u8]> {
    head.fields
        .iter()
        .filter(|f| match name {
            Some(name) => buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()),
            None => f.kind == kind,
        })
        .map(|f| buf[f.value.clone()].trim_ascii())
        .collect()
}

/// Writes the answer to a failed request; `close` adds `Connection: close`.
async fn answer(stream: &mut TcpStream, failure: Failure, vendor: Option<&str>, close: bool) {
    let bytes = answer_bytes(failure, vendor, close);
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.write_all(&bytes)).await;
}

/// The meter's own answer to a failed request: the status, a plain-text explanation, the
/// reason header (and the meter's challenge for a 407 of its own).
pub fn answer_bytes(failure: Failure, vendor: Option<&str>, close: bool) -> Vec<u8> {
    let body = format!("proxy-telemetry: {}\n", failure.explain(vendor));
    let status = failure.status();
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Proxy-Telemetry-Error: {}\r\n",
        body.len(),
        failure.reason()
    );
    if failure.challenges() {
        out.push_str("Proxy-Authenticate: Basic realm=\"proxy-telemetry\"\r\n");
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// `CONNECT host:port`: opens the tunnel through the vendor, answers with the vendor's verdict,
/// then the connection is the tunnel.
async fn connect(
    ctx: &Context,
    mut stream: TcpStream,
    buf: BytesMut,
    head: &RequestHead,
    conn: &ConnInfo,
    mut slot: Slot,
) {
    // The setup's state (admission, the vendor's answer, the client's) is on the heap and gone
    // once the tunnel runs: a tunnel's task holds only what relaying needs.
    let Some(established) = Box::pin(establish(ctx, &mut stream, buf, head, conn)).await else {
        return;
    };
    let activity = Arc::new(Activity::default());
    slot.tunnel(activity.clone());
    // In a block of its own: `stop` borrows the slot until the tunnel ends.
    {
        let stop = std::pin::pin!(async {
            tokio::select! {
                () = ctx.drain.stopped.cancelled() => Outcome::Shutdown,
                () = slot.reclaimed() => Outcome::Idle,
            }
        });
        let (client_read, client_write) = stream.split();
        let (vendor_read, vendor_write, _lease) = established.vendor.into_halves();
        tunnel::run(
            (client_read, client_write),
            (vendor_read, vendor_write),
            established.exchange,
            established.start,
            tunnel::limits(ctx.limits.tunnel_idle_timeout, ctx.limits.sniff_timeout),
            &activity,
            stop,
        )
        .await;
    }
    slot.tunnel_closed();
}

/// A tunnel the vendor accepted and the client was told about.
struct Established {
    vendor: VendorConn,
    exchange: Exchange,
    start: Start,
}

/// Admits the CONNECT, opens the tunnel through the vendor and answers the client; `None` when
/// it was refused or failed (the client has its answer, the outcome is counted).
async fn establish(
    ctx: &Context,
    stream: &mut TcpStream,
    mut buf: BytesMut,
    head: &RequestHead,
    conn: &ConnInfo,
) -> Option<Established> {
    let RequestTarget::Connect(target) = &head.target else {
        return None;
    };
    let authorization = values(&buf, head, FieldKind::ProxyAuthorization, None);
    let vendor_header = match &ctx.gate.vendor_header {
        Some(name) => values(&buf, head, FieldKind::Other, Some(name)),
        None => Vec::new(),
    };
    let request = Request {
        protocol: Protocol::Connect,
        method: "CONNECT",
        target,
        route: Route::Proxy {
            proxy_authorization: &authorization,
            vendor_header: &vendor_header,
        },
        url: None,
    };
    let admitted = lifecycle::admit(&ctx.gate, &ctx.metering, &ctx.vendors, conn, request);
    let Admitted {
        vendor,
        mut exchange,
        client_authorization,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            let vendor = refused.vendor.as_ref().map(|v| v.as_str());
            answer(stream, refused.failure, vendor, true).await;
            return None;
        }
    };
    buf.advance(head.len);
    let opened = ctx
        .vendors
        .open_tunnel(
            vendor,
            target,
            exchange.attribution().clone(),
            client_authorization.as_deref(),
        )
        .await;
    let (vendor_conn, leftover) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            exchange.failed(&error);
            drop(exchange);
            answer(stream, error.failure, Some(vendor.name.as_str()), true).await;
            return None;
        }
    };
    exchange.responded(200);
    if stream.write_all(ESTABLISHED).await.is_err() {
        exchange.failed(&Failure::ClientGone.into());
        return None;
    }
    Some(Established {
        vendor: vendor_conn,
        exchange,
        start: Start::copied(&buf, &leftover),
    })
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
