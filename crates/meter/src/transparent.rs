//! Transparent mode: metering connections that iptables redirected to the meter, for crawlers
//! that keep talking to their vendors as if no meter existed.
//!
//! A pod's iptables rules (`proxy-telemetry init-iptables`) `REDIRECT` its outbound connections
//! to vendor endpoints to a loopback listener of the meter. For each connection the meter reads
//! the original destination (`SO_ORIGINAL_DST`), looks it up in the vendor endpoint table
//! ([`endpoints`]), connects there itself and relays the crawler's bytes unchanged, in both
//! directions, through the same counting socket wrapper as every vendor connection. What the
//! crawler speaks decides how much more is known:
//!
//! - HTTP/1.1 proxy requests ([`http1`]): every request and CONNECT tunnel is counted with its
//!   destination and status, and bytes are attributed to the request they belong to.
//! - SOCKS5 ([`socks5`]): every CONNECT is counted with its destination and reply.
//! - TLS to the vendor endpoint (an HTTPS proxy), or anything else: bytes only.
//!
//! Each request the meter follows is admitted through the one request lifecycle
//! ([`crate::lifecycle::admit`], as a [`Route::Captured`] request: its vendor is the endpoint
//! the crawler dialled), so it is counted and logged exactly like a request to the meter itself.
//! Tunnels and bytes-only connections are relayed by [`crate::relay`], like every tunnel. The
//! crawler's own vendor credentials pass through inside its bytes; the meter never parses them
//! out, so they cannot reach logs or labels. A destination that is no vendor endpoint passes
//! through untouched (counted as `proxy_vendor="unknown"`, bytes only, if
//! `transparent.meter_unmatched` is on). A connection that was not redirected (its original
//! destination is the listener itself) or that the meter opened itself (see [`crate::outbound`])
//! is refused as a `loop`.

mod endpoints;
mod http1;
mod socks5;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pt_config::VendorIndex;
use pt_metrics::caps::{Name, UNKNOWN};
use pt_metrics::labels::{ClientProtocol, PodLabels, Protocol, RejectReason, TransparentLabels};
use pt_sniff::Authority;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::activity::{Activity, Touching};
use crate::context::Context;
use crate::counting_io::{Attribution, MeteredIo};
use crate::exchange::Exchange;
use crate::failure::Outcome;
use crate::lifecycle::{self, ConnInfo, Request, Route};
use crate::listener::{OpenConnection, next_connection};
use crate::outbound::Outbound;
use crate::relay::{self, Start};
use crate::tunnel;

pub use endpoints::Endpoints;

/// What the transparent listeners share.
#[derive(Debug)]
pub struct Transparent {
    pub endpoints: Endpoints,
    pub outbound: Arc<Outbound>,
    /// The bound transparent listener addresses: a connection whose original destination is one
    /// of them was not redirected.
    pub listeners: Vec<SocketAddr>,
    pub meter_unmatched: bool,
}

/// Accepts redirected connections until draining starts.
pub async fn accept_loop(ctx: Arc<Context>, state: Arc<Transparent>, listener: TcpListener) {
    while let Some((stream, peer)) = next_connection(&listener, &ctx.drain.draining).await {
        let Some(slot) = ctx.slots.admit() else {
            // The crawler's protocol is not known yet, so there is no answer to give: close.
            ctx.metering.refuse_connection(RejectReason::Overloaded);
            continue;
        };
        let task_ctx = ctx.clone();
        let state = state.clone();
        ctx.drain.tasks.spawn(async move {
            let _slot = slot;
            serve(task_ctx, state, stream, peer).await;
        });
    }
}

/// The destination the connection had before iptables redirected it.
fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let address = if stream.local_addr()?.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    address
        .as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// The two halves of a vendor socket, each counting to its own attribution.
type VendorRead = MeteredIo<OwnedReadHalf>;
type VendorWrite = MeteredIo<OwnedWriteHalf>;
/// The two halves of the crawler's socket, each telling the connection's idle clock.
type ClientRead = Touching<OwnedReadHalf>;
type ClientWrite = Touching<OwnedWriteHalf>;

/// Bytes reserved for the client's first read: a request head or a SOCKS greeting.
const FIRST_READ: usize = 4096;

/// Serves one redirected connection.
async fn serve(ctx: Arc<Context>, state: Arc<Transparent>, client: TcpStream, peer: SocketAddr) {
    let _open = OpenConnection::new(&ctx);
    let destination = match original_destination(&client) {
        Ok(d) if !state.listeners.contains(&d) && !state.outbound.is_own(peer) => d,
        result => {
            tracing::warn!(
                %peer,
                destination = ?result.as_ref().ok(),
                "refusing a transparent connection that was not redirected or that the meter opened itself (exclude the meter's uid or mark from redirection)"
            );
            ctx.metering.refuse_connection(RejectReason::Loop);
            return;
        }
    };
    let vendor = state.endpoints.vendor_of(destination);
    let metered = ctx.metering.enabled() && (vendor.is_some() || state.meter_unmatched);
    let vendor_name = match vendor {
        Some(index) => ctx.vendors.list[index].name.clone(),
        None => Name::new(UNKNOWN),
    };
    // Bytes that belong to no request (a SOCKS5 greeting, bytes-only connections): the pod
    // family only. Unmetered connections count nowhere.
    let attribution = Arc::new(if metered {
        let identity = ctx.gate.identify(&ctx.metering.metrics, peer, None);
        let labels = PodLabels::new(&vendor_name, &identity);
        Attribution::new(ctx.metering.pod_counters(&labels), None)
    } else {
        Attribution::default()
    });
    let vendor_conn = match ctx
        .vendors
        .dial_captured(destination, attribution.clone())
        .await
    {
        Ok(conn) => conn,
        Err(error) => {
            // The crawler sees its connection close, as if the vendor had refused it.
            if metered && let Some(reason) = error.failure.upstream_reason() {
                ctx.metering.upstream_error(&vendor_name, reason);
            }
            let _ = client.set_zero_linger();
            return;
        }
    };
    let (vendor_read, vendor_write, _lease) = vendor_conn.into_halves();
    let activity: Arc<Activity> = Arc::default();
    let (client_read, client_write) = client.into_split();
    let client = (
        Touching::new(client_read, activity.clone()),
        Touching::new(client_write, activity.clone()),
    );
    let vendor_halves = (vendor_read, vendor_write);
    match (metered, vendor) {
        (true, Some(vendor)) => {
            let captured = Captured {
                ctx: ctx.clone(),
                vendor,
                conn: ConnInfo {
                    peer,
                    listener_vendor: None,
                },
                attribution,
                activity,
            };
            captured.relay(client, vendor_halves).await;
        }
        // A destination that is no vendor's: there is no protocol of a vendor to follow.
        (true, None) => {
            count_connection(&ctx, &vendor_name, ClientProtocol::Other);
            bytes_only(&ctx, &activity, client, vendor_halves, BytesMut::new()).await;
        }
        // Metering is off: relayed as it is, counted nowhere.
        (false, _) => bytes_only(&ctx, &activity, client, vendor_halves, BytesMut::new()).await,
    }
}

/// Counts a captured connection by what its crawler speaks.
fn count_connection(ctx: &Context, vendor: &Name, speaks: ClientProtocol) {
    ctx.metering
        .metrics
        .transparent_connections
        .get_or_create(&TransparentLabels {
            proxy_vendor: vendor.clone(),
            client_protocol: speaks,
        })
        .inc();
}

/// Relays a captured connection as bytes, `first` (already read from the client) first.
async fn bytes_only(
    ctx: &Context,
    activity: &Activity,
    client: (ClientRead, ClientWrite),
    vendor: (VendorRead, VendorWrite),
    first: BytesMut,
) {
    let limits = relay::Limits {
        idle_timeout: ctx.limits.tunnel_idle_timeout,
        sniff_timeout: ctx.limits.sniff_timeout,
        max_sniff_bytes: 0,
    };
    let stop = std::pin::pin!(ctx.drain.stopped.cancelled());
    let _ = relay::relay(
        client,
        vendor,
        Start::copied(&first, &[]),
        None,
        limits,
        activity,
        stop,
    )
    .await;
}

/// A captured connection to a vendor endpoint, being metered.
struct Captured {
    ctx: Arc<Context>,
    /// The vendor whose endpoint the crawler dialled.
    vendor: VendorIndex,
    conn: ConnInfo,
    /// Where bytes outside any request count.
    attribution: Arc<Attribution>,
    /// When bytes last moved on the crawler's side (and so on the vendor's).
    activity: Arc<Activity>,
}

impl Captured {
    /// Reads what the crawler speaks first and relays accordingly.
    async fn relay(
        &self,
        (mut client_read, client_write): (ClientRead, ClientWrite),
        vendor: (VendorRead, VendorWrite),
    ) {
        let mut first = BytesMut::with_capacity(FIRST_READ);
        // The crawler speaks first in every protocol metered here. If the vendor speaks first
        // instead, the connection is relayed as bytes (its bytes are still in the socket).
        let speaks = tokio::select! {
            read = client_read.read_buf(&mut first) => match read {
                Ok(0) | Err(_) => ClientProtocol::Other,
                Ok(_) => match first[0] {
                    pt_sniff::socks5::VERSION => ClientProtocol::Socks5,
                    // A TLS handshake record: TLS to the vendor endpoint (an HTTPS proxy).
                    0x16 => ClientProtocol::Tls,
                    b'A'..=b'Z' => ClientProtocol::Http1,
                    _ => ClientProtocol::Other,
                },
            },
            _ = vendor.0.get_ref().readable() => ClientProtocol::Other,
        };
        count_connection(&self.ctx, &self.ctx.vendors.list[self.vendor].name, speaks);
        let idle = self.ctx.limits.tunnel_idle_timeout;
        let work = async {
            match speaks {
                ClientProtocol::Http1 => {
                    http1::relay(self, (client_read, client_write), vendor, first).await;
                }
                ClientProtocol::Socks5 => {
                    socks5::relay(self, (client_read, client_write), vendor, first).await;
                }
                ClientProtocol::Tls | ClientProtocol::Other => {
                    bytes_only(
                        &self.ctx,
                        &self.activity,
                        (client_read, client_write),
                        vendor,
                        first,
                    )
                    .await;
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = self.activity.idle(idle, || false) => {}
            () = self.ctx.drain.stopped.cancelled() => {}
        }
    }

    /// Admits a request the crawler sent its vendor through the one request lifecycle: its
    /// exchange, or `None` if admission refused it (it admits captured requests as they are;
    /// the caller then relays the rest of the connection as bytes, still counted).
    fn exchange(
        &self,
        protocol: Protocol,
        target: &Authority,
        method: &str,
        url: Option<String>,
    ) -> Option<Exchange> {
        let request = Request {
            protocol,
            method,
            target,
            route: Route::Captured(self.vendor),
            url,
        };
        let ctx = &self.ctx;
        lifecycle::admit(&ctx.gate, &ctx.metering, &ctx.vendors, &self.conn, request)
            .ok()
            .map(|admitted| admitted.exchange)
    }

    /// Hands a connection whose tunnel has just opened (CONNECT 200, SOCKS5 success) to the
    /// tunnel relay: what the vendor sent beyond its answer goes to the client first, and what
    /// the client sent beyond its request starts the sniffed stream.
    async fn open_tunnel(
        &self,
        exchange: Exchange,
        client: (ClientRead, ClientWrite),
        vendor: (VendorRead, VendorWrite),
        start: Start,
    ) {
        let stop = std::pin::pin!(async {
            self.ctx.drain.stopped.cancelled().await;
            Outcome::Shutdown
        });
        tunnel::run(
            client,
            vendor,
            exchange,
            start,
            tunnel::limits(
                self.ctx.limits.tunnel_idle_timeout,
                self.ctx.limits.sniff_timeout,
            ),
            &self.activity,
            stop,
        )
        .await;
    }
}

/// One side of a captured connection: a reader and the bytes read from it but not yet
/// forwarded.
struct Inbound<R> {
    io: R,
    buf: BytesMut,
}

/// Bytes reserved per read while interpreting a stream.
const READ_CHUNK: usize = 16 * 1024;

/// How much an incomplete head may grow before it is parsed again without a blank line having
/// arrived (to notice a malformed or oversized one): parsing it again after every read would
/// cost time quadratic in its length when it comes a byte at a time.
const REPARSE_EVERY: usize = 4 * 1024;

/// Whether a blank line (`\n\n`, or `\n\r\n`) ends in `buf` past `from`: the only way a head
/// that was incomplete at `from` can be complete now.
fn blank_line_since(buf: &[u8], from: usize) -> bool {
    (from.max(1)..buf.len())
        .any(|i| buf[i] == b'\n' && (buf[i - 1] == b'\n' || (i >= 2 && &buf[i - 2..i] == b"\n\r")))
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    fn new(io: R, buf: BytesMut) -> Inbound<R> {
        Inbound { io, buf }
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        let n = self.io.read_buf(&mut self.buf).await?;
        Ok(n > 0)
    }

    /// Reads until `parse` finds a complete message at the start of the buffer. `Ok(None)`: the
    /// stream ended first; `Err(None)`: `parse` gave up (not understood or too large).
    async fn message<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, Option<io::Error>> {
        self.parsed_when(parse, |_, _| true).await
    }

    /// [`Inbound::message`] for an HTTP head: parsed again only once a blank line may have
    /// ended it, or it grew by [`REPARSE_EVERY`].
    async fn head<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, Option<io::Error>> {
        self.parsed_when(parse, |buf, at| {
            buf.len() >= at + REPARSE_EVERY || blank_line_since(buf, at)
        })
        .await
    }

    /// Reads until `parse` finds a complete message, parsing again when `due(buffer, its
    /// length at the last parse)`.
    async fn parsed_when<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
        due: impl Fn(&[u8], usize) -> bool,
    ) -> Result<Option<T>, Option<io::Error>> {
        let mut parsed: Option<usize> = None;
        loop {
            if parsed.is_none_or(|at| due(&self.buf, at)) {
                match parse(&self.buf) {
                    Ok(Some(message)) => return Ok(Some(message)),
                    Ok(None) => {}
                    Err(_) => return Err(None),
                }
                parsed = Some(self.buf.len());
            }
            if !self.fill().await.map_err(Some)? {
                return Ok(None);
            }
        }
    }

    /// Forwards the first `n` buffered bytes.
    async fn forward<W: AsyncWrite + Unpin>(&mut self, n: usize, to: &mut W) -> io::Result<()> {
        to.write_all(&self.buf[..n]).await?;
        let _ = self.buf.split_to(n);
        Ok(())
    }

    /// Forwards the buffered bytes and everything after them, uninterpreted, then half-closes
    /// `to`. Returns at the end of the stream.
    async fn forward_rest<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        activity: &Activity,
    ) -> io::Result<()> {
        let n = self.buf.len();
        self.forward(n, to).await?;
        relay::pass_rest(&mut self.io, to, activity).await
    }
}

#[cfg(test)]
mod tests {
    use super::blank_line_since;

    #[test]
    fn a_head_is_parsed_again_only_once_a_blank_line_may_have_ended_it() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        // Byte by byte: the last byte is the first that completes a blank line.
        for end in 1..head.len() {
            assert!(!blank_line_since(&head[..end], end - 1), "{end}");
        }
        assert!(blank_line_since(head, head.len() - 1));
        // The blank line found whatever piece its bytes came in, and in bare-LF form.
        assert!(blank_line_since(head, head.len() - 3));
        assert!(blank_line_since(b"GET / HTTP/1.1\nHost: h\n\n", 20));
        assert!(!blank_line_since(b"GET / HTTP/1.1\r\nHost: h\r\n", 0));
    }
}
