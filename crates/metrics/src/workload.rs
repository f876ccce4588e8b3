//! The `source_workload` label from names: the workload a pod belongs to, by the names
//! Kubernetes' controllers give their pods and Jobs. One value per pod, so a wrong guess costs no
//! series. The pod watch (`pt-kube`) knows the owner and needs only [`cronjob_of`]; a sidecar
//! without `POD_WORKLOAD` and a shared meter identifying pods by username have only the pod's
//! name ([`from_pod_name`]).

/// The characters Kubernetes draws generated name suffixes from (`k8s.io/apimachinery`'s
/// `rand.String` and `SafeEncodeString`: no vowels, no 0/1/3, so no words and no look-alikes).
const GENERATED_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` suffixes (a ReplicaSet's, DaemonSet's or Job's pods) are five characters.
const GENERATED_SUFFIX_LEN: usize = 5;

/// A ReplicaSet's `pod-template-hash`: a 32-bit FNV hash in the safe alphabet, up to 10
/// characters; older clusters made shorter ones, hence the lower bound.
const TEMPLATE_HASH_LEN: std::ops::RangeInclusive<usize> = 6..=10;

/// A CronJob names its Jobs `<cronjob>-<minutes since the epoch>`: eight digits or more
/// from 1973 until long after anyone reads this.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn generated(s: &str, len: impl Fn(usize) -> bool) -> bool {
    len(s.len()) && s.bytes().all(|b| GENERATED_ALPHABET.contains(&b))
}

/// The CronJob a Job was started by (`<cronjob>-<minutes>`), or `None` for a Job of its own.
pub fn cronjob_of(job: &str) -> Option<&str> {
    match job.rsplit_once('-') {
        Some((cronjob, minutes))
            if !cronjob.is_empty()
                && minutes.len() >= CRONJOB_SUFFIX_MIN_DIGITS
                && digits(minutes) =>
        {
            Some(cronjob)
        }
        _ => None,
    }
}

/// The workload a pod's name implies: `<deployment>-<template hash>-<suffix>`,
/// `<cronjob>-<minutes>-<suffix>`, `<daemonset or job>-<suffix>`, `<statefulset>-<ordinal>`; a
/// name of none of these shapes is its own workload (a bare pod).
pub fn from_pod_name(pod: &str) -> &str {
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if rest.is_empty() {
        return pod;
    }
    if digits(last) {
        return rest;
    }
    if !generated(last, |n| n == GENERATED_SUFFIX_LEN) {
        return pod;
    }
    match rest.rsplit_once('-') {
        Some((base, hash))
            if !base.is_empty() && generated(hash, |n| TEMPLATE_HASH_LEN.contains(&n)) =>
        {
            base
        }
        _ => cronjob_of(rest).unwrap_or(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(from_pod_name(pod), workload, "{pod}");
        }
    }

    #[test]
    fn a_cronjobs_runs_name_it_and_other_jobs_do_not() {
        assert_eq!(cronjob_of("nightly-crawl-29361840"), Some("nightly-crawl"));
        assert_eq!(cronjob_of("backfill-2"), None);
        assert_eq!(cronjob_of("-29361840"), None);
    }
}
