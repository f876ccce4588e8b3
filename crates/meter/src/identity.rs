//! Which pod a request comes from: the `source_namespace`, `source_pod` and `source_workload`
//! labels.
//!
//! [`PodResolver`] is the seam: a sidecar knows its own pod from the Downward API
//! ([`FixedIdentity`]); a shared meter may trust the client's Proxy-Authorization username
//! ([`UsernameIdentity`]) or map the client's source IP to its pod through a Kubernetes pod watch
//! (`pt-kube`, passed to [`crate::start_with`]). Every answer passes through the pod cardinality
//! cap of the metrics crate, so a hostile client cannot mint unbounded label values.

use std::net::SocketAddr;

use pt_config::IdentityConfig;
use pt_metrics::Metrics;
use pt_metrics::caps::UNKNOWN;
pub use pt_metrics::pods::{PodIdentity, PodResolver};

/// The same identity for every request (a sidecar's own pod), resolved once.
#[derive(Debug)]
pub struct FixedIdentity {
    namespace: String,
    workload: String,
    pod: String,
    resolved: std::sync::OnceLock<PodIdentity>,
}

impl PodResolver for FixedIdentity {
    fn resolve(&self, metrics: &Metrics, _: SocketAddr, _: Option<&str>) -> PodIdentity {
        self.resolved
            .get_or_init(|| {
                let workload = match self.workload.as_str() {
                    UNKNOWN => pt_metrics::workload::from_pod_name(&self.pod),
                    given => given,
                };
                metrics.pod(&self.namespace, workload, &self.pod)
            })
            .clone()
    }
}

/// `namespace/workload/pod`, `namespace/pod` or `pod` from the client's Proxy-Authorization
/// username; without a workload, the one its name implies.
#[derive(Debug)]
pub struct UsernameIdentity {
    default_namespace: String,
}

impl PodResolver for UsernameIdentity {
    fn resolve(&self, metrics: &Metrics, _: SocketAddr, username: Option<&str>) -> PodIdentity {
        let Some(username) = username else {
            return metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN);
        };
        let mut parts = username.split('/');
        let (namespace, workload, pod) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(pod), None, _, _) => (self.default_namespace.as_str(), None, pod),
                (Some(namespace), Some(pod), None, _) => (namespace, None, pod),
                (Some(namespace), Some(workload), Some(pod), None) => {
                    (namespace, Some(workload), pod)
                }
                _ => return metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN),
            };
        if !(is_dns_name(namespace) && is_dns_name(pod) && workload.is_none_or(is_dns_name)) {
            return metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN);
        }
        let workload = workload.unwrap_or_else(|| pt_metrics::workload::from_pod_name(pod));
        metrics.pod(namespace, workload, pod)
    }
}

/// Kubernetes object names: lower-case letters, digits, '-' and '.', at most 253 bytes.
pub fn is_dns_name(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The resolver the config asks for; `None` for `kubernetes`, whose resolver the caller
/// supplies (it needs a client of the Kubernetes API).
pub fn resolver(config: &IdentityConfig) -> Option<std::sync::Arc<dyn PodResolver>> {
    match config {
        IdentityConfig::Fixed {
            namespace,
            workload,
            pod,
        } => Some(std::sync::Arc::new(FixedIdentity {
            namespace: namespace.clone(),
            workload: workload.clone(),
            pod: pod.clone(),
            resolved: std::sync::OnceLock::new(),
        })),
        IdentityConfig::ProxyUsername { default_namespace } => {
            Some(std::sync::Arc::new(UsernameIdentity {
                default_namespace: default_namespace.clone(),
            }))
        }
        IdentityConfig::Kubernetes { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use pt_metrics::MetricsOptions;

    fn metrics() -> Metrics {
        Metrics::new(
            &mut Registry::default(),
            &[],
            &MetricsOptions {
                max_destinations_per_vendor: 1,
                max_pods: 10,
            },
        )
    }

    fn peer() -> SocketAddr {
        "10.0.0.9:40000".parse().unwrap()
    }

    fn labels(id: PodIdentity) -> [String; 3] {
        [id.namespace, id.workload, id.pod].map(|n| n.to_string())
    }

    #[test]
    fn usernames_name_the_pod_with_or_without_namespace_and_workload() {
        let metrics = metrics();
        let resolver = resolver(&IdentityConfig::ProxyUsername {
            default_namespace: "crawlers".into(),
        })
        .unwrap();
        let got = |u: Option<&str>| labels(resolver.resolve(&metrics, peer(), u));
        assert_eq!(
            got(Some("team-x/crawler-7d9f8b6c4d-x2k9p")),
            ["team-x", "crawler", "crawler-7d9f8b6c4d-x2k9p"]
        );
        assert_eq!(
            got(Some("team-x/shop-crawler/crawler-1")),
            ["team-x", "shop-crawler", "crawler-1"]
        );
        assert_eq!(got(Some("crawler-2")), ["crawlers", "crawler", "crawler-2"]);
        for hostile in [
            None,
            Some("Robert'); DROP"),
            Some("a/b/c/d"),
            Some("team-x//pod"),
            Some("team-x/Shop/pod"),
        ] {
            assert_eq!(
                got(hostile),
                ["unknown", "unknown", "unknown"],
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn a_sidecar_without_pod_workload_takes_it_from_its_pods_name() {
        let metrics = metrics();
        let resolver = resolver(&IdentityConfig::Fixed {
            namespace: "crawlers".into(),
            workload: "unknown".into(),
            pod: "crawler-7d9f8b6c4d-x2k9p".into(),
        })
        .unwrap();
        assert_eq!(
            labels(resolver.resolve(&metrics, peer(), None)),
            ["crawlers", "crawler", "crawler-7d9f8b6c4d-x2k9p"]
        );
    }

    #[test]
    fn a_sidecar_always_reports_its_own_pod() {
        let metrics = metrics();
        let resolver = resolver(&IdentityConfig::Fixed {
            namespace: "crawlers".into(),
            workload: "crawler".into(),
            pod: "crawler-7d9f".into(),
        })
        .unwrap();
        let id = resolver.resolve(&metrics, peer(), Some("someone/else"));
        assert_eq!(
            [id.namespace, id.workload, id.pod].map(|n| n.to_string()),
            ["crawlers", "crawler", "crawler-7d9f"]
        );
    }
}
