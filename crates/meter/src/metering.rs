//! What the meter records: the metric families and the access log, behind one context.
//!
//! Every front end reports through this context and [`crate::exchange::Exchange`]; with
//! `metrics.metering: false` (benchmarks measure the cost of metering) both become no-ops here,
//! rather than checks spread over the request handlers.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use pt_config::DestinationKey;
use pt_metrics::Metrics;
use pt_metrics::caps::Name;
use pt_metrics::labels::{
    DestinationLabels, PodLabels, RejectReason, TunnelInner, TunnelLabels, UpstreamErrorReason,
};
use pt_sniff::Host;

use crate::access_log::{AccessRecord, AccessSink};
use crate::counting_io::CounterPair;
use crate::failure::Outcome;

/// See the module documentation.
#[derive(Debug)]
pub struct Metering {
    pub metrics: Metrics,
    access_log: Arc<dyn AccessSink>,
    enabled: bool,
    log_lines: bool,
    destination_key: Option<DestinationKey>,
}

/// A request the meter refused before choosing a vendor or forwarding anything, as far as it
/// was understood.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub reason: RejectReason,
    pub status: u16,
    pub client: SocketAddr,
    pub protocol: &'a str,
    pub method: &'a str,
    /// The destination, when the target parsed.
    pub host: Option<(&'a Host, u16)>,
    pub vendor: Option<&'a str>,
}

impl Metering {
    pub fn new(
        metrics: Metrics,
        access_log: Arc<dyn AccessSink>,
        enabled: bool,
        log_lines: bool,
        destination_key: Option<DestinationKey>,
    ) -> Metering {
        Metering {
            metrics,
            access_log,
            enabled,
            log_lines: enabled && log_lines,
            destination_key,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn logs(&self) -> bool {
        self.log_lines
    }

    pub fn write_line(&self, record: &AccessRecord<'_>) {
        if self.log_lines {
            self.access_log.write_line(record.to_json());
        }
    }

    pub fn flush(&self) {
        self.access_log.flush();
    }

    /// Counts a refusal that happened before any request was read (connection limits, source
    /// addresses, loops of captured connections): no log line, there is no request.
    pub fn refuse_connection(&self, reason: RejectReason) {
        self.metrics.reject(reason);
    }

    /// Counts a refused request and writes its log line: the one place refusals are recorded.
    pub fn refuse(&self, refusal: &Refusal<'_>) {
        self.metrics.reject(refusal.reason);
        if !self.log_lines {
            return;
        }
        let (host, port) = match refusal.host {
            Some((host, port)) => (host.to_string(), port),
            None => (String::new(), 0),
        };
        self.write_line(&AccessRecord {
            client: refusal.client,
            vendor: refusal.vendor.unwrap_or(""),
            namespace: "",
            pod: "",
            protocol: refusal.protocol,
            method: refusal.method,
            host: &host,
            port,
            url: None,
            status: Some(refusal.status),
            outcome: Outcome::Rejected.as_str(),
            reason: Some(refusal.reason.as_str()),
            error: None,
            sent_bytes: 0,
            received_bytes: 0,
            duration: std::time::Duration::ZERO,
            sni: None,
            alpn: &[],
            tunnel_inner: None,
            closed_by: None,
        });
    }

    pub fn upstream_error(&self, vendor: &Name, reason: UpstreamErrorReason) {
        if self.enabled {
            self.metrics.upstream_error(vendor, reason);
        }
    }

    /// The byte counters of a pod under a vendor.
    pub fn pod_counters(&self, pod: &PodLabels) -> Option<CounterPair> {
        self.enabled.then(|| {
            (
                self.metrics.sent_bytes.get_or_create_owned(pod),
                self.metrics.received_bytes.get_or_create_owned(pod),
            )
        })
    }

    /// The destination key of `host` (its registrable domain, or the host), when the
    /// destination families are on.
    pub fn destination_key(&self, host: &Host) -> Option<String> {
        Some(self.destination_key?.of(host))
    }

    /// The destination label `key` already has under `vendor`, admitting nothing.
    pub fn known_destination(&self, vendor: &Name, key: &str) -> Option<Name> {
        self.destination_key?;
        self.metrics.known_destination(vendor, key)
    }

    /// The capped destination label of `host` under `vendor`; `None` when the families are off.
    pub fn destination(&self, vendor: &Name, host: &Host) -> Option<Name> {
        self.destination_named(vendor, &self.destination_key(host)?)
    }

    /// The capped destination label of an already-computed key (`ip-literal`, `unknown`).
    pub fn destination_named(&self, vendor: &Name, key: &str) -> Option<Name> {
        self.destination_key?;
        self.metrics.destination(vendor, key)
    }

    pub fn has_destinations(&self) -> bool {
        self.enabled && self.destination_key.is_some()
    }

    /// The request counter (its series created at zero) and the byte counters of a
    /// destination label.
    pub fn destination_counters(
        &self,
        vendor: &Name,
        destination: &Name,
    ) -> (Counter, CounterPair) {
        let labels = DestinationLabels {
            proxy_vendor: vendor.clone(),
            destination: destination.clone(),
        };
        (
            self.metrics
                .destination_requests
                .get_or_create_owned(&labels),
            (
                self.metrics
                    .destination_sent_bytes
                    .get_or_create_owned(&labels),
                self.metrics
                    .destination_received_bytes
                    .get_or_create_owned(&labels),
            ),
        )
    }

    /// Counts what a tunnel's client spoke.
    pub fn tunnel(&self, vendor: &Name, inner: TunnelInner) {
        if self.enabled {
            self.metrics
                .tunnels
                .get_or_create(&TunnelLabels {
                    proxy_vendor: vendor.clone(),
                    inner,
                })
                .inc();
        }
    }
}
