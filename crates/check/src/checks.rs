//! Requirements a–d, and the reconciliation with a load ledger.

use std::collections::{BTreeMap, BTreeSet};

use pt_load::ledger::Ledger;
use pt_load::report::human_bytes;
use pt_metrics::spec::{self, FamilySpec};
use pt_sniff::authority::parse_host;
use pt_sniff::destination::DestinationKey;
use serde::Serialize;

use crate::source::Figures;

const VENDOR: &str = spec::label::PROXY_VENDOR;
const NAMESPACE: &str = spec::label::SOURCE_NAMESPACE;
const POD: &str = spec::label::SOURCE_POD;
const DESTINATION: &str = spec::label::DESTINATION;
const PROTOCOL: &str = spec::label::PROTOCOL;

/// What to check against.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Vendors that must have traffic (besides those of the ledger).
    pub expected_vendors: Vec<String>,
    /// How many destinations and pods to list per vendor.
    pub top: usize,
    pub ledger: Option<Ledger>,
    /// How the meter folds hosts into destinations (to fold the ledger's hosts the same way).
    pub destination_key: DestinationKey,
}

/// One requirement's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub id: &'static str,
    pub title: &'static str,
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    /// The figures, as lines for humans.
    pub lines: Vec<String>,
    /// The figures, structured.
    pub data: serde_json::Value,
}

/// Every check's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub checks: Vec<CheckResult>,
}

type ByVendor = BTreeMap<String, u64>;

fn by_vendor(figures: &Figures, family: FamilySpec) -> ByVendor {
    figures
        .sum_by(family, &[VENDOR])
        .into_iter()
        .map(|(k, v)| (k[0].clone(), v))
        .collect()
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decides a–d (and the reconciliation when a ledger is given).
pub fn evaluate(figures: &Figures, options: &Options) -> Verdict {
    let requests = by_vendor(figures, spec::REQUESTS);
    let mut vendors: BTreeSet<String> = requests.keys().cloned().collect();
    vendors.extend(options.expected_vendors.iter().cloned());
    if let Some(ledger) = &options.ledger {
        vendors.extend(ledger.entries.iter().map(|e| e.vendor.clone()));
    }
    let active: Vec<&String> = vendors
        .iter()
        .filter(|v| requests.get(*v).copied().unwrap_or(0) > 0)
        .collect();
    let mut checks = vec![
        check_requests(&vendors, &requests, options),
        check_destinations(figures, &active, &requests, options.top),
        check_bytes(figures, &active, Bytes::Sent, options.top),
        check_bytes(figures, &active, Bytes::Received, options.top),
    ];
    if let Some(ledger) = &options.ledger {
        checks.push(reconcile(figures, ledger, options.destination_key));
    }
    Verdict {
        pass: checks.iter().all(|c| c.pass),
        checks,
    }
}

fn check_requests(
    vendors: &BTreeSet<String>,
    requests: &ByVendor,
    options: &Options,
) -> CheckResult {
    let mut reasons = Vec::new();
    let mut lines = Vec::new();
    let must: BTreeSet<&String> = options
        .expected_vendors
        .iter()
        .chain(
            options
                .ledger
                .iter()
                .flat_map(|l| l.entries.iter().map(|e| &e.vendor)),
        )
        .collect();
    for vendor in vendors {
        let n = requests.get(vendor).copied().unwrap_or(0);
        lines.push(format!("{vendor:<16} {:>14} requests", count(n)));
        if n == 0 && must.contains(vendor) {
            reasons.push(format!("{vendor}: no requests"));
        }
    }
    if requests.values().sum::<u64>() == 0 {
        reasons.push("no requests through any vendor".into());
    }
    CheckResult {
        id: "A",
        title: "Requests per proxy vendor",
        pass: reasons.is_empty(),
        reasons,
        lines,
        data: serde_json::json!({ "requests_by_vendor": requests }),
    }
}

fn check_destinations(
    figures: &Figures,
    active: &[&String],
    requests: &ByVendor,
    top: usize,
) -> CheckResult {
    let mut reasons = Vec::new();
    let mut lines = Vec::new();
    let per = figures.sum_by(spec::DESTINATION_REQUESTS, &[VENDOR, DESTINATION]);
    let sent = figures.sum_by(spec::DESTINATION_SENT_BYTES, &[VENDOR, DESTINATION]);
    let received = figures.sum_by(spec::DESTINATION_RECEIVED_BYTES, &[VENDOR, DESTINATION]);
    let mut data = BTreeMap::new();
    for vendor in active {
        let mut rows: Vec<(&Vec<String>, u64)> = per
            .iter()
            .filter(|(k, _)| &k[0] == *vendor)
            .map(|(k, v)| (k, *v))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let total: u64 = rows.iter().map(|(_, n)| n).sum();
        let expected = requests.get(*vendor).copied().unwrap_or(0);
        lines.push(format!("{vendor}: {} destinations", rows.len()));
        if rows.is_empty() {
            reasons.push(format!(
                "{vendor}: no destination series (is metrics.destination_label off?)"
            ));
        } else if total != expected {
            reasons.push(format!(
                "{vendor}: {} requests by destination but {} by pod",
                count(total),
                count(expected)
            ));
        }
        let mut listed = Vec::new();
        for (key, n) in rows.iter().take(top) {
            lines.push(format!(
                "  {:<32} {:>12} req {:>12} sent {:>12} received",
                key[1],
                count(*n),
                human_bytes(sent.get(*key).copied().unwrap_or(0)),
                human_bytes(received.get(*key).copied().unwrap_or(0))
            ));
            listed.push(serde_json::json!({
                "destination": key[1],
                "requests": n,
                "sent_bytes": sent.get(*key).copied().unwrap_or(0),
                "received_bytes": received.get(*key).copied().unwrap_or(0),
            }));
        }
        data.insert((*vendor).clone(), listed);
    }
    CheckResult {
        id: "B",
        title: "Destinations per proxy vendor",
        pass: reasons.is_empty() && !active.is_empty(),
        reasons,
        lines,
        data: serde_json::json!({ "top_destinations": data }),
    }
}

#[derive(Clone, Copy)]
enum Bytes {
    Sent,
    Received,
}

fn check_bytes(figures: &Figures, active: &[&String], which: Bytes, top: usize) -> CheckResult {
    let (pod_family, dest_family, id, title) = match which {
        Bytes::Sent => (
            spec::SENT_BYTES,
            spec::DESTINATION_SENT_BYTES,
            "C",
            "Bytes sent per vendor and pod",
        ),
        Bytes::Received => (
            spec::RECEIVED_BYTES,
            spec::DESTINATION_RECEIVED_BYTES,
            "D",
            "Bytes received per vendor and pod",
        ),
    };
    let mut reasons = Vec::new();
    let mut lines = Vec::new();
    let per_vendor = by_vendor(figures, pod_family);
    let per_destination = by_vendor(figures, dest_family);
    let destinations_on = !figures.rows(spec::DESTINATION_REQUESTS).is_empty();
    let per_pod = figures.sum_by(pod_family, &[VENDOR, NAMESPACE, POD]);
    let mut data = BTreeMap::new();
    for vendor in active {
        let total = per_vendor.get(*vendor).copied().unwrap_or(0);
        lines.push(format!(
            "{vendor:<16} {:>14} ({} bytes)",
            human_bytes(total),
            count(total)
        ));
        if total == 0 {
            reasons.push(format!("{vendor}: requests but no bytes"));
        }
        let by_destination = per_destination.get(*vendor).copied().unwrap_or(0);
        if destinations_on && by_destination != total {
            reasons.push(format!(
                "{vendor}: {} bytes by pod but {} by destination",
                count(total),
                count(by_destination)
            ));
        }
        let mut pods: Vec<(&Vec<String>, u64)> = per_pod
            .iter()
            .filter(|(k, _)| &k[0] == *vendor)
            .map(|(k, v)| (k, *v))
            .collect();
        pods.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut listed = Vec::new();
        for (key, n) in pods.iter().take(top) {
            lines.push(format!(
                "  {:<40} {:>14}",
                format!("{}/{}", key[1], key[2]),
                human_bytes(*n)
            ));
            listed.push(serde_json::json!({ "namespace": key[1], "pod": key[2], "bytes": n }));
        }
        data.insert(
            (*vendor).clone(),
            serde_json::json!({ "total": total, "pods": pods.len(), "top_pods": listed }),
        );
    }
    CheckResult {
        id,
        title,
        pass: reasons.is_empty() && !active.is_empty(),
        reasons,
        lines,
        data: serde_json::json!(data),
    }
}

/// Compares two keyed tallies; every difference is a reason.
fn compare(
    what: &str,
    meter: &BTreeMap<Vec<String>, u64>,
    truth: &BTreeMap<Vec<String>, u64>,
    reasons: &mut Vec<String>,
) -> usize {
    let keys: BTreeSet<&Vec<String>> = meter.keys().chain(truth.keys()).collect();
    let mut compared = 0;
    for key in keys {
        let (m, t) = (
            meter.get(key).copied().unwrap_or(0),
            truth.get(key).copied().unwrap_or(0),
        );
        if m == 0 && t == 0 {
            continue;
        }
        compared += 1;
        if m != t {
            reasons.push(format!(
                "{what} {}: meter {}, ground truth {}",
                key.join(" "),
                count(m),
                count(t)
            ));
        }
    }
    compared
}

fn reconcile(figures: &Figures, ledger: &Ledger, key: DestinationKey) -> CheckResult {
    let mut reasons = Vec::new();
    let meter_pods = figures.sum_by(spec::REQUESTS, &[VENDOR, NAMESPACE, POD]);
    let truth_pods = ledger.sum_by(
        |e| vec![e.vendor.clone(), e.namespace.clone(), e.pod.clone()],
        |e| e.proxy_requests.total(),
    );
    let pods = compare("requests of", &meter_pods, &truth_pods, &mut reasons);

    let meter_protocols = figures.sum_by(spec::REQUESTS, &[VENDOR, PROTOCOL]);
    let mut truth_protocols = BTreeMap::new();
    for e in &ledger.entries {
        for (protocol, n) in [
            ("http1", e.proxy_requests.http1),
            ("h2", e.proxy_requests.h2),
            ("connect", e.proxy_requests.connect),
        ] {
            *truth_protocols
                .entry(vec![e.vendor.clone(), protocol.to_owned()])
                .or_insert(0) += n;
        }
    }
    compare(
        "requests of",
        &meter_protocols,
        &truth_protocols,
        &mut reasons,
    );

    let mut destinations = 0;
    if !figures.rows(spec::DESTINATION_REQUESTS).is_empty() {
        let meter_destinations = figures.sum_by(spec::DESTINATION_REQUESTS, &[VENDOR, DESTINATION]);
        let truth_destinations = ledger.sum_by(
            |e| {
                let destination = parse_host(&e.host)
                    .map(|h| key.of(&h))
                    .unwrap_or_else(|_| e.host.clone());
                vec![e.vendor.clone(), destination]
            },
            |e| e.proxy_requests.total(),
        );
        destinations = compare(
            "requests to",
            &meter_destinations,
            &truth_destinations,
            &mut reasons,
        );
    }

    let mut lines = vec![format!(
        "{} vendor × pod and {} vendor × destination tallies compared with {} ledger entries",
        pods,
        destinations,
        ledger.entries.len()
    )];
    let written = ledger.sum_by(|e| e.vendor.clone(), |e| e.bytes_written);
    let read = ledger.sum_by(|e| e.vendor.clone(), |e| e.bytes_read);
    let sent = by_vendor(figures, spec::SENT_BYTES);
    let received = by_vendor(figures, spec::RECEIVED_BYTES);
    for (vendor, wrote) in &written {
        lines.push(format!(
            "{vendor}: crawlers wrote {} and read {}; the vendor leg carried {} out and {} in",
            human_bytes(*wrote),
            human_bytes(read.get(vendor).copied().unwrap_or(0)),
            human_bytes(sent.get(vendor).copied().unwrap_or(0)),
            human_bytes(received.get(vendor).copied().unwrap_or(0)),
        ));
    }
    CheckResult {
        id: "E",
        title: "Reconciliation with the load ledger",
        pass: reasons.is_empty(),
        reasons,
        lines,
        data: serde_json::json!({ "pod_tallies": pods, "destination_tallies": destinations }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pt_metrics::exposition::Scrape;

    fn figures(text: &str) -> Figures {
        Figures::from_scrape(&Scrape::parse(text).unwrap())
    }

    const CONSISTENT: &str = "\
proxy_requests_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\",protocol=\"http1\",status_class=\"2xx\"} 3
proxy_sent_bytes_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\"} 100
proxy_received_bytes_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\"} 900
proxy_destination_requests_total{proxy_vendor=\"a\",destination=\"x.test\"} 3
proxy_destination_sent_bytes_total{proxy_vendor=\"a\",destination=\"x.test\"} 100
proxy_destination_received_bytes_total{proxy_vendor=\"a\",destination=\"x.test\"} 900
";

    #[test]
    fn consistent_figures_pass_every_requirement() {
        let verdict = evaluate(
            &figures(CONSISTENT),
            &Options {
                top: 5,
                ..Default::default()
            },
        );
        assert!(verdict.pass, "{verdict:#?}");
        assert_eq!(verdict.checks.len(), 4);
    }

    #[test]
    fn groups_that_disagree_fail_with_the_difference() {
        let broken = CONSISTENT.replace(
            "destination_received_bytes_total{proxy_vendor=\"a\",destination=\"x.test\"} 900",
            "destination_received_bytes_total{proxy_vendor=\"a\",destination=\"x.test\"} 899",
        );
        let verdict = evaluate(&figures(&broken), &Options::default());
        let d = &verdict.checks[3];
        assert!(!d.pass);
        assert_eq!(
            d.reasons,
            vec!["a: 900 bytes by pod but 899 by destination"]
        );
        assert!(!verdict.pass);
    }

    #[test]
    fn an_expected_vendor_without_traffic_fails_a() {
        let options = Options {
            expected_vendors: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let verdict = evaluate(&figures(CONSISTENT), &options);
        assert_eq!(verdict.checks[0].reasons, vec!["b: no requests"]);
    }

    #[test]
    fn the_ledger_is_reconciled_key_by_key() {
        let mut ledger = Ledger::default();
        ledger.entries.push(pt_load::ledger::LedgerEntry {
            vendor: "a".into(),
            namespace: "n".into(),
            pod: "p".into(),
            host: "www.x.test".into(),
            proxy_requests: pt_load::ledger::ProtocolCounts {
                http1: 3,
                h2: 0,
                connect: 0,
            },
            ..Default::default()
        });
        let options = Options {
            ledger: Some(ledger.clone()),
            ..Default::default()
        };
        assert!(evaluate(&figures(CONSISTENT), &options).pass);
        ledger.entries[0].proxy_requests.http1 = 4;
        let verdict = evaluate(
            &figures(CONSISTENT),
            &Options {
                ledger: Some(ledger),
                ..Default::default()
            },
        );
        let e = verdict.checks.last().unwrap();
        assert!(!e.pass);
        assert_eq!(
            e.reasons,
            vec![
                "requests of a n p: meter 3, ground truth 4",
                "requests of a http1: meter 3, ground truth 4",
                "requests to a x.test: meter 3, ground truth 4"
            ]
        );
    }
}
