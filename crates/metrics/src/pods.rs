//! The pods a meter has seen, as capped label values, and when their series may go.
//!
//! A shared meter in front of a fleet whose pods come and go would, left alone, export the
//! series of every pod it ever saw, forever: Prometheus' staleness handling only helps once the
//! meter stops exporting them. So each admitted pod has an entry that knows when it was last used
//! and whether anything still uses it (every [`PodIdentity`] holds its entry). A departed pod's
//! series are removed once nothing uses it and it has been idle for the configured time, which
//! must exceed the scrape interval: its last values have been scraped by then, so no count is
//! lost, and its place under `metrics.max_pods` goes to a new pod.
//!
//! `unknown` and `other` are not entries: they stay.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::caps::{Name, OTHER, UNKNOWN};

/// The pod a request comes from, as capped label values. While it exists, its pod's series
/// stay exported (its clones and the exchanges holding it keep the pod in use).
#[derive(Clone)]
pub struct PodIdentity {
    pub namespace: Name,
    /// The owning Deployment, StatefulSet, DaemonSet, Job or CronJob, or `unknown`.
    pub workload: Name,
    pub pod: Name,
    entry: Option<Arc<Entry>>,
}

impl PodIdentity {
    /// An identity outside the table (`unknown`, `other`, tests).
    pub fn fixed(namespace: Name, workload: Name, pod: Name) -> PodIdentity {
        PodIdentity {
            namespace,
            workload,
            pod,
            entry: None,
        }
    }

    /// Marks the pod as used now (an exchange of it ended).
    pub fn touch(&self) {
        if let Some(entry) = &self.entry {
            entry.touch();
        }
    }
}

impl PartialEq for PodIdentity {
    fn eq(&self, other: &PodIdentity) -> bool {
        (&self.namespace, &self.workload, &self.pod)
            == (&other.namespace, &other.workload, &other.pod)
    }
}

impl Eq for PodIdentity {}

impl Hash for PodIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (&self.namespace, &self.workload, &self.pod).hash(state);
    }
}

impl fmt::Debug for PodIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.workload, self.pod)
    }
}

/// Resolves the pod behind a request: the seam between the meter and where identities come
/// from (a sidecar's own pod, a proxy username, a Kubernetes pod watch in `pt-kube`). Every
/// answer goes through the pod table of the metrics, so a hostile client cannot mint unbounded
/// label values.
pub trait PodResolver: Send + Sync + fmt::Debug {
    fn resolve(
        &self,
        metrics: &crate::Metrics,
        peer: std::net::SocketAddr,
        username: Option<&str>,
    ) -> PodIdentity;
}

/// An admitted pod.
#[derive(Debug)]
struct Entry {
    names: (Name, Name, Name),
    /// Milliseconds since the table's epoch.
    last_used: AtomicU64,
    epoch: Instant,
}

impl Entry {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The admitted pods, at most `limit` at a time; see the module documentation.
#[derive(Debug)]
pub struct PodTable {
    limit: usize,
    /// By `namespace/workload/pod` (a `/` cannot occur in Kubernetes names).
    entries: RwLock<HashMap<Box<str>, Arc<Entry>>>,
    epoch: Instant,
    other: PodIdentity,
}

impl PodTable {
    pub fn new(limit: usize) -> PodTable {
        let other = Name::new(OTHER);
        PodTable {
            limit,
            entries: RwLock::default(),
            epoch: Instant::now(),
            other: PodIdentity::fixed(other.clone(), other.clone(), other),
        }
    }

    /// The identity of a pod: admitted (now or before), or `other` past the limit.
    pub fn get(&self, namespace: &str, workload: &str, pod: &str) -> PodIdentity {
        if namespace == UNKNOWN && pod == UNKNOWN {
            return PodIdentity::fixed(Name::new(UNKNOWN), Name::new(workload), Name::new(UNKNOWN));
        }
        let key = format!("{namespace}/{workload}/{pod}");
        // A poisoned lock only means another thread panicked mid-insert; the map is still a
        // valid map, and metering must not stop (it fails open).
        let found = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.as_str())
            .cloned();
        let entry = match found {
            Some(entry) => entry,
            None => {
                let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = entries.get(key.as_str()) {
                    entry.clone()
                } else if entries.len() >= self.limit {
                    return self.other.clone();
                } else {
                    let entry = Arc::new(Entry {
                        names: (Name::new(namespace), Name::new(workload), Name::new(pod)),
                        last_used: AtomicU64::new(0),
                        epoch: self.epoch,
                    });
                    entries.insert(key.into_boxed_str(), entry.clone());
                    entry
                }
            }
        };
        entry.touch();
        let (namespace, workload, pod) = entry.names.clone();
        PodIdentity {
            namespace,
            workload,
            pod,
            entry: Some(entry),
        }
    }

    /// Pods admitted now.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the pods nothing uses that have been idle for `ttl`, and returns them.
    pub fn expire(&self, ttl: Duration) -> Vec<PodIdentity> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        // Under the write lock no identity can be handed out, so a count of one (the table's
        // own) means none exists.
        entries.retain(|_, entry| {
            let departed = Arc::strong_count(entry) == 1 && entry.idle_for() >= ttl;
            if departed {
                let (namespace, workload, pod) = entry.names.clone();
                gone.push(PodIdentity::fixed(namespace, workload, pod));
            }
            !departed
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: &PodIdentity) -> [String; 3] {
        [&id.namespace, &id.workload, &id.pod].map(|n| n.as_str().to_owned())
    }

    #[test]
    fn pods_past_the_limit_are_other_until_a_departed_pod_makes_room() {
        let table = PodTable::new(2);
        let a = table.get("crawl", "fleet", "a");
        let b = table.get("crawl", "fleet", "b");
        assert_eq!(names(&table.get("crawl", "fleet", "c")), ["other"; 3]);
        assert_eq!(names(&a), ["crawl", "fleet", "a"]);
        // Still in use: nothing expires.
        assert!(table.expire(Duration::ZERO).is_empty());
        drop(b);
        let gone = table.expire(Duration::ZERO);
        assert_eq!(gone.len(), 1);
        assert_eq!(names(&gone[0]), ["crawl", "fleet", "b"]);
        assert_eq!(
            names(&table.get("crawl", "fleet", "c")),
            ["crawl", "fleet", "c"]
        );
        assert_eq!(
            names(&table.get(UNKNOWN, UNKNOWN, UNKNOWN)),
            ["unknown", "unknown", "unknown"]
        );
        drop(a);
    }

    #[test]
    fn an_unused_pod_stays_until_it_has_been_idle_for_the_ttl() {
        let table = PodTable::new(10);
        drop(table.get("crawl", "fleet", "a"));
        assert!(table.expire(Duration::from_secs(60)).is_empty());
        assert_eq!(table.len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(table.expire(Duration::from_millis(10)).len(), 1);
        assert!(table.is_empty());
    }
}
