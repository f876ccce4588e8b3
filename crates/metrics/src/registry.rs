//! The families of [`crate::spec`], registered in a registry the caller passes in.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

use crate::caps::{LabelCap, Name, UNKNOWN};
use crate::labels::*;
use crate::pods::PodTable;
use crate::spec::{self, FamilySpec};

/// Buckets of `proxy_request_duration_seconds`: from a fast cached answer (5 ms) to the slowest
/// pages crawlers wait for through residential proxies (a minute).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Cardinality settings.
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Distinct destinations per vendor before folding into `other`; 0 turns the destination
    /// families off.
    pub max_destinations_per_vendor: usize,
    /// Distinct (namespace, pod) identities before folding into `other`.
    pub max_pods: usize,
}

/// Label values of the `proxy_vendor` label besides the configured vendors: transparent mode's
/// connections to no vendor.
const EXTRA_VENDORS: [&str; 1] = [UNKNOWN];

/// Every family the meter writes. Fields are the families themselves (cheap, shared handles).
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub sent_bytes: Family<PodLabels, Counter>,
    pub received_bytes: Family<PodLabels, Counter>,
    pub destination_requests: Family<DestinationLabels, Counter>,
    pub destination_sent_bytes: Family<DestinationLabels, Counter>,
    pub destination_received_bytes: Family<DestinationLabels, Counter>,
    pub request_duration: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub active_tunnels: Family<VendorLabels, Gauge>,
    pub tunnels: Family<TunnelLabels, Counter>,
    pub transparent_connections: Family<TransparentLabels, Counter>,
    pub destination_labels: Family<VendorLabels, Gauge>,
    pub open_connections: Gauge,
    destinations: HashMap<Name, LabelCap>,
    destinations_enabled: bool,
    pods: PodTable,
    /// Every value `proxy_vendor` can take.
    vendors: Vec<Name>,
}

fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    spec: FamilySpec,
    metric: &M,
) {
    registry.register(spec.name, spec.help, metric.clone());
}

impl Metrics {
    /// Registers every family in `registry`. `vendors` are the configured vendor names: their
    /// per-vendor series are created at zero now, so dashboards show them before any traffic.
    pub fn new(registry: &mut Registry, vendors: &[Name], options: &MetricsOptions) -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            destination_requests: Family::default(),
            destination_sent_bytes: Family::default(),
            destination_received_bytes: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            upstream_errors: Family::default(),
            rejected: Family::default(),
            active_tunnels: Family::default(),
            tunnels: Family::default(),
            transparent_connections: Family::default(),
            destination_labels: Family::default(),
            open_connections: Gauge::default(),
            destinations: vendors
                .iter()
                .map(|v| {
                    (
                        v.clone(),
                        LabelCap::new(options.max_destinations_per_vendor),
                    )
                })
                .collect(),
            destinations_enabled: options.max_destinations_per_vendor > 0,
            pods: PodTable::new(options.max_pods),
            vendors: vendors
                .iter()
                .cloned()
                .chain(EXTRA_VENDORS.iter().map(|v| Name::new(v)))
                .collect(),
        };
        register(registry, spec::REQUESTS, &metrics.requests);
        register(registry, spec::SENT_BYTES, &metrics.sent_bytes);
        register(registry, spec::RECEIVED_BYTES, &metrics.received_bytes);
        register(
            registry,
            spec::DESTINATION_REQUESTS,
            &metrics.destination_requests,
        );
        register(
            registry,
            spec::DESTINATION_SENT_BYTES,
            &metrics.destination_sent_bytes,
        );
        register(
            registry,
            spec::DESTINATION_RECEIVED_BYTES,
            &metrics.destination_received_bytes,
        );
        register(registry, spec::REQUEST_DURATION, &metrics.request_duration);
        register(registry, spec::UPSTREAM_ERRORS, &metrics.upstream_errors);
        register(registry, spec::REJECTED_REQUESTS, &metrics.rejected);
        register(registry, spec::ACTIVE_TUNNELS, &metrics.active_tunnels);
        register(registry, spec::TUNNELS, &metrics.tunnels);
        register(
            registry,
            spec::TRANSPARENT_CONNECTIONS,
            &metrics.transparent_connections,
        );
        register(
            registry,
            spec::DESTINATION_LABELS,
            &metrics.destination_labels,
        );
        let limit = Gauge::<i64>::default();
        limit.set(i64::try_from(options.max_destinations_per_vendor).unwrap_or(i64::MAX));
        register(registry, spec::DESTINATION_LABEL_LIMIT, &limit);
        register(registry, spec::OPEN_CONNECTIONS, &metrics.open_connections);
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: Name::new(env!("CARGO_PKG_VERSION")),
            })
            .set(1);
        register(registry, spec::BUILD_INFO, &build);

        for vendor in vendors {
            let labels = VendorLabels {
                proxy_vendor: vendor.clone(),
            };
            let _ = metrics.active_tunnels.get_or_create(&labels);
            if metrics.destinations_enabled {
                let _ = metrics.destination_labels.get_or_create(&labels);
            }
        }
        metrics
    }

    /// The capped label values of a client identity. The cap counts pods; a pod past it is
    /// `other` in all three labels.
    pub fn pod(&self, namespace: &str, workload: &str, pod: &str) -> PodIdentity {
        self.pods.get(namespace, workload, pod)
    }

    /// Stops exporting the series of pods nothing has used for `ttl` (see [`crate::pods`]);
    /// returns how many pods went.
    pub fn expire_pods(&self, ttl: std::time::Duration) -> usize {
        let gone = self.pods.expire(ttl);
        for identity in &gone {
            for vendor in &self.vendors {
                let pod = PodLabels::new(vendor, identity);
                self.sent_bytes.remove(&pod);
                self.received_bytes.remove(&pod);
                for protocol in Protocol::ALL {
                    for class in StatusClass::ALL {
                        self.requests
                            .remove(&RequestLabels::new(pod.clone(), protocol, class));
                    }
                }
            }
        }
        gone.len()
    }

    /// The capped destination label value for `key` under `vendor`, or `None` when the
    /// destination families are off or the vendor is not configured.
    /// The destination label `key` already has under `vendor`, admitting nothing; `None` when
    /// it has none yet or the destination families are off.
    pub fn known_destination(&self, vendor: &Name, key: &str) -> Option<Name> {
        if !self.destinations_enabled {
            return None;
        }
        self.destinations.get(vendor)?.known(key)
    }

    pub fn destination(&self, vendor: &Name, key: &str) -> Option<Name> {
        let cap = self.destinations.get(vendor)?;
        if !self.destinations_enabled {
            return None;
        }
        let before = cap.len();
        let name = cap.admit(key);
        let after = cap.len();
        if after != before {
            self.destination_labels
                .get_or_create(&VendorLabels {
                    proxy_vendor: vendor.clone(),
                })
                .set(i64::try_from(after).unwrap_or(i64::MAX));
        }
        Some(name)
    }

    /// Counts a refused client request.
    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    /// Counts a vendor-leg failure.
    pub fn upstream_error(&self, vendor: &Name, reason: UpstreamErrorReason) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                proxy_vendor: vendor.clone(),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn options(max_destinations_per_vendor: usize) -> MetricsOptions {
        MetricsOptions {
            max_destinations_per_vendor,
            max_pods: 2,
        }
    }

    /// A registry in which every family has at least one sample (prometheus-client omits the
    /// descriptors of families without samples).
    fn populated() -> String {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry, &[Name::new("v")], &options(10));
        let n = Name::new;
        crate::prices::register(
            &mut registry,
            &[crate::prices::VendorPrices {
                vendor: n("v"),
                currency: n("USD"),
                sent_byte: 0.0,
                received_byte: 4e-9,
                request: 0.001,
                successful_requests_only: true,
                monthly_fee: 100.0,
                included_bytes: 1_000_000_000,
                cycle_start_day: 1,
                monthly_budget: Some(500.0),
            }],
        );
        let pod = PodLabels {
            proxy_vendor: n("v"),
            source_namespace: n("ns"),
            source_pod: n("p"),
            source_workload: n("w"),
        };
        let _ = metrics.requests.get_or_create(&RequestLabels::new(
            pod.clone(),
            Protocol::Http1,
            StatusClass::Success,
        ));
        let _ = metrics.sent_bytes.get_or_create(&pod);
        let _ = metrics.received_bytes.get_or_create(&pod);
        let dest = DestinationLabels {
            proxy_vendor: n("v"),
            destination: n("d"),
        };
        let _ = metrics.destination_requests.get_or_create(&dest);
        let _ = metrics.destination_sent_bytes.get_or_create(&dest);
        let _ = metrics.destination_received_bytes.get_or_create(&dest);
        metrics.upstream_error(&n("v"), UpstreamErrorReason::Reset);
        metrics.reject(RejectReason::BadRequest);
        let _ = metrics.tunnels.get_or_create(&TunnelLabels {
            proxy_vendor: n("v"),
            inner: TunnelInner::TlsH2,
        });
        let _ = metrics
            .transparent_connections
            .get_or_create(&TransparentLabels {
                proxy_vendor: n("v"),
                client_protocol: ClientProtocol::Socks5,
            });
        let _ = metrics.request_duration.get_or_create(&LatencyLabels {
            proxy_vendor: n("v"),
            protocol: Protocol::Connect,
        });
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn every_family_in_the_spec_is_registered_with_its_type_and_labels() {
        let text = populated();
        for family in spec::ALL {
            let line = format!("# TYPE {} {}\n", family.name, family.kind.as_str());
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, spec::ALL.len());

        let samples = crate::exposition::parse(&text).unwrap();
        for family in spec::ALL {
            let sample = samples
                .iter()
                .find(|s| s.name == family.series())
                .unwrap_or_else(|| panic!("no sample of {}", family.name));
            let names: Vec<&str> = sample.labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, family.labels, "{}", family.name);
        }
    }

    #[test]
    fn destinations_are_capped_per_vendor_and_counted() {
        let mut registry = Registry::default();
        let vendors = [Name::new("a"), Name::new("b")];
        let metrics = Metrics::new(&mut registry, &vendors, &options(1));
        assert_eq!(
            metrics.destination(&vendors[0], "x.com").unwrap().as_str(),
            "x.com"
        );
        assert_eq!(
            metrics.destination(&vendors[0], "y.com").unwrap().as_str(),
            "other"
        );
        assert_eq!(
            metrics.destination(&vendors[1], "y.com").unwrap().as_str(),
            "y.com"
        );
        assert_eq!(metrics.destination(&Name::new("nope"), "y.com"), None);
        let gauge = metrics.destination_labels.get_or_create(&VendorLabels {
            proxy_vendor: vendors[0].clone(),
        });
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn a_zero_destination_limit_turns_the_families_off() {
        let mut registry = Registry::default();
        let vendors = [Name::new("a")];
        let metrics = Metrics::new(&mut registry, &vendors, &options(0));
        assert_eq!(metrics.destination(&vendors[0], "x.com"), None);
    }

    #[test]
    fn a_departed_pods_series_go_and_the_others_stay() {
        let mut registry = Registry::default();
        let vendor = Name::new("v");
        let metrics = Metrics::new(&mut registry, std::slice::from_ref(&vendor), &options(10));
        let count = |id: &PodIdentity, n: u64| {
            let pod = PodLabels::new(&vendor, id);
            metrics.sent_bytes.get_or_create(&pod).inc_by(n);
            metrics
                .requests
                .get_or_create(&RequestLabels::new(
                    pod,
                    Protocol::Connect,
                    StatusClass::Success,
                ))
                .inc();
        };
        let staying = metrics.pod("crawl", "fleet", "staying");
        let departed = metrics.pod("crawl", "fleet", "departed");
        count(&staying, 10);
        count(&departed, 20);
        drop(departed);
        assert_eq!(metrics.expire_pods(std::time::Duration::ZERO), 1);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let scrape = crate::exposition::Scrape::parse(&text).unwrap();
        assert_eq!(
            scrape.sum("proxy_sent_bytes_total", &[("source_pod", "departed")]),
            0
        );
        assert!(!text.contains("departed"), "{text}");
        assert_eq!(
            scrape.sum("proxy_sent_bytes_total", &[("source_pod", "staying")]),
            10
        );
        assert_eq!(scrape.sum("proxy_requests_total", &[]), 1);
        drop(staying);
    }

    #[test]
    fn pods_past_the_cap_become_other() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry, &[], &options(1));
        let names = |ns: &str, w: &str, p: &str| {
            let id = metrics.pod(ns, w, p);
            [id.namespace, id.workload, id.pod].map(|n| n.as_str().to_owned())
        };
        assert_eq!(names("crawl", "fleet", "p1"), ["crawl", "fleet", "p1"]);
        assert_eq!(names("crawl", "unknown", "p2"), ["crawl", "unknown", "p2"]);
        assert_eq!(names("crawl", "fleet", "p3"), ["other", "other", "other"]);
        assert_eq!(
            names("unknown", "unknown", "unknown"),
            ["unknown", "unknown", "unknown"]
        );
        assert_eq!(names("crawl", "fleet", "p1"), ["crawl", "fleet", "p1"]);
    }
}
