//! Pod attribution for a shared meter: the client's source IP to its namespace, pod and
//! workload, through a watch of pods.
//!
//! This is a reflector with a compact store: kube-rs' `watcher` delivers the list and the
//! changes, and [`PodIndex`] keeps only what a label needs (a few short strings per pod) rather
//! than whole pod objects, so 10,000 pods fit in a few MiB. A re-list (after a disconnection)
//! replaces the whole index atomically, so pods deleted meanwhile disappear.
//!
//! IP reuse: a pod IP is released when its pod ends and may be handed to a new pod before the
//! old pod's deletion is seen. The newest pod to claim an IP owns it, and an entry is only
//! removed by the pod (uid) that owns it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use pt_metrics::Metrics;
use pt_metrics::caps::UNKNOWN;
use pt_metrics::pods::{PodIdentity, PodResolver};

use crate::workload::workload_of;

/// What the index keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub uid: Arc<str>,
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub workload: Arc<str>,
}

#[derive(Debug, Default)]
struct Index {
    by_ip: HashMap<IpAddr, PodEntry>,
    /// Each pod's IPs, to drop them when the pod ends or changes IP.
    by_uid: HashMap<Arc<str>, Vec<IpAddr>>,
}

/// Pod IPs to pods, fed by [`watch`] (or directly, in tests), read by the meter.
#[derive(Debug)]
pub struct PodIndex {
    max_pods: usize,
    current: RwLock<Index>,
    /// A re-list in progress: built aside, swapped in when complete.
    relisting: std::sync::Mutex<Option<Index>>,
    /// Set once the first full list is in.
    synced: tokio::sync::watch::Sender<bool>,
    /// Pods left out because the index was full (logged once).
    overflowed: std::sync::atomic::AtomicBool,
}

impl PodIndex {
    /// An empty index that holds at most `max_pods` pods; pods beyond it resolve as unknown.
    pub fn new(max_pods: usize) -> PodIndex {
        PodIndex {
            max_pods,
            current: RwLock::default(),
            relisting: std::sync::Mutex::default(),
            synced: tokio::sync::watch::Sender::new(false),
            overflowed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The pod using this IP, if any.
    pub fn get(&self, ip: IpAddr) -> Option<PodEntry> {
        let ip = ip.to_canonical();
        self.current.read().ok()?.by_ip.get(&ip).cloned()
    }

    /// Pods indexed.
    pub fn len(&self) -> usize {
        self.current.read().map(|i| i.by_uid.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first complete list has been applied.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Applies one watch event.
    pub fn apply(&self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) => self.with_current(|index| self.upsert(index, &pod)),
            Event::Delete(pod) => self.with_current(|index| {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    remove(index, uid);
                }
            }),
            Event::Init => {
                if let Ok(mut relisting) = self.relisting.lock() {
                    *relisting = Some(Index::default());
                }
            }
            Event::InitApply(pod) => {
                if let Ok(mut relisting) = self.relisting.lock()
                    && let Some(index) = relisting.as_mut()
                {
                    self.upsert(index, &pod);
                }
            }
            Event::InitDone => {
                let fresh = self.relisting.lock().ok().and_then(|mut r| r.take());
                if let Some(fresh) = fresh
                    && let Ok(mut current) = self.current.write()
                {
                    *current = fresh;
                }
                self.synced.send_replace(true);
            }
        }
    }

    fn with_current(&self, f: impl FnOnce(&mut Index)) {
        if let Ok(mut index) = self.current.write() {
            f(&mut index);
        }
    }

    fn upsert(&self, index: &mut Index, pod: &Pod) {
        let meta = &pod.metadata;
        let Some(uid) = meta.uid.as_deref() else {
            return;
        };
        let (status, spec) = (pod.status.as_ref(), pod.spec.as_ref());
        let ended = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        // A host-network pod shares the node's IP with every other such pod: ambiguous.
        let host_network = spec.and_then(|s| s.host_network) == Some(true);
        let ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse::<IpAddr>().ok())
            .chain(
                status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse().ok()),
            )
            .map(|ip: IpAddr| ip.to_canonical())
            .collect();
        remove(index, uid);
        // A terminating pod keeps its IP (and its traffic) until it is gone; a finished one has
        // given its IP back.
        if ended || host_network || ips.is_empty() {
            return;
        }
        if index.by_uid.len() >= self.max_pods {
            if !self
                .overflowed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    max_pods = self.max_pods,
                    "pod index full: further pods are attributed as unknown (raise identity.kubernetes.max_pods)"
                );
            }
            return;
        }
        let entry = PodEntry {
            uid: Arc::from(uid),
            namespace: Arc::from(meta.namespace.as_deref().unwrap_or(UNKNOWN)),
            pod: Arc::from(meta.name.as_deref().unwrap_or(UNKNOWN)),
            workload: Arc::from(workload_of(meta).as_deref().unwrap_or(UNKNOWN)),
        };
        let mut owned = Vec::with_capacity(ips.len());
        for ip in ips {
            if owned.contains(&ip) {
                continue;
            }
            // The newest claim wins; the previous owner forgets this IP.
            if let Some(previous) = index.by_ip.insert(ip, entry.clone())
                && previous.uid != entry.uid
                && let Some(theirs) = index.by_uid.get_mut(&previous.uid)
            {
                theirs.retain(|i| *i != ip);
            }
            owned.push(ip);
        }
        index.by_uid.insert(entry.uid, owned);
    }
}

/// Drops a pod and the IPs it still owns.
fn remove(index: &mut Index, uid: &str) {
    let Some(ips) = index.by_uid.remove(uid) else {
        return;
    };
    for ip in ips {
        if index.by_ip.get(&ip).is_some_and(|e| &*e.uid == uid) {
            index.by_ip.remove(&ip);
        }
    }
}

impl PodResolver for PodIndex {
    fn resolve(&self, metrics: &Metrics, peer: SocketAddr, _: Option<&str>) -> PodIdentity {
        match self.get(peer.ip()) {
            Some(entry) => metrics.pod(&entry.namespace, &entry.workload, &entry.pod),
            None => metrics.pod(UNKNOWN, UNKNOWN, UNKNOWN),
        }
    }
}

/// The watch's scope: every namespace, optionally only the pods of one node (a per-node meter).
pub fn watcher_config(node: Option<&str>) -> watcher::Config {
    let config = watcher::Config::default();
    match node {
        Some(node) => config.fields(&format!("spec.nodeName={node}")),
        None => config,
    }
}

/// Feeds `index` from a watch of pods until `stop` is cancelled, re-connecting with backoff.
pub async fn watch(
    client: kube::Client,
    config: watcher::Config,
    index: Arc<PodIndex>,
    stop: tokio_util::sync::CancellationToken,
) {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            () = stop.cancelled() => return,
        };
        match next {
            Some(Ok(event)) => index.apply(event),
            Some(Err(error)) => tracing::warn!(%error, "pod watch failed; retrying"),
            None => return,
        }
    }
}
