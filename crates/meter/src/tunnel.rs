//! Tunnels: `CONNECT host:port` over HTTP/1.1 and HTTP/2 CONNECT streams (RFC 9113 §8.5).
//!
//! The meter opens the tunnel through the vendor first and answers the client only with the
//! vendor's verdict (2xx, or the failure mapped to a status). Then it copies bytes both ways.
//! The client's first bytes are held back briefly (up to `limits.sniff_timeout`, at most one
//! ClientHello) to read SNI and ALPN without decrypting anything; the vendor-to-client direction
//! runs meanwhile, so protocols where the server speaks first are not delayed. When the CONNECT
//! target is an IP literal, the SNI host becomes the destination label, and the bytes counted
//! before it was known move to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pt_metrics::labels::{
    Protocol, RejectReason, TunnelInner, TunnelLabels, UpstreamErrorReason, VendorLabels,
};
use pt_sniff::Sniff;
use pt_sniff::authority::parse_authority;
use pt_sniff::client_hello::{MAX_SNIFF_BYTES, sniff};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ProxyBody;
use crate::admission::{ConnInfo, admit, refuse};
use crate::copy::{CopyError, copy};
use crate::counting_io::{MeteredIo, Tally};
use crate::exchange::{Exchange, ExchangeSpec};
use crate::failure::Failure;
use crate::policy;
use crate::shared::Shared;

/// Handles a CONNECT request; never fails (errors become answers).
///
/// `tunnels` counts the open tunnels of the client connection, which keeps an HTTP/2
/// connection carrying only quiet tunnels from being closed as idle.
pub async fn connect(
    shared: Arc<Shared>,
    conn: ConnInfo,
    tunnels: Arc<AtomicUsize>,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let target = match request
        .uri()
        .authority()
        .ok_or(())
        .and_then(|a| parse_authority(a.as_str()).map_err(|_| ()))
    {
        Ok(t) => t,
        Err(()) => return refuse(&shared, Failure::Rejected(RejectReason::BadRequest), None),
    };
    let admission = match admit(&shared, &conn, request.headers()) {
        Ok(a) => a,
        Err(f) => return refuse(&shared, f, None),
    };
    let vendor = &shared.vendors[admission.vendor];
    if let Err(f) = policy::check_port(&shared.config.security.connect_ports, target.port)
        .and_then(|()| policy::check_host(&shared.config.security, &target.host))
    {
        return refuse(&shared, f, Some(vendor.name.as_str()));
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let mut exchange = Exchange::new(
        shared.clone(),
        ExchangeSpec {
            vendor: vendor.name.clone(),
            identity: admission.identity,
            protocol: Protocol::Connect,
            host: target.host.clone(),
            port: target.port,
            method: "CONNECT".into(),
            url: None,
            client: conn.peer,
        },
        started,
    );
    let tally = Tally::new(exchange.attribution().clone());
    let established = vendor
        .open_tunnel(
            &shared,
            &target,
            tally.clone(),
            admission.client_authorization.as_ref(),
        )
        .await;
    match established {
        Ok(established) => {
            exchange.responded(StatusCode::OK.as_u16());
            let task_shared = shared.clone();
            tunnels.fetch_add(1, Ordering::Relaxed);
            shared.tasks.spawn(async move {
                run(
                    task_shared,
                    exchange,
                    tally,
                    on_upgrade,
                    established.io,
                    established.leftover,
                )
                .await;
                tunnels.fetch_sub(1, Ordering::Relaxed);
            });
            let mut response =
                Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(f) => {
            exchange.failed(f);
            if let Failure::Rejected(reason) = f {
                shared.metrics.reject(reason);
            }
            f.response(Some(vendor.name.as_str()))
        }
    }
}

/// Keeps `proxy_active_tunnels` up while a tunnel runs.
struct ActiveTunnel(prometheus_client::metrics::gauge::Gauge);

impl ActiveTunnel {
    fn new(shared: &Shared, vendor: &pt_metrics::Name) -> ActiveTunnel {
        let gauge = shared
            .metrics
            .active_tunnels
            .get_or_create_owned(&VendorLabels {
                proxy_vendor: vendor.clone(),
            });
        gauge.inc();
        ActiveTunnel(gauge)
    }
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Waits for the client's side of the upgrade, then relays the tunnel.
async fn run(
    shared: Arc<Shared>,
    mut exchange: Exchange,
    tally: Arc<Tally>,
    on_upgrade: OnUpgrade,
    vendor_io: MeteredIo<TcpStream>,
    leftover: Bytes,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(_) => {
            exchange.resolve_destination(&tally, None);
            exchange.set_outcome("client_gone");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(upgraded));
    let (vendor_read, vendor_write) = tokio::io::split(vendor_io);
    pipe(
        &shared,
        exchange,
        &tally,
        Halves {
            client_read,
            client_write,
            vendor_read,
            vendor_write,
        },
        leftover,
        Vec::new(),
    )
    .await;
}

/// The four ends of an established tunnel.
pub struct Halves<CR, CW, VR, VW> {
    pub client_read: CR,
    pub client_write: CW,
    pub vendor_read: VR,
    pub vendor_write: VW,
}

/// Relays an established tunnel until both directions end, it idles out, or the meter stops:
/// `leftover` (bytes the vendor sent after its verdict) goes to the client first, `pending`
/// (bytes the client sent before the verdict) starts the sniffed client stream. Reads SNI and
/// ALPN from the client's first bytes and settles the exchange's destination and outcome.
pub async fn pipe<CR, CW, VR, VW>(
    shared: &Shared,
    mut exchange: Exchange,
    tally: &Tally,
    halves: Halves<CR, CW, VR, VW>,
    leftover: Bytes,
    pending: Vec<u8>,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
{
    let _active = ActiveTunnel::new(shared, &exchange.vendor);
    let Halves {
        mut client_read,
        mut client_write,
        mut vendor_read,
        mut vendor_write,
    } = halves;
    let limits = &shared.config.limits;

    // A failed direction ends the tunnel; a clean end of stream is a half-close and the other
    // direction carries on. Each side's error is blamed on the socket that failed.
    let (up_done, down_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let vendor_to_client = async {
        if !leftover.is_empty() {
            client_write
                .write_all(&leftover)
                .await
                .map_err(CopyError::Write)?;
        }
        drop(leftover);
        copy(&mut vendor_read, &mut client_write, &down_done, &up_done).await
    };
    let vendor_to_client = async { vendor_to_client.await.map_err(|e| blame(e, Side::Vendor)) };
    let client_to_vendor = async {
        let (first, verdict, read_error) =
            sniff_first_bytes(&mut client_read, pending, limits.sniff_timeout).await;
        classify(shared, &mut exchange, tally, &verdict);
        vendor_write
            .write_all(&first)
            .await
            .map_err(CopyError::Write)?;
        drop(first);
        if let Some(error) = read_error {
            return Err(CopyError::Read(error));
        }
        copy(&mut client_read, &mut vendor_write, &up_done, &down_done).await
    };
    let client_to_vendor = async { client_to_vendor.await.map_err(|e| blame(e, Side::Client)) };

    let outcome = tokio::select! {
        result = async { tokio::try_join!(client_to_vendor, vendor_to_client) } => result.err(),
        () = tally.activity.idle(limits.tunnel_idle_timeout, || false) => {
            Some(Failure::Upstream(UpstreamErrorReason::TunnelIdle))
        }
        () = shared.stopped.cancelled() => {
            exchange.set_outcome("shutdown");
            None
        }
    };
    // The sniff may not have finished (idle timeout, shutdown): settle the destination anyway.
    exchange.resolve_destination(tally, None);
    match outcome {
        Some(Failure::ClientGone) => exchange.set_outcome("client_reset"),
        Some(failure) => exchange.failed(failure),
        None => {}
    }
}

/// The reading side of a copy direction.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Vendor,
}

/// Which party a copy error is the fault of: the socket that failed to read or write.
fn blame(error: CopyError, reading: Side) -> Failure {
    tracing::debug!(error = %error, "tunnel ended with an error");
    let failed = match (&error, reading) {
        (CopyError::Read(_), side) => side,
        (CopyError::Write(_), Side::Client) => Side::Vendor,
        (CopyError::Write(_), Side::Vendor) => Side::Client,
    };
    match failed {
        Side::Client => Failure::ClientGone,
        Side::Vendor => Failure::Upstream(UpstreamErrorReason::Reset),
    }
}

/// Reads the client's first bytes, after the `pending` ones already read, until they show
/// what it speaks, or the limits are reached. Returns the bytes (to forward unchanged), the
/// verdict, and a read error if one ended it.
async fn sniff_first_bytes<R: AsyncRead + Unpin>(
    client: &mut R,
    pending: Vec<u8>,
    timeout: Duration,
) -> (Vec<u8>, Sniff, Option<std::io::Error>) {
    // Reads go straight into this buffer, which grows by what arrives (one ClientHello is
    // usually a single read), up to MAX_SNIFF_BYTES.
    let mut buf = pending;
    if !buf.is_empty() {
        match sniff(&buf) {
            Sniff::NeedMore => {}
            verdict => return (buf, verdict, None),
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if buf.len() >= MAX_SNIFF_BYTES {
            return (buf, Sniff::Malformed, None);
        }
        buf.reserve(SNIFF_READ.min(MAX_SNIFF_BYTES - buf.len()));
        match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
            Err(_elapsed) => return (buf, Sniff::NeedMore, None),
            Ok(Ok(0)) => {
                let verdict = sniff(&buf);
                return (buf, verdict, None);
            }
            Ok(Ok(_)) => match sniff(&buf) {
                Sniff::NeedMore => continue,
                verdict => return (buf, verdict, None),
            },
            Ok(Err(e)) => return (buf, Sniff::NeedMore, Some(e)),
        }
    }
}

/// Bytes reserved per sniff read: a typical ClientHello (up to about 2 KiB with post-quantum
/// key shares) in one read.
const SNIFF_READ: usize = 2048;

/// Records what the client speaks, and settles the destination of IP-literal tunnels.
fn classify(shared: &Shared, exchange: &mut Exchange, tally: &Tally, verdict: &Sniff) {
    let (inner, sni) = match verdict {
        Sniff::ClientHello(hello) => {
            exchange.alpn = hello.alpn.clone();
            exchange.sni = hello.sni.as_ref().map(ToString::to_string);
            let offers = |p: &str| hello.alpn.iter().any(|a| a == p);
            let inner = if offers("h2") {
                TunnelInner::TlsH2
            } else if offers("http/1.1") {
                TunnelInner::TlsHttp1
            } else {
                TunnelInner::TlsOther
            };
            (inner, hello.sni.as_ref())
        }
        Sniff::NotTls => (TunnelInner::NotTls, None),
        Sniff::NeedMore | Sniff::Malformed => (TunnelInner::Unknown, None),
    };
    exchange.inner = Some(inner);
    if shared.config.metrics.metering {
        shared
            .metrics
            .tunnels
            .get_or_create(&TunnelLabels {
                proxy_vendor: exchange.vendor.clone(),
                inner,
            })
            .inc();
    }
    exchange.resolve_destination(tally, sni);
}
