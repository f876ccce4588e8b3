//! One request or tunnel as the meter accounts for it.
//!
//! An [`Exchange`] is created once the vendor is chosen and the request admitted. It resolves the
//! label handles once (the byte path only adds to them), counts the request exactly once — when
//! the response head or tunnel verdict arrives, or on failure, or, if neither happened, when it is
//! dropped — and writes the access-log line when it is dropped, with the bytes its
//! [`Attribution`] saw and one [`Outcome`]. Callers drop the vendor socket before the exchange,
//! so that the bytes still unread at close (counted by the socket wrapper) are in the line too.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use pt_metrics::caps::{Name, OTHER};
use pt_metrics::labels::{
    LatencyLabels, PodIdentity, PodLabels, Protocol, RejectReason, RequestLabels, StatusClass,
    TunnelInner, UpstreamErrorReason,
};
use pt_sniff::Host;
use pt_sniff::destination::IP_LITERAL;
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::counting_io::Attribution;
use crate::failure::{Error, Failure, Outcome};
use crate::metering::Metering;

/// Which side ended a tunnel first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Vendor,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Vendor => "vendor",
        }
    }
}

/// A request's method for its log line: the registered ones (RFC 9110 §9, RFC 5789) without
/// an allocation per request.
fn method_name(method: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match KNOWN.iter().find(|known| **known == method) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(method.to_owned()),
    }
}

/// The destination label of an exchange.
#[derive(Debug, Clone)]
enum Destination {
    /// Known (or `None`: destination families off).
    Known(Option<Name>),
    /// A tunnel to an IP literal, waiting for the SNI of its ClientHello.
    Pending,
    /// A destination (this key) without a label yet. It takes a place under the cap only once
    /// it answered (a status below 500, or a tunnel established): requests to names that do not
    /// exist, which the vendor answers with an error, cannot fill the cap. Until then, and for
    /// good if it never answers, its bytes and requests go to `other`.
    Unproven(String),
}

/// What an exchange is created from.
#[derive(Debug)]
pub struct ExchangeSpec<'a> {
    pub vendor: Name,
    pub identity: PodIdentity,
    pub protocol: Protocol,
    pub host: &'a Host,
    pub port: u16,
    pub method: &'a str,
    pub url: Option<String>,
    pub client: SocketAddr,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Exchange {
    metering: Arc<Metering>,
    pub vendor: Name,
    identity: PodIdentity,
    protocol: Protocol,
    destination: Destination,
    host: String,
    port: u16,
    method: Cow<'static, str>,
    url: Option<String>,
    client: SocketAddr,
    attribution: Arc<Attribution>,
    /// The pod's 2xx request counter (`None` when metering is off): the series held from the
    /// start, so that counting a success costs no label lookup.
    succeeded: Option<Counter>,
    /// The destination's request counter, once the destination label is known.
    destination_requests: Option<Counter>,
    started: Instant,
    status: Option<u16>,
    outcome: Outcome,
    reason: Option<&'static str>,
    error: Option<String>,
    counted: bool,
    destination_counted: bool,
    sni: Option<String>,
    alpn: Vec<String>,
    inner: Option<TunnelInner>,
    closed_by: Option<Side>,
}

impl Exchange {
    /// Resolves the label handles of a new exchange. A tunnel to an IP literal gets its
    /// destination later, from SNI ([`Exchange::resolve_destination`]).
    pub fn new(metering: Arc<Metering>, spec: ExchangeSpec<'_>) -> Exchange {
        let tunnel = matches!(spec.protocol, Protocol::Connect | Protocol::Socks5);
        let destination = if !metering.has_destinations() {
            Destination::Known(None)
        } else if tunnel && spec.host.ip().is_some() {
            Destination::Pending
        } else {
            let key = metering.destination_key(spec.host).unwrap_or_default();
            match metering.known_destination(&spec.vendor, &key) {
                Some(name) => Destination::Known(Some(name)),
                None => Destination::Unproven(key),
            }
        };
        let (destination_requests, destination_counters) = match &destination {
            Destination::Known(Some(name)) => {
                let (requests, bytes) = metering.destination_counters(&spec.vendor, name);
                (Some(requests), Some(bytes))
            }
            _ => (None, None),
        };
        let pod = PodLabels::new(&spec.vendor, &spec.identity);
        let pod_counters = metering.pod_counters(&pod);
        // The 2xx request series, created now at zero so that `increase()` sees its first
        // request, and kept: most exchanges end there.
        let succeeded = metering.enabled().then(|| {
            metering
                .metrics
                .requests
                .get_or_create_owned(&RequestLabels::new(
                    pod,
                    spec.protocol,
                    StatusClass::Success,
                ))
        });
        Exchange {
            attribution: Arc::new(Attribution::new(pod_counters, destination_counters)),
            succeeded,
            destination_requests,
            metering,
            vendor: spec.vendor,
            identity: spec.identity,
            protocol: spec.protocol,
            destination,
            host: spec.host.to_string(),
            port: spec.port,
            method: method_name(spec.method),
            url: spec.url,
            client: spec.client,
            started: Instant::now(),
            status: None,
            outcome: Outcome::Ok,
            reason: None,
            error: None,
            counted: false,
            destination_counted: false,
            sni: None,
            alpn: Vec::new(),
            inner: None,
            closed_by: None,
        }
    }

    /// The attribution vendor-socket bytes of this exchange go to.
    pub fn attribution(&self) -> &Arc<Attribution> {
        &self.attribution
    }

    /// The `proxy_active_tunnels` gauge of this exchange's vendor (`None` when metering is off).
    pub fn active_tunnel_gauge(&self) -> Option<prometheus_client::metrics::gauge::Gauge> {
        self.metering.enabled().then(|| {
            self.metering.metrics.active_tunnels.get_or_create_owned(
                &pt_metrics::labels::VendorLabels {
                    proxy_vendor: self.vendor.clone(),
                },
            )
        })
    }

    /// Counts the exchange with the status its client receives from the vendor.
    pub fn responded(&mut self, status: u16) {
        if self.counted {
            return;
        }
        self.status = Some(status);
        if status < 500 {
            self.prove_destination();
        }
        if self.metering.enabled() {
            self.metering
                .metrics
                .request_duration
                .get_or_create(&LatencyLabels {
                    proxy_vendor: self.vendor.clone(),
                    protocol: self.protocol,
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
        self.count(StatusClass::of(status));
    }

    /// Records a failure. Before the answer it decides the status the client gets; after it (a
    /// body cut short), it only sets the outcome. The vendor's faults are counted in
    /// `proxy_upstream_errors_total`, the meter's refusals in `proxy_rejected_requests_total`; a
    /// refusal that forwarded nothing (a `direct` name that resolved to a refused address) is not
    /// a request carried to the vendor and is not counted as one.
    pub fn failed(&mut self, error: &Error) {
        let failure = error.failure;
        self.error = error.cause.as_ref().map(ToString::to_string);
        self.reason = Some(failure.reason());
        if let Some(reason) = failure.upstream_reason() {
            self.metering.upstream_error(&self.vendor, reason);
        }
        if let Some(reason) = failure.reject_reason()
            && self.metering.enabled()
        {
            self.metering.metrics.reject(reason);
        }
        let bad_framing = failure == Failure::Rejected(RejectReason::BadFraming);
        if self.counted {
            self.outcome = match failure {
                _ if bad_framing => Outcome::BadFraming,
                Failure::ClientGone => Outcome::ClientCut,
                Failure::Upstream(UpstreamErrorReason::TunnelIdle) => Outcome::Idle,
                _ => Outcome::VendorCut,
            };
            return;
        }
        let status = failure.status();
        self.status = Some(status);
        self.outcome = match failure {
            _ if bad_framing => Outcome::BadFraming,
            Failure::ClientGone => Outcome::ClientGone,
            Failure::Rejected(_) | Failure::Malformed(_) => {
                self.counted = true;
                self.destination_counted = true;
                self.outcome = Outcome::Rejected;
                return;
            }
            Failure::TunnelRefused(_) | Failure::Upstream(UpstreamErrorReason::VendorAuth) => {
                Outcome::VendorRefused
            }
            Failure::Upstream(_) => Outcome::VendorError,
        };
        if failure == Failure::ClientGone {
            self.status = None;
            self.count(StatusClass::Error);
        } else {
            self.count(StatusClass::of(status));
        }
    }

    /// Counts an exchange the vendor refused with `status` (a SOCKS5 reply other than success,
    /// refused credentials), as the crawler received it.
    pub fn vendor_refused(&mut self, status: u16, reason: UpstreamErrorReason) {
        self.metering.upstream_error(&self.vendor, reason);
        self.reason = Some(reason.as_str());
        self.outcome = Outcome::VendorRefused;
        self.status = Some(status);
        if !self.counted {
            self.count(StatusClass::of(status));
        }
    }

    /// Counts an exchange that got no answer because the vendor closed or failed first, where
    /// the meter gives no status of its own (a captured connection: the crawler sees the close).
    pub fn vendor_went_away(&mut self, reason: UpstreamErrorReason) {
        self.metering.upstream_error(&self.vendor, reason);
        self.reason = Some(reason.as_str());
        if self.counted {
            self.outcome = Outcome::VendorCut;
            return;
        }
        self.outcome = Outcome::VendorClosed;
        self.count(StatusClass::NoResponse);
    }

    /// Marks a tunnel or exchange ended by an idle timeout or by the meter's shutdown.
    pub fn ended_by(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Records which side of a tunnel ended it first.
    pub fn closed_by(&mut self, side: Side) {
        self.closed_by.get_or_insert(side);
    }

    fn count(&mut self, class: StatusClass) {
        self.counted = true;
        if !self.metering.enabled() {
            return;
        }
        match &self.succeeded {
            Some(counter) if class == StatusClass::Success => {
                counter.inc();
            }
            _ => {
                self.metering
                    .metrics
                    .requests
                    .get_or_create(&RequestLabels::new(
                        PodLabels::new(&self.vendor, &self.identity),
                        self.protocol,
                        class,
                    ))
                    .inc();
            }
        }
        self.count_destination();
    }

    fn count_destination(&mut self) {
        if self.destination_counted || !self.counted {
            return;
        }
        if let Destination::Known(_) = &self.destination {
            self.destination_counted = true;
            if let Some(requests) = &self.destination_requests {
                requests.inc();
            }
        }
    }

    /// Records what a tunnel's client spoke (from its ClientHello) and settles a pending
    /// destination: the SNI host, or the IP-literal value when none came. Bytes counted so far
    /// move to it. Call it from the task that drives the tunnel.
    pub fn sniffed(&mut self, inner: TunnelInner, sni: Option<&Host>, alpn: Vec<String>) {
        self.inner = Some(inner);
        self.sni = sni.map(ToString::to_string);
        self.alpn = alpn;
        self.metering.tunnel(&self.vendor, inner);
        self.resolve_destination(sni);
    }

    /// Settles a pending destination: the SNI host, or the IP-literal value without one.
    pub fn resolve_destination(&mut self, sni: Option<&Host>) {
        if !matches!(self.destination, Destination::Pending) {
            return;
        }
        let name = match sni {
            Some(host) => self.metering.destination(&self.vendor, host),
            None => self.metering.destination_named(&self.vendor, IP_LITERAL),
        };
        self.settle_destination(name);
    }

    /// Gives an unproven destination its label now that it answered (`other` when the cap is
    /// full).
    fn prove_destination(&mut self) {
        if let Destination::Unproven(key) = &self.destination {
            let name = self.metering.destination_named(&self.vendor, key);
            self.settle_destination(name);
        }
    }

    /// Sets the destination label, moving the bytes counted so far to it.
    fn settle_destination(&mut self, name: Option<Name>) {
        if let Some(name) = &name {
            let (requests, bytes) = self.metering.destination_counters(&self.vendor, name);
            self.destination_requests = Some(requests);
            self.attribution.resolve_destination(bytes);
        }
        self.destination = Destination::Known(name);
        self.count_destination();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // The pod's series stay exported for the TTL from now on.
        self.identity.touch();
        if !self.counted {
            if self.outcome == Outcome::Ok {
                self.outcome = Outcome::ClientGone;
                self.reason = Some(Failure::ClientGone.reason());
            }
            self.count(StatusClass::Error);
        }
        // No ClientHello was ever sniffed (the tunnel failed first): the CONNECT target IP.
        self.resolve_destination(None);
        // Never answered: its bytes and its request are counted under `other`.
        if matches!(self.destination, Destination::Unproven(_)) {
            let other = self.metering.known_destination(&self.vendor, OTHER);
            self.settle_destination(other);
        }
        if !self.metering.logs() {
            return;
        }
        let record = AccessRecord {
            client: self.client,
            vendor: self.vendor.as_str(),
            namespace: self.identity.namespace.as_str(),
            pod: self.identity.pod.as_str(),
            protocol: self.protocol.as_str(),
            method: &self.method,
            host: &self.host,
            port: self.port,
            url: self.url.as_deref(),
            status: self.status,
            outcome: self.outcome.as_str(),
            reason: self.reason,
            error: self.error.as_deref(),
            sent_bytes: self.attribution.sent(),
            received_bytes: self.attribution.received(),
            duration: self.started.elapsed(),
            sni: self.sni.as_deref(),
            alpn: &self.alpn,
            tunnel_inner: self.inner.map(TunnelInner::as_str),
            closed_by: self.closed_by.map(Side::as_str),
        };
        self.metering.write_line(&record);
    }
}
