//! Pods as the Kubernetes API returns them, for the pod-index tests.

use serde_json::{Value, json};

/// A pod of Deployment `workload` (through its ReplicaSet), running at `ip`.
pub fn pod(name: &str, workload: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "crawlers",
            "uid": format!("uid-{name}"),
            "resourceVersion": next_version(),
            "labels": {"pod-template-hash": "5f7b9"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{workload}-5f7b9"),
                "uid": format!("rs-{workload}"), "controller": true
            }]
        },
        "spec": {"containers": [{"name": "crawler", "image": "example/crawler:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// Every object the API server returns carries a resource version; the watcher resumes from it.
fn next_version() -> String {
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);
    (VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).to_string()
}
