//! The workload a pod belongs to: the `source_workload` label, which outlives pod churn.
//!
//! Pods of a Deployment are owned by a ReplicaSet named `<deployment>-<pod-template-hash>`;
//! pods of a CronJob by a Job named `<cronjob>-<scheduled minute>`. Both suffixes change on
//! every rollout or run, so they are stripped; StatefulSet, DaemonSet and other owners give
//! their own name. A pod without an owner is its own workload.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label the ReplicaSet controller stamps on its pods and appends to its own name.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The workload's name, or `None` when the pod has neither an owner nor a name yet.
pub fn workload_of(meta: &ObjectMeta) -> Option<String> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let Some(owner) = owner else {
        return meta
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                meta.generate_name
                    .as_deref()
                    .map(|g| g.trim_end_matches('-').to_owned())
            })
            .filter(|n| !n.is_empty());
    };
    let name = owner.name.as_str();
    let workload = match owner.kind.as_str() {
        "ReplicaSet" => meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(POD_TEMPLATE_HASH))
            .and_then(|hash| name.strip_suffix(hash.as_str()))
            .and_then(|rest| rest.strip_suffix('-'))
            .unwrap_or(name),
        "Job" => pt_metrics::workload::cronjob_of(name).unwrap_or(name),
        _ => name,
    };
    Some(workload.to_owned()).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned_by(kind: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            generate_name: Some(format!("{name}-")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: "0".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_deployments_pods_belong_to_the_deployment_across_rollouts() {
        let meta = owned_by(
            "ReplicaSet",
            "crawler-7d9c8b5f4",
            &[("pod-template-hash", "7d9c8b5f4")],
        );
        assert_eq!(workload_of(&meta).as_deref(), Some("crawler"));
    }

    #[test]
    fn a_replicaset_without_the_hash_label_is_its_own_workload() {
        let meta = owned_by("ReplicaSet", "crawler-7d9c8b5f4", &[]);
        assert_eq!(workload_of(&meta).as_deref(), Some("crawler-7d9c8b5f4"));
    }

    #[test]
    fn a_cronjobs_runs_belong_to_the_cronjob_and_a_plain_job_to_itself() {
        let run = owned_by("Job", "nightly-crawl-29361840", &[]);
        assert_eq!(workload_of(&run).as_deref(), Some("nightly-crawl"));
        let job = owned_by("Job", "backfill-2", &[]);
        assert_eq!(workload_of(&job).as_deref(), Some("backfill-2"));
    }

    #[test]
    fn statefulsets_and_daemonsets_name_themselves() {
        assert_eq!(
            workload_of(&owned_by("StatefulSet", "fetcher", &[])).as_deref(),
            Some("fetcher")
        );
        assert_eq!(
            workload_of(&owned_by("DaemonSet", "node-crawler", &[])).as_deref(),
            Some("node-crawler")
        );
    }

    #[test]
    fn a_bare_pod_is_its_own_workload() {
        let named = ObjectMeta {
            name: Some("debug-crawler".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(workload_of(&named).as_deref(), Some("debug-crawler"));
        let generated = ObjectMeta {
            generate_name: Some("probe-".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(workload_of(&generated).as_deref(), Some("probe"));
        assert_eq!(workload_of(&ObjectMeta::default()), None);
    }
}
