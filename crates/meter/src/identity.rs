//! Which pod a request comes from: the `source_namespace` and `source_pod` labels.
//!
//! [`PodResolver`] is the seam: a sidecar knows its own pod from the Downward API
//! ([`FixedIdentity`]); a shared meter may trust the client's Proxy-Authorization username
//! ([`UsernameIdentity`]). Mapping a client's source IP to its pod through the Kubernetes API is a
//! third implementation of the same trait. Every answer passes through the pod cardinality cap of
//! the metrics crate, so a hostile client cannot mint unbounded label values.

use std::net::SocketAddr;

use pt_config::IdentityConfig;
use pt_metrics::Metrics;
use pt_metrics::caps::{Name, UNKNOWN};

/// A pod identity as label values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: Name,
    pub pod: Name,
}

/// Resolves the pod behind a request.
pub trait PodResolver: Send + Sync + std::fmt::Debug {
    fn resolve(&self, metrics: &Metrics, peer: SocketAddr, username: Option<&str>) -> PodIdentity;
}

/// The same identity for every request (a sidecar's own pod), resolved once.
#[derive(Debug)]
pub struct FixedIdentity {
    namespace: String,
    pod: String,
    resolved: std::sync::OnceLock<PodIdentity>,
}

impl PodResolver for FixedIdentity {
    fn resolve(&self, metrics: &Metrics, _: SocketAddr, _: Option<&str>) -> PodIdentity {
        self.resolved
            .get_or_init(|| {
                let (namespace, pod) = metrics.pod(&self.namespace, &self.pod);
                PodIdentity { namespace, pod }
            })
            .clone()
    }
}

/// `namespace/pod` or `pod` from the client's Proxy-Authorization username.
#[derive(Debug)]
pub struct UsernameIdentity {
    default_namespace: String,
}

impl PodResolver for UsernameIdentity {
    fn resolve(&self, metrics: &Metrics, _: SocketAddr, username: Option<&str>) -> PodIdentity {
        let (namespace, pod) = match username.map(|u| u.split_once('/')) {
            Some(Some((ns, pod))) => (ns, pod),
            Some(None) => (self.default_namespace.as_str(), username.unwrap_or(UNKNOWN)),
            None => (UNKNOWN, UNKNOWN),
        };
        let (namespace, pod) = if is_dns_name(namespace) && is_dns_name(pod) {
            metrics.pod(namespace, pod)
        } else {
            metrics.pod(UNKNOWN, UNKNOWN)
        };
        PodIdentity { namespace, pod }
    }
}

/// Kubernetes object names: lower-case letters, digits, '-' and '.', at most 253 bytes.
fn is_dns_name(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The resolver the config asks for.
pub fn resolver(config: &IdentityConfig) -> Box<dyn PodResolver> {
    match config {
        IdentityConfig::Fixed { namespace, pod } => Box::new(FixedIdentity {
            namespace: namespace.clone(),
            pod: pod.clone(),
            resolved: std::sync::OnceLock::new(),
        }),
        IdentityConfig::ProxyUsername { default_namespace } => Box::new(UsernameIdentity {
            default_namespace: default_namespace.clone(),
        }),
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

    fn pair(id: PodIdentity) -> (String, String) {
        (id.namespace.to_string(), id.pod.to_string())
    }

    #[test]
    fn usernames_name_the_pod_with_or_without_namespace() {
        let metrics = metrics();
        let resolver = resolver(&IdentityConfig::ProxyUsername {
            default_namespace: "crawlers".into(),
        });
        let got = |u: Option<&str>| pair(resolver.resolve(&metrics, peer(), u));
        assert_eq!(
            got(Some("team-x/crawler-1")),
            ("team-x".into(), "crawler-1".into())
        );
        assert_eq!(
            got(Some("crawler-2")),
            ("crawlers".into(), "crawler-2".into())
        );
        assert_eq!(got(None), ("unknown".into(), "unknown".into()));
        assert_eq!(
            got(Some("Robert'); DROP")),
            ("unknown".into(), "unknown".into())
        );
    }

    #[test]
    fn a_sidecar_always_reports_its_own_pod() {
        let metrics = metrics();
        let resolver = resolver(&IdentityConfig::Fixed {
            namespace: "crawlers".into(),
            pod: "crawler-7d9f".into(),
        });
        assert_eq!(
            pair(resolver.resolve(&metrics, peer(), Some("someone/else"))),
            ("crawlers".into(), "crawler-7d9f".into())
        );
    }
}
