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
                    UNKNOWN => workload_from_pod_name(&self.pod),
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
        let parts: Vec<&str> = username.split('/').collect();
        let (namespace, workload, pod) = match parts[..] {
            [pod] => (self.default_namespace.as_str(), None, pod),
            [namespace, pod] => (namespace, None, pod),
            [namespace, workload, pod] => (namespace, Some(workload), pod),
            _ => return metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN),
        };
        if !(is_dns_name(namespace) && is_dns_name(pod) && workload.is_none_or(is_dns_name)) {
            return metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN);
        }
        let workload = workload.unwrap_or_else(|| workload_from_pod_name(pod));
        metrics.pod(namespace, workload, pod)
    }
}

/// The characters Kubernetes draws generated name suffixes from (`k8s.io/apimachinery`'s
/// `rand.String` and `SafeEncodeString`: no vowels, no 0/1/3, so no words and no look-alikes).
const GENERATED_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` suffixes (a ReplicaSet's, DaemonSet's or Job's pods) are five characters.
const GENERATED_SUFFIX_LEN: usize = 5;

/// A ReplicaSet's `pod-template-hash`: a 32-bit FNV hash in the safe alphabet, up to 10
/// characters; older clusters made shorter ones, hence the lower bound.
const TEMPLATE_HASH_LEN: std::ops::RangeInclusive<usize> = 6..=10;

/// A CronJob names its Jobs `<cronjob>-<minutes since the epoch>`: eight digits or more.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

/// The workload a pod's name implies, by the names Kubernetes' controllers give their pods:
/// `<deployment>-<template hash>-<suffix>`, `<cronjob>-<minutes>-<suffix>`,
/// `<daemonset or job>-<suffix>`, `<statefulset>-<ordinal>`; a name of none of these shapes is
/// its own workload (a bare pod). What a sidecar without `POD_WORKLOAD` and a shared meter
/// identifying pods by username have; the pod watch (`identity.from: kubernetes`) reads the
/// owner instead. One value per pod, so a wrong guess costs no series.
pub fn workload_from_pod_name(pod: &str) -> &str {
    let generated = |s: &str, len: &dyn Fn(usize) -> bool| {
        len(s.len()) && s.bytes().all(|b| GENERATED_ALPHABET.contains(&b))
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if rest.is_empty() {
        return pod;
    }
    if digits(last) {
        return rest;
    }
    if !generated(last, &|n| n == GENERATED_SUFFIX_LEN) {
        return pod;
    }
    match rest.rsplit_once('-') {
        Some((base, hash))
            if !base.is_empty() && generated(hash, &|n| TEMPLATE_HASH_LEN.contains(&n)) =>
        {
            base
        }
        Some((base, minutes))
            if !base.is_empty()
                && minutes.len() >= CRONJOB_SUFFIX_MIN_DIGITS
                && digits(minutes) =>
        {
            base
        }
        _ => rest,
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
    fn a_pods_name_implies_its_workload_by_the_names_controllers_give() {
        for (pod, workload) in [
            // Deployment: <name>-<pod-template-hash>-<suffix>, hashes of 10 and of 6-9 characters.
            ("shop-crawler-7d9f8b6c4d-x2k9p", "shop-crawler"),
            ("crawler-5c6b7d8f9-abc", "crawler-5c6b7d8f9-abc"),
            ("crawler-fb9c4t-qvz2x", "crawler"),
            // CronJob: <cronjob>-<minutes since the epoch>-<suffix>.
            ("nightly-crawl-29145600-w7xlz", "nightly-crawl"),
            // DaemonSet or Job: <name>-<suffix>.
            ("node-crawler-h7x2q", "node-crawler"),
            // StatefulSet: <name>-<ordinal>.
            ("crawler-db-12", "crawler-db"),
            // Bare pods and names of no controller's shape are their own workload.
            ("crawler", "crawler"),
            ("crawler-alpha", "crawler-alpha"),
            ("crawler-aeiou", "crawler-aeiou"),
            ("-12", "-12"),
        ] {
            assert_eq!(workload_from_pod_name(pod), workload, "{pod}");
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
