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
//! The crawler's own vendor credentials pass through inside its bytes; the meter never parses
//! them out, so they cannot reach logs or labels. A destination that is no vendor endpoint passes
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
use std::sync::atomic::AtomicBool;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use pt_metrics::caps::{Name, UNKNOWN};
use pt_metrics::labels::{
    ClientProtocol, PodIdentity, PodLabels, Protocol, RejectReason, TransparentLabels,
};
use pt_sniff::Authority;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::copy::{CopyError, copy};
use crate::counting_io::{Attribution, MeteredIo, Tally};
use crate::exchange::{Exchange, ExchangeSpec};
use crate::failure::classify_connect;
use crate::outbound::Outbound;
use crate::server::OpenConnection;
use crate::shared::Shared;
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
}

/// Accepts redirected connections until draining starts.
pub async fn accept_loop(
    shared: Arc<Shared>,
    state: Arc<Transparent>,
    listener: TcpListener,
    limit: Arc<Semaphore>,
) {
    while let Some((stream, peer)) = crate::server::next_connection(&listener, &shared).await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // The crawler's protocol is not known yet, so there is no answer to give: close.
            shared.metrics.reject(RejectReason::Overloaded);
            continue;
        };
        shared
            .tasks
            .spawn(serve(shared.clone(), state.clone(), stream, peer, permit));
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

/// Serves one redirected connection.
async fn serve(
    shared: Arc<Shared>,
    state: Arc<Transparent>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    shared.metrics.open_connections.inc();
    let _open = OpenConnection(&shared);
    let destination = match original_destination(&client) {
        Ok(d) if !state.listeners.contains(&d) && !state.outbound.is_own(peer) => d,
        result => {
            tracing::warn!(
                %peer,
                destination = ?result.as_ref().ok(),
                "refusing a transparent connection that was not redirected or that the meter opened itself (exclude the meter's uid or mark from redirection)"
            );
            shared.metrics.reject(RejectReason::Loop);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let vendor = state.endpoints.vendor_of(destination);
    let metered = vendor.is_some() || shared.config.transparent.meter_unmatched;
    if !shared.config.metrics.metering || !metered {
        passthrough(&shared, &state, client, destination).await;
        return;
    }
    let vendor_name = match vendor {
        Some(index) => shared.vendors[index].name.clone(),
        None => Name::new(UNKNOWN),
    };
    let identity = shared.identity.resolve(&shared.metrics, peer, None);
    let tally = Tally::new(Arc::new(pod_attribution(&shared, &vendor_name, &identity)));
    let (upstream, _own) = match state.outbound.connect_registered(destination).await {
        Ok(pair) => pair,
        Err(error) => {
            // The crawler sees its connection close, as if the vendor had refused it.
            shared
                .metrics
                .upstream_error(&vendor_name, classify_connect(&error));
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let captured = Captured {
        shared: shared.clone(),
        vendor: vendor_name,
        identity,
        peer,
        tally: tally.clone(),
    };
    let limits = &shared.config.limits;
    let relay = async {
        if vendor.is_none() {
            captured.count_connection(ClientProtocol::Other);
            return bytes_only(client, counted(upstream, &tally), BytesMut::new()).await;
        }
        let mut client = client;
        let mut first = BytesMut::with_capacity(FIRST_READ);
        // The crawler speaks first in every protocol metered here. If the vendor speaks first
        // instead, the connection is relayed as bytes (its bytes are still in the socket).
        let speaks = tokio::select! {
            read = client.read_buf(&mut first) => match read {
                Ok(0) => ClientProtocol::Other,
                Ok(_) => match first[0] {
                    pt_sniff::socks5::VERSION => ClientProtocol::Socks5,
                    // A TLS handshake record: TLS to the vendor endpoint (an HTTPS proxy).
                    0x16 => ClientProtocol::Tls,
                    b'A'..=b'Z' => ClientProtocol::Http1,
                    _ => ClientProtocol::Other,
                },
                Err(error) => return Err(CopyError::Read(error)),
            },
            _ = upstream.readable() => ClientProtocol::Other,
        };
        captured.count_connection(speaks);
        let upstream = counted(upstream, &tally);
        match speaks {
            ClientProtocol::Http1 => http1::relay(&captured, client, upstream, first).await,
            ClientProtocol::Socks5 => socks5::relay(&captured, client, upstream, first).await,
            ClientProtocol::Tls | ClientProtocol::Other => {
                bytes_only(client, upstream, first).await
            }
        }
    };
    tokio::select! {
        _ = relay => {}
        () = tally.activity.idle(limits.tunnel_idle_timeout, || false) => {}
        () = shared.stopped.cancelled() => {}
    }
}

/// Hands a connection whose tunnel has just opened (CONNECT 200, SOCKS5 success) to the tunnel
/// relay: what the vendor sent beyond its answer goes to the client first, and what the client
/// sent beyond its request starts the sniffed stream.
async fn open_tunnel(
    captured: &Captured,
    exchange: Exchange,
    (client, client_write): (Inbound<OwnedReadHalf>, OwnedWriteHalf),
    (vendor_read, vendor_write): (VendorRead, VendorWrite),
    from_vendor: Bytes,
) {
    let halves = tunnel::Halves {
        client_read: client.io,
        client_write,
        vendor_read,
        vendor_write,
    };
    let pending = client.buf.to_vec();
    tunnel::pipe(
        &captured.shared,
        exchange,
        &captured.tally,
        halves,
        from_vendor,
        pending,
    )
    .await;
}

/// The two halves of a vendor socket, each counting into the connection's tally.
type VendorRead = MeteredIo<OwnedReadHalf>;
type VendorWrite = MeteredIo<OwnedWriteHalf>;

fn counted(upstream: TcpStream, tally: &Arc<Tally>) -> (VendorRead, VendorWrite) {
    let (read, write) = upstream.into_split();
    (
        MeteredIo::new(read, tally.clone()),
        MeteredIo::new(write, tally.clone()),
    )
}

/// Bytes reserved for the client's first read: a request head or a SOCKS greeting.
const FIRST_READ: usize = 4096;

/// The attribution of bytes that belong to no request: the pod family only.
fn pod_attribution(shared: &Shared, vendor: &Name, identity: &PodIdentity) -> Attribution {
    let labels = PodLabels::new(vendor, identity);
    Attribution::new(
        Some((
            shared.metrics.sent_bytes.get_or_create_owned(&labels),
            shared.metrics.received_bytes.get_or_create_owned(&labels),
        )),
        None::<(Counter, Counter)>,
    )
}

/// Relays a connection that is not metered: no vendor, or metering off.
async fn passthrough(shared: &Shared, state: &Arc<Transparent>, client: TcpStream, to: SocketAddr) {
    let Ok((upstream, _own)) = state.outbound.connect_registered(to).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let (up, down) = (AtomicBool::new(false), AtomicBool::new(false));
    let _ = tokio::select! {
        r = async {
            tokio::try_join!(
                copy(&mut client_read, &mut upstream_write, &up, &down),
                copy(&mut upstream_read, &mut client_write, &down, &up),
            )
        } => r.map(|_| ()),
        () = shared.stopped.cancelled() => Ok(()),
    };
}

/// A captured connection to a vendor endpoint, being metered.
struct Captured {
    shared: Arc<Shared>,
    vendor: Name,
    identity: PodIdentity,
    peer: SocketAddr,
    tally: Arc<Tally>,
}

impl Captured {
    fn count_connection(&self, speaks: ClientProtocol) {
        self.shared
            .metrics
            .transparent_connections
            .get_or_create(&TransparentLabels {
                proxy_vendor: self.vendor.clone(),
                client_protocol: speaks,
            })
            .inc();
    }

    /// A new exchange for a request the crawler sent its vendor.
    fn exchange(
        &self,
        protocol: Protocol,
        target: &Authority,
        method: &str,
        url: Option<String>,
    ) -> Exchange {
        Exchange::new(
            self.shared.clone(),
            ExchangeSpec {
                vendor: self.vendor.clone(),
                identity: self.identity.clone(),
                protocol,
                host: target.host.clone(),
                port: target.port,
                method: method.to_owned(),
                url,
                client: self.peer,
            },
            Instant::now(),
        )
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

impl<R: AsyncRead + Unpin> Inbound<R> {
    fn new(io: R, buf: BytesMut) -> Inbound<R> {
        Inbound { io, buf }
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, CopyError> {
        self.buf.reserve(READ_CHUNK);
        let n = self
            .io
            .read_buf(&mut self.buf)
            .await
            .map_err(CopyError::Read)?;
        Ok(n > 0)
    }

    /// Reads until `parse` finds a complete message at the start of the buffer. `Ok(None)`: the
    /// stream ended first; `Err(None)`: `parse` gave up (not understood or too large).
    async fn message<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, Option<CopyError>> {
        loop {
            match parse(&self.buf) {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {}
                Err(_) => return Err(None),
            }
            if !self.fill().await.map_err(Some)? {
                return Ok(None);
            }
        }
    }

    /// Forwards the first `n` buffered bytes.
    async fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        n: usize,
        to: &mut W,
    ) -> Result<(), CopyError> {
        to.write_all(&self.buf[..n])
            .await
            .map_err(CopyError::Write)?;
        let _ = self.buf.split_to(n);
        Ok(())
    }

    /// Forwards the buffered bytes and everything after them, uninterpreted, then half-closes
    /// `to`. Returns at the end of the stream.
    async fn forward_rest<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> Result<(), CopyError> {
        let n = self.buf.len();
        self.forward(n, to).await?;
        let (done, other_done) = (AtomicBool::new(false), AtomicBool::new(false));
        copy(&mut self.io, to, &done, &other_done).await.map(|_| ())
    }
}

/// Relays a connection as bytes only, `first` (already read from the client) first.
async fn bytes_only(
    client: TcpStream,
    (upstream_read, mut upstream_write): (VendorRead, VendorWrite),
    first: BytesMut,
) -> Result<(), CopyError> {
    let (client_read, mut client_write) = client.into_split();
    let mut up = Inbound::new(client_read, first);
    let mut down = Inbound::new(upstream_read, BytesMut::new());
    tokio::try_join!(
        up.forward_rest(&mut upstream_write),
        down.forward_rest(&mut client_write)
    )
    .map(|_| ())
}
