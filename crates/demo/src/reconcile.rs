//! The demo's exact reconciliations, beyond what `check` can see from metrics alone:
//! the meter's bytes against the bytes the fake vendors carried, and the meter's requests per
//! vendor × pod × destination (from its access log) against the fleet's ledger; and the bill
//! the meter's counters make against the bill the vendors' own books make.

use std::collections::{BTreeMap, BTreeSet};

use pt_check::checks::CheckResult;
use pt_config::pricing::{Pricing, Usage};
use pt_fakes::vendor::FakeVendor;
use pt_load::ledger::Ledger;
use pt_load::report::human_bytes;
use pt_metrics::exposition::Scrape;
use pt_metrics::spec;
use pt_sniff::authority::parse_host;
use pt_sniff::destination::DestinationKey;

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

/// What a vendor used, as the meter counted it.
fn metered(scrape: &Scrape, vendor: &str) -> Usage {
    let labels = [(spec::label::PROXY_VENDOR, vendor)];
    let requests = spec::REQUESTS.series();
    let successful = |class| {
        scrape.sum(
            &requests,
            &[
                (spec::label::PROXY_VENDOR, vendor),
                (spec::label::STATUS_CLASS, class),
            ],
        )
    };
    Usage {
        sent_bytes: scrape.sum(&spec::SENT_BYTES.series(), &labels),
        received_bytes: scrape.sum(&spec::RECEIVED_BYTES.series(), &labels),
        requests: scrape.sum(&requests, &labels),
        successful_requests: successful("2xx") + successful("3xx"),
    }
}

/// H: per vendor, the bill from the meter's counters equals the bill from the vendors' own
/// books (the bytes they carried) and the fleet's ledger (the requests it sent), to the cent.
pub fn spend(
    scrape: &Scrape,
    vendors: &[(String, FakeVendor)],
    prices: &[(String, Option<Pricing>)],
    ledger: &Ledger,
) -> CheckResult {
    let mut reasons = Vec::new();
    let mut lines = Vec::new();
    for (name, vendor) in vendors {
        let Some(Some(pricing)) = prices.iter().find(|(n, _)| n == name).map(|(_, p)| p) else {
            lines.push(format!("{name:<12} no prices"));
            continue;
        };
        let meter = metered(scrape, name);
        let requests = ledger
            .entries
            .iter()
            .filter(|e| &e.vendor == name)
            .map(|e| e.proxy_requests.total())
            .sum();
        let books = Usage {
            sent_bytes: vendor.bytes_from_meter(),
            received_bytes: vendor.bytes_to_meter(),
            requests,
            // The fakes answer what they carry; a successful-only price is checked by the
            // rules' and report's tests.
            successful_requests: meter.successful_requests,
        };
        let (cost, expected) = (pricing.cycle_cost(&meter), pricing.cycle_cost(&books));
        lines.push(format!(
            "{name:<12} {:>10.4} {} = fee {:.2} + {} billed bytes beyond {} included {:.4} + {} billed requests {:.4}",
            cost.total(),
            pricing.currency,
            cost.fee,
            pricing.billed_bytes(&meter),
            pricing.included_bytes,
            cost.bytes,
            pricing.billed_requests(&meter),
            cost.requests,
        ));
        if format!("{:.2}", cost.total()) != format!("{:.2}", expected.total())
            || pricing.billed_bytes(&meter) != pricing.billed_bytes(&books)
            || pricing.billed_requests(&meter) != pricing.billed_requests(&books)
        {
            reasons.push(format!(
                "{name}: the meter's bill {:.4} {} differs from the books' {:.4}",
                cost.total(),
                pricing.currency,
                expected.total()
            ));
        }
    }
    CheckResult {
        id: "H",
        title: "Spend per vendor from the meter = spend from the vendors' books and the ledger",
        pass: reasons.is_empty(),
        reasons,
        lines,
        data: serde_json::Value::Null,
    }
}

/// The top spenders by pod and by destination, at the vendors' marginal prices (bytes and
/// requests; a monthly fee belongs to no pod).
pub fn top_spenders(scrape: &Scrape, prices: &[(String, Option<Pricing>)], top: usize) -> String {
    let price = |vendor: &str| {
        prices
            .iter()
            .find(|(n, _)| n == vendor)
            .and_then(|(_, p)| p.as_ref())
    };
    let mut out = String::new();
    for (title, families, by) in [
        (
            "pods",
            [spec::SENT_BYTES, spec::RECEIVED_BYTES, spec::REQUESTS],
            spec::label::SOURCE_POD,
        ),
        (
            "destinations",
            [
                spec::DESTINATION_SENT_BYTES,
                spec::DESTINATION_RECEIVED_BYTES,
                spec::DESTINATION_REQUESTS,
            ],
            spec::label::DESTINATION,
        ),
    ] {
        let mut spend: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (i, family) in families.iter().enumerate() {
            for (key, value) in scrape.sum_by(&family.series(), &[spec::label::PROXY_VENDOR, by]) {
                let Some(pricing) = price(&key[0]) else {
                    continue;
                };
                let amount = match i {
                    0 if pricing.bills_sent_bytes => value as f64 * pricing.byte_price,
                    0 => 0.0,
                    1 => value as f64 * pricing.byte_price,
                    _ => value as f64 * pricing.request_price,
                };
                *spend.entry((key[1].clone(), key[0].clone())).or_default() += amount;
            }
        }
        let mut ranked: Vec<_> = spend.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push_str(&format!("top {top} {title} by spend:\n"));
        for ((name, vendor), amount) in ranked.into_iter().take(top) {
            let currency = price(&vendor).map_or("", |p| p.currency.as_str());
            out.push_str(&format!(
                "  {name:<36} via {vendor:<10} {amount:>10.4} {currency}\n"
            ));
        }
    }
    out
}
