//! HTTP/1.1 proxy traffic between a crawler and its vendor, relayed unchanged and metered per
//! request.
//!
//! Two pumps run side by side. The request pump reads each request head whole (bounded by
//! `limits.max_header_bytes`), creates its [`Exchange`], points the vendor socket's sent bytes at
//! it, queues it for the response pump, then forwards the head and follows the body to its end.
//! The response pump takes the next queued exchange, points the received bytes at it, reads the
//! response head (after any 1xx), counts the exchange with its status and follows the body. So
//! every byte belongs to its own request even when the crawler pipelines.
//!
//! Reading from the vendor, the meter never takes a byte past the end of the current response:
//! each read is preceded by a peek that shows where the response ends ([`Responses`]). Reads are
//! counted toward whatever exchange the connection points at, so a read that crossed into the
//! next (pipelined) response would count its first bytes toward the previous request.
//!
//! A CONNECT waits for the vendor's verdict before anything else is read from the crawler: on a
//! 2xx both pumps hand their halves over to the tunnel relay ([`crate::tunnel::run`], which sniffs
//! SNI and ALPN as for the meter's own tunnels); otherwise the crawler may send its next request.
//! Whatever the meter cannot follow (a malformed or oversized head, ambiguous framing, an
//! origin-form request, bytes the vendor sends unasked, a protocol switch) ends interpretation in
//! that direction: the rest is relayed as bytes, still counted, just no longer per request.

use std::io;

use bytes::BytesMut;
use pt_metrics::labels::{Protocol, UpstreamErrorReason};
use pt_sniff::http1::{
    Body, Framing, RequestKind, ResponseHead, Target, parse_request_head, parse_response_head,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{Captured, ClientRead, ClientWrite, Inbound, VendorRead, VendorWrite};
use crate::exchange::Exchange;
use crate::relay::{self, Start};

/// Requests sent ahead of their responses (pipelining) that are followed; past it the request
/// pump waits for responses, which slows only a crawler that pipelines that deep.
const MAX_IN_FLIGHT: usize = 16;

/// A request sent to the vendor, waiting for its response.
struct InFlight {
    exchange: Exchange,
    kind: RequestKind,
    /// For CONNECT: told whether the vendor opened the tunnel.
    verdict: Option<oneshot::Sender<bool>>,
}

/// How the request pump ended.
enum RequestsEnd {
    Closed,
    /// The vendor accepted a CONNECT: the crawler's read half, with the bytes it sent early.
    Tunnel {
        client: Inbound<ClientRead>,
        vendor: VendorWrite,
    },
}

/// How the response pump ended.
enum ResponsesEnd {
    Closed,
    /// The vendor accepted a CONNECT; its head is consumed, nothing after it.
    Tunnel {
        exchange: Box<Exchange>,
        vendor: Responses,
        client: ClientWrite,
    },
}

/// Relays a captured connection on which the crawler speaks HTTP/1.x to its vendor; `first` is
/// what the crawler has sent so far.
pub(super) async fn relay(
    captured: &Captured,
    (client_read, client_write): (ClientRead, ClientWrite),
    (vendor_read, vendor_write): (VendorRead, VendorWrite),
    first: BytesMut,
) {
    let (queue, queued) = mpsc::channel(MAX_IN_FLIGHT);
    let pumps = tokio::try_join!(
        requests(
            captured,
            Inbound::new(client_read, first),
            vendor_write,
            queue
        ),
        responses(captured, Responses::new(vendor_read), client_write, queued),
    );
    if let Ok((
        RequestsEnd::Tunnel {
            client,
            vendor: vendor_write,
        },
        ResponsesEnd::Tunnel {
            exchange,
            vendor,
            client: client_write,
        },
    )) = pumps
    {
        // The response reader peeks, so nothing of the vendor's is buffered here. The client's
        // read buffer is let go before the tunnel: it must not live as long as the tunnel.
        let start = Start::copied(&client.buf, &[]);
        drop(client.buf);
        captured
            .open_tunnel(
                *exchange,
                (client.io, client_write),
                (vendor.io, vendor_write),
                start,
            )
            .await;
    }
}

async fn requests(
    captured: &Captured,
    mut client: Inbound<ClientRead>,
    mut vendor: VendorWrite,
    queue: mpsc::Sender<InFlight>,
) -> io::Result<RequestsEnd> {
    let max_head = captured.ctx.limits.max_header_bytes;
    loop {
        let head = match client.head(|buf| parse_request_head(buf, max_head)).await {
            Ok(Some(head)) => head,
            Err(Some(error)) => return Err(error),
            // The end of the stream (perhaps inside a head), or a head not understood.
            Ok(None) | Err(None) => break,
        };
        let (protocol, target) = match &head.target {
            Target::Absolute(target) => (Protocol::Http1, target),
            Target::Connect(target) => (Protocol::Connect, target),
            Target::Other => break,
        };
        let url = (protocol == Protocol::Http1)
            .then(|| head.path.parse::<http::Uri>().ok())
            .flatten()
            .map(|uri| crate::access_log::redact_uri(&uri));
        let Some(exchange) = captured.exchange(protocol, target, &head.method, url) else {
            break;
        };
        vendor.attribute_to(exchange.attribution().clone());
        let (verdict, verdict_rx) = match head.kind() {
            RequestKind::Connect => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let in_flight = InFlight {
            exchange,
            kind: head.kind(),
            verdict,
        };
        // Queued before its first byte leaves, so its response always finds it.
        if queue.send(in_flight).await.is_err() {
            break;
        }
        client.forward(head.len, &mut vendor).await?;
        if let Some(verdict) = verdict_rx {
            match verdict.await {
                Ok(true) => return Ok(RequestsEnd::Tunnel { client, vendor }),
                Ok(false) => continue,
                Err(_) => break,
            }
        }
        match forward_body(Body::new(head.framing), &mut client, &mut vendor).await? {
            BodyEnd::Complete => {}
            BodyEnd::Eof => {
                let _ = vendor.shutdown().await;
                return Ok(RequestsEnd::Closed);
            }
            BodyEnd::NotUnderstood => break,
        }
    }
    // From here on the crawler's bytes are relayed uninterpreted.
    drop(queue);
    client.forward_rest(&mut vendor, &captured.activity).await?;
    Ok(RequestsEnd::Closed)
}

async fn responses(
    captured: &Captured,
    mut vendor: Responses,
    mut client: ClientWrite,
    mut queued: mpsc::Receiver<InFlight>,
) -> io::Result<ResponsesEnd> {
    let max_head = captured.ctx.limits.max_header_bytes;
    loop {
        // The next request, or (with none in flight) bytes the vendor sends unasked, or its close.
        let next = tokio::select! {
            biased;
            next = queued.recv() => next,
            arrived = vendor.peek() => {
                if arrived? == 0 {
                    let _ = client.shutdown().await;
                    return Ok(ResponsesEnd::Closed);
                }
                None
            }
        };
        // Bytes nobody asked for, or the request side stopped interpreting.
        let Some(mut in_flight) = next else { break };
        vendor
            .io
            .attribute_to(in_flight.exchange.attribution().clone());
        let head = loop {
            match vendor.head(in_flight.kind, max_head, &mut client).await {
                Ok(Some(head)) if head.interim => continue,
                Ok(Some(head)) => break head,
                Ok(None) => {
                    abandon(in_flight, queued, UpstreamErrorReason::Reset);
                    let _ = client.shutdown().await;
                    return Ok(ResponsesEnd::Closed);
                }
                Err(None) => {
                    abandon(in_flight, queued, UpstreamErrorReason::Protocol);
                    vendor.forward_rest(&mut client, captured).await?;
                    return Ok(ResponsesEnd::Closed);
                }
                Err(Some(error)) => {
                    abandon(in_flight, queued, UpstreamErrorReason::Reset);
                    return Err(error);
                }
            }
        };
        in_flight.exchange.responded(head.status);
        let tunnel = head.framing == Framing::Tunnel;
        if let Some(verdict) = in_flight.verdict.take() {
            let _ = verdict.send(tunnel);
        }
        if tunnel && in_flight.kind == RequestKind::Connect {
            return Ok(ResponsesEnd::Tunnel {
                exchange: Box::new(in_flight.exchange),
                vendor,
                client,
            });
        } else if tunnel {
            // 101 Switching Protocols: what follows is not HTTP.
            break;
        }
        match vendor.body(Body::new(head.framing), &mut client).await? {
            // The exchange is dropped here, writing its access-log line with every byte.
            BodyEnd::Complete => {}
            BodyEnd::Eof => {
                let _ = client.shutdown().await;
                return Ok(ResponsesEnd::Closed);
            }
            BodyEnd::NotUnderstood => break,
        }
    }
    vendor.forward_rest(&mut client, captured).await?;
    Ok(ResponsesEnd::Closed)
}

/// Smallest and largest peek buffer: a typical head in one peek; a quarter of a default socket
/// receive buffer for large bodies. It doubles whenever a peek fills it.
const PEEK_MIN: usize = 4 * 1024;
const PEEK_MAX: usize = 64 * 1024;

/// The vendor's side of a captured connection, consumed one response at a time; see the module
/// documentation.
pub(super) struct Responses {
    io: VendorRead,
    /// What the last peek showed (not yet consumed).
    peeked: Vec<u8>,
    /// The consumed (and forwarded) bytes of a head still incomplete.
    head: Vec<u8>,
}

impl Responses {
    fn new(io: VendorRead) -> Responses {
        Responses {
            io,
            peeked: Vec::new(),
            head: Vec::new(),
        }
    }

    /// Looks at what has arrived without consuming it, waiting for at least one byte; 0 at the
    /// end of the stream.
    async fn peek(&mut self) -> io::Result<usize> {
        self.grow();
        let n = self.io.get_mut().peek(&mut self.peeked).await?;
        self.peeked.truncate(n);
        Ok(n)
    }

    /// Sizes the buffer: it starts small and doubles, up to a bound, while reads fill it.
    fn grow(&mut self) {
        let size = match self.peeked.capacity() {
            0 => PEEK_MIN,
            c if self.peeked.len() == c => (c * 2).min(PEEK_MAX),
            c => c,
        };
        self.peeked.resize(size, 0);
    }

    /// Reads (the read counts them) and forwards at most `limit` bytes, without peeking: for
    /// bytes known to belong to the current body. 0 at the end of the stream.
    async fn pass<W: AsyncWrite + Unpin>(&mut self, limit: u64, to: &mut W) -> io::Result<usize> {
        self.grow();
        let len = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(self.peeked.len());
        let n = self.io.read(&mut self.peeked[..len]).await?;
        self.peeked.truncate(n);
        to.write_all(&self.peeked).await?;
        Ok(n)
    }

    /// Consumes the first `n` peeked bytes (the read counts them) and forwards them.
    async fn take<W: AsyncWrite + Unpin>(&mut self, n: usize, to: &mut W) -> io::Result<()> {
        // The read returns exactly the bytes the peek showed, into the same place.
        self.io.read_exact(&mut self.peeked[..n]).await?;
        to.write_all(&self.peeked[..n]).await
    }

    /// Consumes and forwards the next response head. `Ok(None)`: the stream ended first;
    /// `Err(None)`: not understood.
    async fn head<W: AsyncWrite + Unpin>(
        &mut self,
        kind: RequestKind,
        max_head: usize,
        to: &mut W,
    ) -> Result<Option<ResponseHead>, Option<io::Error>> {
        loop {
            if self.peek().await.map_err(Some)? == 0 {
                return Ok(None);
            }
            let joined;
            let view: &[u8] = if self.head.is_empty() {
                &self.peeked
            } else {
                joined = [self.head.as_slice(), &self.peeked].concat();
                &joined
            };
            match parse_response_head(view, max_head, kind) {
                Ok(Some(head)) => {
                    let rest = head.len - self.head.len();
                    self.head.clear();
                    self.take(rest, to).await.map_err(Some)?;
                    return Ok(Some(head));
                }
                Ok(None) => {
                    // All of it belongs to this head: take it and wait for more.
                    let n = self.peeked.len();
                    self.head.extend_from_slice(&self.peeked);
                    self.take(n, to).await.map_err(Some)?;
                }
                Err(_) => return Err(None),
            }
        }
    }

    /// Consumes and forwards a body, exactly to its last byte.
    async fn body<W: AsyncWrite + Unpin>(
        &mut self,
        mut body: Body,
        to: &mut W,
    ) -> io::Result<BodyEnd> {
        while !body.is_done() {
            // Data the framing has announced is read directly, one copy, never past its end;
            // only framing (chunk sizes, trailers) is peeked before it is consumed.
            let run = body.opaque_run();
            if run > 0 {
                let n = self.pass(run, to).await?;
                if n == 0 {
                    return Ok(BodyEnd::Eof);
                }
                // Within the run: always all consumed, never a framing error.
                let _ = body.advance(&self.peeked[..n]);
                continue;
            }
            if self.peek().await? == 0 {
                return Ok(BodyEnd::Eof);
            }
            match body.advance(&self.peeked) {
                Ok(progress) => self.take(progress.consumed, to).await?,
                Err(_) => return Ok(BodyEnd::NotUnderstood),
            }
        }
        Ok(BodyEnd::Complete)
    }

    /// Forwards everything the vendor sends from here on, uninterpreted, then half-closes `to`.
    async fn forward_rest<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        captured: &Captured,
    ) -> io::Result<()> {
        relay::pass_rest(&mut self.io, to, &captured.activity).await
    }
}

/// Counts the exchanges that will get no response.
fn abandon(
    mut in_flight: InFlight,
    mut queued: mpsc::Receiver<InFlight>,
    reason: UpstreamErrorReason,
) {
    in_flight.exchange.vendor_went_away(reason);
    while let Ok(mut next) = queued.try_recv() {
        next.exchange.vendor_went_away(reason);
    }
}

/// How following a body ended.
enum BodyEnd {
    Complete,
    /// The stream ended first (for a body delimited by the close, that is its end).
    Eof,
    /// The framing broke (a malformed chunk): the rest is relayed as bytes.
    NotUnderstood,
}

/// Forwards a body from `from` to `to`, exactly to its last byte.
async fn forward_body<R, W>(
    mut body: Body,
    from: &mut Inbound<R>,
    to: &mut W,
) -> io::Result<BodyEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while !body.is_done() {
        if from.buf.is_empty() && !from.fill().await? {
            return Ok(BodyEnd::Eof);
        }
        match body.advance(&from.buf) {
            Ok(progress) => from.forward(progress.consumed, to).await?,
            Err(_) => return Ok(BodyEnd::NotUnderstood),
        }
    }
    Ok(BodyEnd::Complete)
}
