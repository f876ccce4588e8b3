//! Tunnels once open: CONNECT over HTTP/1.1 and HTTP/2, and captured SOCKS5 and CONNECT
//! tunnels, all relayed by [`crate::relay`] and accounted the same way.
//!
//! The client's first bytes are sniffed (at most one ClientHello, for up to
//! `limits.sniff_timeout`) to read SNI and ALPN without decrypting anything; when the tunnel's
//! target is an IP literal, the SNI host becomes the destination label and the bytes counted
//! before it was known move to it. When the relay ends, the exchange gets its outcome: the
//! vendor's direction ending in the middle of a TLS record is a tunnel the vendor cut short, not
//! one that closed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pt_metrics::labels::{TunnelInner, UpstreamErrorReason};
use pt_sniff::Sniff;
use pt_sniff::client_hello::{MAX_SNIFF_BYTES, sniff};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::activity::Activity;
use crate::exchange::{Exchange, Side};
use crate::failure::Outcome;
use crate::failure::{Error, Failure};
use crate::relay::{self, End, Report, Sniffer, Start};

/// Reads a tunnel's ClientHello into its exchange.
struct HelloSniffer<'e> {
    exchange: &'e mut Exchange,
}

impl Sniffer for HelloSniffer<'_> {
    fn sniff(&mut self, first: &[u8]) -> bool {
        match sniff(first) {
            Sniff::NeedMore => false,
            verdict => {
                classify(self.exchange, verdict);
                true
            }
        }
    }

    fn give_up(&mut self, first: &[u8]) {
        let verdict = match sniff(first) {
            Sniff::NeedMore => Sniff::Malformed,
            verdict => verdict,
        };
        classify(self.exchange, verdict);
    }
}

/// Records what the client speaks, and settles the destination of IP-literal tunnels.
fn classify(exchange: &mut Exchange, verdict: Sniff) {
    match verdict {
        Sniff::ClientHello(hello) => {
            let offers = |p: &str| hello.alpn.iter().any(|a| a == p);
            let inner = if offers("h2") {
                TunnelInner::TlsH2
            } else if offers("http/1.1") {
                TunnelInner::TlsHttp1
            } else {
                TunnelInner::TlsOther
            };
            exchange.sniffed(inner, hello.sni.as_ref(), hello.alpn);
        }
        Sniff::NotTls => exchange.sniffed(TunnelInner::NotTls, None, Vec::new()),
        Sniff::NeedMore | Sniff::Malformed => {
            exchange.sniffed(TunnelInner::Unknown, None, Vec::new());
        }
    }
}

/// The limits of a tunnel.
pub fn limits(idle_timeout: Duration, sniff_timeout: Duration) -> relay::Limits {
    relay::Limits {
        idle_timeout,
        sniff_timeout,
        max_sniff_bytes: MAX_SNIFF_BYTES,
    }
}

/// Relays an open tunnel until it ends, then settles the exchange's outcome. The vendor
/// connection's halves close before the exchange writes its log line, so bytes still unread at
/// close are in the line too. `stop` ends the tunnel from outside (shutdown, a reclaimed slot) with the
/// outcome it resolves to.
pub async fn run<CR, CW, VR, VW>(
    client: (CR, CW),
    vendor: (VR, VW),
    mut exchange: Exchange,
    start: Start,
    limits: relay::Limits,
    activity: &Activity,
    stop: Pin<&mut impl Future<Output = Outcome>>,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
{
    let _active = ActiveTunnel::new(&exchange);
    let mut sniffer = HelloSniffer {
        exchange: &mut exchange,
    };
    let (mut vendor_read, mut vendor_write) = vendor;
    let (report, stopped) = relay::relay(
        client,
        (&mut vendor_read, &mut vendor_write),
        start,
        Some(&mut sniffer),
        limits,
        activity,
        stop,
    )
    .await;
    drop((vendor_read, vendor_write));
    settle(&mut exchange, report, stopped);
}

/// The exchange's outcome from how its relay ended.
fn settle(exchange: &mut Exchange, report: Report, stopped: Option<Outcome>) {
    tracing::debug!(
        vendor = %exchange.vendor,
        up = report.up,
        down = report.down,
        end = ?report.end,
        "tunnel ended"
    );
    if let Some(side) = report.first_to_end {
        exchange.closed_by(side);
    }
    match report.end {
        End::Closed => {
            let cut = report.first_to_end == Some(Side::Vendor)
                && report.down_at_record_boundary == Some(false);
            if cut {
                exchange.failed(&Failure::Upstream(UpstreamErrorReason::Reset).into());
            }
        }
        End::Failed {
            side: Side::Client,
            error,
        } => exchange.failed(&Error::new(Failure::ClientGone, error)),
        End::Failed {
            side: Side::Vendor,
            error,
        } => exchange.failed(&Error::new(
            Failure::Upstream(UpstreamErrorReason::Reset),
            error,
        )),
        End::Idle => exchange.failed(&Failure::Upstream(UpstreamErrorReason::TunnelIdle).into()),
        End::Stopped => exchange.ended_by(stopped.unwrap_or(Outcome::Shutdown)),
    }
}

/// Keeps `proxy_active_tunnels` up while a tunnel runs.
struct ActiveTunnel(Option<prometheus_client::metrics::gauge::Gauge>);

impl ActiveTunnel {
    fn new(exchange: &Exchange) -> ActiveTunnel {
        let gauge = exchange.active_tunnel_gauge();
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        ActiveTunnel(gauge)
    }
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0 {
            gauge.dec();
        }
    }
}
