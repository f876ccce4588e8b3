//! One request or tunnel as the meter accounts for it.
//!
//! An [`Exchange`] is created once the vendor is chosen and the request admitted. It resolves the
//! label handles once (the byte path only adds to them), counts the request exactly once — when
//! the response head or tunnel verdict arrives, or on failure, or, if neither happened, when it is
//! dropped — and writes the access-log line when it is dropped, with the bytes its
//! [`Attribution`] saw.

use std::net::SocketAddr;
use std::sync::Arc;

use pt_metrics::caps::Name;
use pt_metrics::labels::{
    DestinationLabels, LatencyLabels, PodIdentity, PodLabels, Protocol, RequestLabels, StatusClass,
    TunnelInner, UpstreamErrorReason,
};
use pt_sniff::Host;
use pt_sniff::destination::IP_LITERAL;
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::counting_io::{Attribution, Tally};
use crate::failure::Failure;
use crate::shared::Shared;

/// The destination label of an exchange.
#[derive(Debug, Clone)]
enum Destination {
    /// Known (or `None`: destination families off).
    Known(Option<Name>),
    /// A tunnel to an IP literal, waiting for the SNI of its ClientHello.
    Pending,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Exchange {
    shared: Arc<Shared>,
    pub vendor: Name,
    identity: PodIdentity,
    protocol: Protocol,
    destination: Destination,
    host: String,
    port: u16,
    method: String,
    url: Option<String>,
    client: SocketAddr,
    attribution: Arc<Attribution>,
    started: Instant,
    status: Option<u16>,
    failure: Option<Failure>,
    outcome: &'static str,
    counted: bool,
    destination_counted: bool,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub inner: Option<TunnelInner>,
}

/// Everything an exchange is created from.
#[derive(Debug)]
pub struct ExchangeSpec {
    pub vendor: Name,
    pub identity: PodIdentity,
    pub protocol: Protocol,
    pub host: Host,
    pub port: u16,
    pub method: String,
    pub url: Option<String>,
    pub client: SocketAddr,
}

impl Exchange {
    /// Resolves the label handles of a new exchange. A tunnel to an IP literal gets its
    /// destination later, from SNI ([`Exchange::resolve_destination`]).
    pub fn new(shared: Arc<Shared>, spec: ExchangeSpec, started: Instant) -> Exchange {
        let metrics = &shared.metrics;
        let metering = shared.config.metrics.metering;
        let pod = PodLabels::new(&spec.vendor, &spec.identity);
        let destination = match (shared.config.metrics.destination_key, &spec.host) {
            _ if !metering => Destination::Known(None),
            (None, _) => Destination::Known(None),
            (Some(_), Host::V4(_) | Host::V6(_))
                if matches!(spec.protocol, Protocol::Connect | Protocol::Socks5) =>
            {
                Destination::Pending
            }
            (Some(key), host) => {
                Destination::Known(metrics.destination(&spec.vendor, &key.of(host)))
            }
        };
        let destination_counters = match &destination {
            Destination::Known(Some(name)) => {
                Some(shared.destination_byte_counters(&spec.vendor, name))
            }
            _ => None,
        };
        let pod_counters = metering.then(|| {
            // Create the 2xx request series now, at zero, so `increase()` sees its first request.
            let _ = metrics.requests.get_or_create(&RequestLabels::new(
                pod.clone(),
                spec.protocol,
                StatusClass::Success,
            ));
            (
                metrics.sent_bytes.get_or_create_owned(&pod),
                metrics.received_bytes.get_or_create_owned(&pod),
            )
        });
        let attribution = Arc::new(Attribution::new(pod_counters, destination_counters));
        Exchange {
            vendor: spec.vendor,
            identity: spec.identity,
            protocol: spec.protocol,
            destination,
            host: spec.host.to_string(),
            port: spec.port,
            method: spec.method,
            url: spec.url,
            client: spec.client,
            attribution,
            started,
            status: None,
            failure: None,
            outcome: "ok",
            counted: false,
            destination_counted: false,
            sni: None,
            alpn: Vec::new(),
            inner: None,
            shared,
        }
    }

    /// The attribution vendor-socket bytes of this exchange go to.
    pub fn attribution(&self) -> &Arc<Attribution> {
        &self.attribution
    }

    /// Counts the exchange with the status its client receives from the vendor.
    pub fn responded(&mut self, status: u16) {
        if self.counted {
            return;
        }
        self.status = Some(status);
        if !self.shared.config.metrics.metering {
            self.counted = true;
            return;
        }
        self.shared
            .metrics
            .request_duration
            .get_or_create(&LatencyLabels {
                proxy_vendor: self.vendor.clone(),
                protocol: self.protocol,
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.count(StatusClass::of(status));
    }

    /// Records a failure: before the response head it decides the status the client gets;
    /// after it (a body cut short), it is only logged and counted as an upstream error.
    pub fn failed(&mut self, failure: Failure) {
        if let Some(reason) = failure.upstream_reason()
            && self.shared.config.metrics.metering
        {
            self.shared.metrics.upstream_error(&self.vendor, reason);
        }
        self.outcome = failure.reason();
        self.failure = Some(failure);
        if !self.counted {
            let class = match failure {
                Failure::ClientGone => StatusClass::Error,
                f => {
                    self.status = Some(f.status().as_u16());
                    StatusClass::of(f.status().as_u16())
                }
            };
            self.count(class);
        }
    }

    /// Counts an exchange whose response never came because the vendor connection ended (a
    /// captured connection: the crawler sees the close, not a status from the meter).
    pub fn vendor_went_away(&mut self, reason: UpstreamErrorReason) {
        if self.counted {
            return;
        }
        if self.shared.config.metrics.metering {
            self.shared.metrics.upstream_error(&self.vendor, reason);
        }
        self.outcome = reason.as_str();
        self.count(StatusClass::Error);
    }

    /// Marks how the exchange ended when it is not a failure of the vendor leg.
    pub fn set_outcome(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }

    fn count(&mut self, class: StatusClass) {
        self.counted = true;
        if !self.shared.config.metrics.metering {
            return;
        }
        self.shared
            .metrics
            .requests
            .get_or_create(&RequestLabels::new(
                PodLabels::new(&self.vendor, &self.identity),
                self.protocol,
                class,
            ))
            .inc();
        self.count_destination();
    }

    fn count_destination(&mut self) {
        if self.destination_counted || !self.counted {
            return;
        }
        if let Destination::Known(name) = &self.destination {
            self.destination_counted = true;
            if let Some(name) = name {
                self.shared
                    .metrics
                    .destination_requests
                    .get_or_create(&DestinationLabels {
                        proxy_vendor: self.vendor.clone(),
                        destination: name.clone(),
                    })
                    .inc();
            }
        }
    }

    /// Whether the destination waits for SNI.
    pub fn destination_pending(&self) -> bool {
        matches!(self.destination, Destination::Pending)
    }

    /// Settles a pending destination (the SNI host, or the IP-literal value when none came)
    /// and moves the bytes counted so far to it.
    pub fn resolve_destination(&mut self, tally: &Tally, sni: Option<&Host>) {
        if !self.destination_pending() {
            return;
        }
        let key = match (sni, self.shared.config.metrics.destination_key) {
            (Some(host), Some(key)) => key.of(host),
            _ => IP_LITERAL.to_owned(),
        };
        let name = self.shared.metrics.destination(&self.vendor, &key);
        if let Some(name) = &name {
            let (sent, received) = self.shared.destination_byte_counters(&self.vendor, name);
            self.attribution = tally.resolve_destination(sent, received);
        }
        self.destination = Destination::Known(name);
        self.count_destination();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.counted {
            self.outcome = if self.outcome == "ok" {
                "client_gone"
            } else {
                self.outcome
            };
            self.count(StatusClass::Error);
        }
        if self.destination_pending() {
            // No ClientHello was ever sniffed (the tunnel failed first): the CONNECT target IP.
            let name = self.shared.metrics.destination(&self.vendor, IP_LITERAL);
            if let Some(name) = &name {
                let (sent, received) = self.shared.destination_byte_counters(&self.vendor, name);
                sent.inc_by(self.attribution.sent());
                received.inc_by(self.attribution.received());
            }
            self.destination = Destination::Known(name);
            self.count_destination();
        }
        if !self.shared.config.access_log || !self.shared.config.metrics.metering {
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
            outcome: self.outcome,
            sent_bytes: self.attribution.sent(),
            received_bytes: self.attribution.received(),
            duration: self.started.elapsed(),
            sni: self.sni.as_deref(),
            alpn: &self.alpn,
            tunnel_inner: self.inner.map(TunnelInner::as_str),
        };
        self.shared.access_log.write_line(record.to_json());
    }
}
