//! The demo's exact reconciliations, beyond what `check` can see from metrics alone:
//! the meter's bytes against the bytes the fake vendors carried, and the meter's requests per
//! vendor × pod × destination (from its access log) against the fleet's ledger.

use std::collections::{BTreeMap, BTreeSet};

use pt_check::checks::CheckResult;
use pt_load::ledger::Ledger;
use pt_load::report::human_bytes;
use pt_metrics::exposition::Scrape;
use pt_metrics::spec;
use pt_sniff::authority::parse_host;
use pt_sniff::destination::DestinationKey;
use pt_testkit::vendor::FakeVendor;

/// F: per vendor, the meter's sent and received bytes equal the vendor's books, exactly.
pub fn vendor_bytes(scrape: &Scrape, vendors: &[(String, FakeVendor)]) -> CheckResult {
    let mut reasons = Vec::new();
    let mut lines = Vec::new();
    for (name, vendor) in vendors {
        let labels = [(spec::label::PROXY_VENDOR, name.as_str())];
        let sent = scrape.sum(&spec::SENT_BYTES.series(), &labels);
        let received = scrape.sum(&spec::RECEIVED_BYTES.series(), &labels);
        let (carried_out, carried_in) = (vendor.bytes_from_meter(), vendor.bytes_to_meter());
        lines.push(format!(
            "{name:<12} meter sent {sent} B, vendor read {carried_out} B; meter received {received} B, vendor wrote {carried_in} B ({} / {})",
            human_bytes(sent),
            human_bytes(received)
        ));
        if sent != carried_out {
            reasons.push(format!(
                "{name}: meter sent {sent} bytes, the vendor read {carried_out}"
            ));
        }
        if received != carried_in {
            reasons.push(format!(
                "{name}: meter received {received} bytes, the vendor wrote {carried_in}"
            ));
        }
    }
    CheckResult {
        id: "F",
        title: "Meter bytes per vendor = bytes the vendors carried",
        pass: reasons.is_empty(),
        reasons,
        lines,
        data: serde_json::Value::Null,
    }
}

/// G: requests per vendor × pod × destination, from the meter's access log, equal the ledger.
pub fn access_log_triples(lines: &[String], ledger: &Ledger, key: DestinationKey) -> CheckResult {
    let fold = |host: &str| {
        parse_host(host)
            .map(|h| key.of(&h))
            .unwrap_or_else(|_| host.to_owned())
    };
    let mut meter: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    let mut unreadable = 0;
    for line in lines {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            unreadable += 1;
            continue;
        };
        let field = |name: &str| {
            record
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let host = field("host");
        // IPv6 hosts are logged in brackets; test hosts are names, so this is a plain fold.
        *meter
            .entry((
                field("vendor"),
                field("namespace"),
                field("pod"),
                fold(&host),
            ))
            .or_insert(0) += 1;
    }
    let truth = ledger.sum_by(
        |e| {
            (
                e.vendor.clone(),
                e.namespace.clone(),
                e.pod.clone(),
                fold(&e.host),
            )
        },
        |e| e.proxy_requests.total(),
    );
    let mut reasons = Vec::new();
    let keys: BTreeSet<_> = meter.keys().chain(truth.keys()).collect();
    for key in &keys {
        let (m, t) = (
            meter.get(*key).copied().unwrap_or(0),
            truth.get(*key).copied().unwrap_or(0),
        );
        if m != t {
            reasons.push(format!(
                "{} {}/{} {}: meter {m}, ledger {t}",
                key.0, key.1, key.2, key.3
            ));
        }
    }
    if unreadable > 0 {
        reasons.push(format!("{unreadable} access-log lines are not JSON"));
    }
    CheckResult {
        id: "G",
        title: "Requests per vendor × pod × destination = ledger",
        pass: reasons.is_empty(),
        lines: vec![format!(
            "{} vendor × pod × destination tallies, {} requests and tunnels in the access log",
            keys.len(),
            lines.len()
        )],
        reasons,
        data: serde_json::Value::Null,
    }
}
