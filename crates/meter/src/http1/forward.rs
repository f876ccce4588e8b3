//! One absolute-form request, forwarded to its vendor over a keep-alive connection.
//!
//! The request and response pumps run side by side in the connection's task: the request head
//! (rewritten) and body go to the vendor while its response comes back, so a vendor that answers
//! before reading the whole body (a 413, say) is heard. The response head is rewritten, its body
//! forwarded in its own framing; the vendor connection returns to the pool only when both
//! messages ended exactly and the vendor keeps it alive.
//!
//! A vendor may close a kept-alive connection without saying so in its last response. A request
//! sent on a reused connection that got no byte back before the connection closed is sent again,
//! once, on a fresh connection, when it is idempotent and its body is in hand (as nginx and
//! HAProxy do). The failed attempt's bytes stay counted: the vendor saw them.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, BytesMut};
use pt_metrics::labels::{Protocol, RejectReason, UpstreamErrorReason};
use pt_sniff::Host;
use pt_sniff::http1::{Body, Framing, RequestKind};
use pt_sniff::request::{FieldKind, PathRange, RequestHead, RequestTarget, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::message::{self, BodyError, Mode, Outgoing};
use super::{answer, values};
use crate::access_log::redact_target;
use crate::activity::{Activity, Touching};
use crate::context::Context;
use crate::exchange::{Exchange, Side};
use crate::failure::Outcome;
use crate::failure::{Error, Failure};
use crate::lifecycle::{self, Admitted, ConnInfo, Request, Route};
use crate::vendor::{self, Vendor, VendorConn};

/// How one attempt ended.
enum Attempt {
    /// The response arrived whole; `tail`, its last bytes, is still to be written to the client
    /// (after the vendor connection is back in its pool).
    Done {
        vendor_reusable: bool,
        keep_client: bool,
        tail: Tail,
    },
    /// The vendor closed a reused connection before answering anything: worth one retry.
    Stale(Error),
    /// Failed; `answered` tells whether the client already has a response head.
    Failed { error: Error, answered: bool },
    /// The meter's grace period ended while the exchange ran.
    Stopped,
}

/// The end of a response, held back until the vendor connection is back in its pool: the head
/// when the whole response came in its first read, and the body's last piece (split off the
/// read buffer, not copied).
#[derive(Default)]
struct Tail {
    head: Vec<u8>,
    body: BytesMut,
}

/// A client connection's response timeout: one timer for the connection's life, created at its
/// first request and re-armed for each one after. Each re-arm moves it later, so the runtime's
/// timer wheel never needs waking for it; a fresh timer per request, earlier than every other
/// timer, woke the runtime's driver (an `eventfd` write and a turn of the event loop) on every
/// request.
#[derive(Debug, Default)]
pub struct ResponseTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ResponseTimer {
    /// Arms the timer to go off at `deadline`.
    fn arm(&mut self, deadline: Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().reset(deadline);
        sleep.as_mut()
    }
}

/// Forwards one request; returns whether the client connection stays open for the next.
pub async fn forward(
    ctx: &Context,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    conn: &ConnInfo,
    timer: &mut ResponseTimer,
) -> bool {
    let RequestTarget::Absolute {
        authority,
        explicit_port,
        path,
    } = &head.target
    else {
        return false;
    };
    // Borrowed from the head where they can be: the request's strings are read, not kept.
    let method = String::from_utf8_lossy(&buf[head.method.clone()]);
    let replayable_method = message::idempotent(&method);
    let kind = if method == "HEAD" {
        RequestKind::Head
    } else {
        RequestKind::Other
    };
    let path_text = match path {
        PathRange::Root => Cow::Borrowed("/"),
        PathRange::In(range) => String::from_utf8_lossy(&buf[range.clone()]),
        PathRange::Query(range) => {
            Cow::Owned(format!("/{}", String::from_utf8_lossy(&buf[range.clone()])))
        }
    };
    let host = match &authority.host {
        Host::Name(name) if !*explicit_port => Cow::Borrowed(&**name),
        _ if *explicit_port => Cow::Owned(authority.to_string()),
        other => Cow::Owned(other.to_string()),
    };
    let authorization = values(buf, head, FieldKind::ProxyAuthorization, None);
    let vendor_header = match &ctx.gate.vendor_header {
        Some(name) => values(buf, head, FieldKind::Other, Some(name)),
        None => Vec::new(),
    };
    let request = Request {
        protocol: Protocol::Http1,
        method: &method,
        target: authority,
        route: Route::Proxy {
            proxy_authorization: &authorization,
            vendor_header: &vendor_header,
        },
        url: Some(redact_target(&host, &path_text)),
    };
    // A refused request without a body leaves the connection in step; with one, it closes.
    let no_body = head.framing == Framing::Empty;
    let admitted = lifecycle::admit(&ctx.gate, &ctx.metering, &ctx.vendors, conn, request);
    let Admitted {
        vendor,
        mut exchange,
        client_authorization,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            let keep = no_body && head.keep_alive;
            let vendor = refused.vendor.as_ref().map(|v| v.as_str());
            answer(client, refused.failure, vendor, !keep).await;
            buf.advance(head.len);
            return keep;
        }
    };
    let target: [&[u8]; 3] = if vendor.is_direct() {
        [b"", b"", path_text.as_bytes()]
    } else {
        [b"http://", host.as_bytes(), path_text.as_bytes()]
    };
    let vendor_authorization = vendor.proxy_authorization(client_authorization.as_deref());
    let out = message::request_head(
        buf,
        head,
        &Outgoing {
            target: &target,
            host: host.as_bytes(),
            drop: ctx.gate.vendor_header.as_deref(),
            authorization: vendor_authorization.as_ref().map(|v| v.as_bytes()),
        },
    );
    buf.advance(head.len);
    let in_hand = body_in_hand(head.framing, buf);
    let replayable = replayable_method && in_hand.is_some();
    let plan = Plan {
        out: &out,
        framing: head.framing,
        in_hand,
        kind,
        client_keep_alive: head.keep_alive && head.version == Version::Http11,
        http10: head.version == Version::Http10,
        direct: vendor.is_direct(),
    };
    let mut retried = false;
    loop {
        let mut vendor_conn = match ctx
            .vendors
            .http_connection(vendor, authority, exchange.attribution())
            .await
        {
            Ok(c) => c,
            Err(error) => {
                exchange.failed(&error);
                let keep = no_body && head.keep_alive;
                answer(client, error.failure, Some(vendor.name.as_str()), !keep).await;
                return keep;
            }
        };
        if head.expect_continue && !retried && client.write_all(CONTINUE).await.is_err() {
            exchange.failed(&Failure::ClientGone.into());
            return false;
        }
        let attempt = once(
            ctx,
            client,
            buf,
            &plan,
            &mut vendor_conn,
            &mut exchange,
            timer,
        )
        .await;
        match attempt {
            Attempt::Done {
                vendor_reusable,
                keep_client,
                tail,
            } => {
                if vendor_reusable {
                    vendor_conn.reused = true;
                    vendor.pool.checkin(vendor.pool_key(authority), vendor_conn);
                } else {
                    drop(vendor_conn);
                }
                if let Err(e) = message::write_two(client, &tail.head, &tail.body).await {
                    exchange.failed(&Error::new(Failure::ClientGone, e));
                    return false;
                }
                return keep_client;
            }
            Attempt::Stale(error) if replayable && !retried => {
                tracing::debug!(vendor = %vendor.name, %error, "retrying on a fresh connection");
                drop(vendor_conn);
                retried = true;
            }
            Attempt::Stale(error) => {
                return fail(client, vendor, vendor_conn, exchange, error, false).await;
            }
            Attempt::Stopped => {
                drop(vendor_conn);
                exchange.ended_by(Outcome::Shutdown);
                return false;
            }
            Attempt::Failed { error, answered } => {
                return fail(client, vendor, vendor_conn, exchange, error, answered).await;
            }
        }
    }
}

/// Closes the vendor connection (counting what it still holds), records the failure and
/// answers the client when it has no response yet. Returns whether the client connection stays.
async fn fail(
    client: &mut TcpStream,
    vendor: &Vendor,
    vendor_conn: VendorConn,
    mut exchange: Exchange,
    error: Error,
    answered: bool,
) -> bool {
    drop(vendor_conn);
    exchange.failed(&error);
    drop(exchange);
    if answered || error.failure == Failure::ClientGone {
        return false;
    }
    answer(client, error.failure, Some(vendor.name.as_str()), true).await;
    false
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What one attempt sends and how.
struct Plan<'a> {
    out: &'a [u8],
    framing: Framing,
    /// The length of the body when all of it is already in the buffer.
    in_hand: Option<usize>,
    kind: RequestKind,
    client_keep_alive: bool,
    http10: bool,
    direct: bool,
}

/// The length of the body when the buffer already holds all of it.
fn body_in_hand(framing: Framing, buf: &[u8]) -> Option<usize> {
    let mut body = Body::new(framing);
    let progress = body.advance(buf).ok()?;
    progress.done.then_some(progress.consumed)
}

/// How the request pump ended.
enum Up {
    /// The request went out and the client sent more (its next request).
    Sent,
    /// The request went out and then the client closed its connection.
    ClientClosed,
    Failed(Error),
}

/// Sends the request and relays the response, once.
async fn once(
    ctx: &Context,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    plan: &Plan<'_>,
    vendor_conn: &mut VendorConn,
    exchange: &mut Exchange,
    timer: &mut ResponseTimer,
) -> Attempt {
    let reused = vendor_conn.reused;
    // When bytes last moved on each side: an exchange on which nothing moved for the idle
    // timeout is blamed on the side that went quiet first (a client that stopped reading or
    // sending, or a vendor that stopped answering).
    let (client_clock, vendor_clock) =
        (Arc::new(Activity::default()), Arc::new(Activity::default()));
    let (client_read, client_write) = client.split();
    let mut client_read = Touching::new(client_read, client_clock.clone());
    let mut client_write = Touching::new(client_write, client_clock.clone());
    let vendor_read = &mut Touching::new(&mut vendor_conn.stream.read, vendor_clock.clone());
    let vendor_write = &mut Touching::new(&mut vendor_conn.stream.write, vendor_clock.clone());
    let mut received_any = false;
    // Whether the response head went to the client (written by the response pump).
    let answered = AtomicBool::new(false);
    let request_sent = RequestSent::default();
    let idle = ctx.limits.client_idle_timeout;
    let (result, up_result) = {
        let up = async {
            let sending = async {
                let mut body = Body::new(plan.framing);
                let first = plan.in_hand.unwrap_or(buf.len());
                if body.advance(&buf[..first]).is_err() {
                    return Err(Failure::Rejected(RejectReason::BadFraming).into());
                }
                message::write_two(vendor_write, plan.out, &buf[..first])
                    .await
                    .map_err(|e| Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e))?;
                if body.is_done() {
                    return Ok(());
                }
                buf.clear();
                message::forward_body(
                    &mut body,
                    buf,
                    &mut client_read,
                    vendor_write,
                    Mode::AsIs,
                    None,
                )
                .await
                .map_err(|error| match error {
                    BodyError::Framing => Failure::Rejected(RejectReason::BadFraming).into(),
                    BodyError::Source(cause) => Error {
                        failure: Failure::ClientGone,
                        cause,
                    },
                    BodyError::Sink(e) => {
                        Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e)
                    }
                })
            };
            if let Err(error) = sending.await {
                return Up::Failed(error);
            }
            request_sent.done();
            // Until the answer is in, a client that closes its connection has gone away (as
            // nginx sees it); bytes of a pipelined next request end the watch, unread.
            let mut byte = [0u8; 1];
            match client_read.get_mut().peek(&mut byte).await {
                Ok(0) | Err(_) => Up::ClientClosed,
                Ok(_) => Up::Sent,
            }
        };

        let down = async {
            let mut rbuf = BytesMut::new();
            // The response timeout runs from when the whole request has left: a vendor is not
            // expected to answer a request still arriving.
            let mut timeout: Option<Pin<&mut Sleep>> = None;
            let head = loop {
                let read = {
                    let reading = vendor::read_response_head(
                        vendor_read,
                        &mut rbuf,
                        plan.kind,
                        vendor::RESPONSE_READ,
                    );
                    tokio::pin!(reading);
                    loop {
                        tokio::select! {
                            read = &mut reading => break read,
                            () = request_sent.notify.notified(), if timeout.is_none() => {
                                let deadline = Instant::now() + ctx.vendors.response_timeout;
                                timeout = Some(timer.arm(deadline));
                            }
                            () = expired(&mut timeout) => {
                                return Err(Failure::Upstream(UpstreamErrorReason::Timeout).into());
                            }
                        }
                    }
                };
                received_any |= !rbuf.is_empty();
                let head = read?;
                if !head.interim {
                    break head;
                }
                // 1xx: passed on to HTTP/1.1 clients (the meter sent its own 100 already).
                if head.status != 100 && !plan.http10 {
                    let raw = rbuf.split_to(head.len);
                    let out = message::response_head(&raw, false, false).unwrap_or_default();
                    client_write
                        .write_all(&out)
                        .await
                        .map_err(|e| Error::new(Failure::ClientGone, e))?;
                } else {
                    rbuf.advance(head.len);
                }
            };
            if head.status == 407 && !plan.direct {
                return Err(Failure::Upstream(UpstreamErrorReason::VendorAuth).into());
            }
            exchange.responded(head.status);
            let raw = rbuf.split_to(head.len);
            let until_close = head.framing == Framing::UntilClose;
            let dechunk = plan.http10 && head.framing == Framing::Chunked;
            let vendor_keeps = head.keep_alive && !until_close;
            let keep_client =
                plan.client_keep_alive && !until_close && !ctx.drain.draining.is_cancelled();
            let out = message::response_head(&raw, !keep_client, dechunk).ok_or(Error::from(
                Failure::Upstream(UpstreamErrorReason::Protocol),
            ))?;
            let mut body = Body::new(head.framing);
            let mut tail = Tail::default();
            if dechunk {
                client_write
                    .write_all(&out)
                    .await
                    .map_err(|e| Error::new(Failure::ClientGone, e))?;
            } else {
                // The head and the start of the body in one write, held back entirely when it is the
                // whole response.
                let progress = body
                    .advance(&rbuf)
                    .map_err(|_| Error::from(Failure::Upstream(UpstreamErrorReason::Protocol)))?;
                if progress.done {
                    tail = Tail {
                        head: out,
                        body: rbuf.split_to(progress.consumed),
                    };
                } else {
                    message::write_two(&mut client_write, &out, &rbuf[..progress.consumed])
                        .await
                        .map_err(|e| Error::new(Failure::ClientGone, e))?;
                    rbuf.advance(progress.consumed);
                }
            }
            answered.store(true, Ordering::Relaxed);
            let mode = if dechunk { Mode::Dechunked } else { Mode::AsIs };
            let held = (!dechunk).then_some(&mut tail.body);
            match message::forward_body(
                &mut body,
                &mut rbuf,
                vendor_read,
                &mut client_write,
                mode,
                held,
            )
            .await
            {
                Ok(()) => {}
                Err(BodyError::Framing) => {
                    return Err(Failure::Upstream(UpstreamErrorReason::Protocol).into());
                }
                Err(BodyError::Source(cause)) => {
                    return Err(Error {
                        failure: Failure::Upstream(UpstreamErrorReason::Reset),
                        cause,
                    });
                }
                Err(BodyError::Sink(e)) => return Err(Error::new(Failure::ClientGone, e)),
            }
            // Bytes past the response's end: the vendor is out of step; not reusable.
            Ok((vendor_keeps && rbuf.is_empty(), keep_client, tail))
        };

        tokio::pin!(up, down);
        let mut up_result: Option<Up> = None;
        let result = loop {
            tokio::select! {
                sent = &mut up, if up_result.is_none() => {
                    match sent {
                        // A failed write to the vendor: its answer (an early 413, say) may follow.
                        Up::Failed(error) if error.failure == Failure::Upstream(UpstreamErrorReason::Reset) => {
                            up_result = Some(Up::Failed(error));
                        }
                        Up::Failed(error) => break Err((error, false)),
                        Up::ClientClosed if !answered.load(Ordering::Relaxed) => {
                            let gone = io::Error::new(io::ErrorKind::ConnectionAborted, "the client closed its connection");
                            break Err((Error::new(Failure::ClientGone, gone), true));
                        }
                        other => up_result = Some(other),
                    }
                }
                received = &mut down => break received.map_err(|e| (e, true)),
                quiet = Activity::stuck_on(&client_clock, &vendor_clock, || request_sent.is_done(), idle) => {
                    let error = match quiet {
                        Side::Client => Error::new(
                            Failure::ClientGone,
                            io::Error::new(io::ErrorKind::TimedOut, "the client went quiet"),
                        ),
                        Side::Vendor => Failure::Upstream(UpstreamErrorReason::Timeout).into(),
                    };
                    break Err((error, true));
                }
                () = ctx.drain.stopped.cancelled() => return Attempt::Stopped,
            }
        };
        (result, up_result)
    };
    // The pumps are done with the buffers and sockets from here on.
    let body_complete = request_sent.is_done();
    let answered = answered.into_inner();
    match result {
        Ok((vendor_keeps, keep_client, tail)) => {
            if !body_complete {
                // The vendor answered before the body was sent: the rest of the client's body
                // is still coming, so neither connection is in step any more.
                return Attempt::Done {
                    vendor_reusable: false,
                    keep_client: false,
                    tail,
                };
            }
            if let Some(len) = plan.in_hand {
                buf.advance(len);
            }
            Attempt::Done {
                vendor_reusable: vendor_keeps,
                keep_client,
                tail,
            }
        }
        Err((error, from_down)) => {
            let upstream_first = matches!(up_result, Some(Up::Failed(_)));
            let stale = reused
                && !received_any
                && matches!(error.failure, Failure::Upstream(UpstreamErrorReason::Reset));
            let error = match (from_down, up_result) {
                // The vendor stopped reading and then answered nothing: its write error says why.
                (true, Some(Up::Failed(up_error))) if !answered && upstream_first => up_error,
                _ => error,
            };
            if stale && !answered {
                Attempt::Stale(error)
            } else {
                Attempt::Failed { error, answered }
            }
        }
    }
}

/// Tells the response pump when the whole request has left.
#[derive(Default)]
struct RequestSent {
    done: AtomicBool,
    notify: Notify,
}

impl RequestSent {
    fn done(&self) {
        self.done.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

/// Resolves when the armed timer goes off; never, unarmed.
async fn expired(timeout: &mut Option<Pin<&mut Sleep>>) {
    match timeout {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
