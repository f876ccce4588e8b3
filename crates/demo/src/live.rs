//! The live terminal view: what the meter measures, refreshed every second.
//!
//! It reads the meter's own metrics (the same text `/metrics` serves) and turns counter deltas
//! into rates, so the screen shows the meter's view, not the load generator's. Plain ANSI (home,
//! clear) keeps it dependency-free and readable in any terminal or `tmux capture-pane`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use pt_load::report::{Stats, human_bytes};
use pt_metrics::exposition::Scrape;
use pt_metrics::spec;

/// Counters of one frame, per vendor.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    requests: BTreeMap<String, u64>,
    sent: BTreeMap<String, u64>,
    received: BTreeMap<String, u64>,
}

impl Totals {
    pub fn of(scrape: &Scrape) -> Totals {
        let by_vendor = |series: String| {
            scrape
                .sum_by(&series, &[spec::label::PROXY_VENDOR])
                .into_iter()
                .map(|(k, v)| (k[0].clone(), v))
                .collect()
        };
        Totals {
            requests: by_vendor(spec::REQUESTS.series()),
            sent: by_vendor(spec::SENT_BYTES.series()),
            received: by_vendor(spec::RECEIVED_BYTES.series()),
        }
    }
}

/// Everything a frame shows besides the scrape.
pub struct Frame<'a> {
    pub title: &'a str,
    pub elapsed: Duration,
    pub duration: Duration,
    pub metrics_url: &'a str,
    pub stats: &'a Stats,
}

fn rate(
    now: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
    vendor: &str,
    seconds: f64,
) -> f64 {
    let delta = now
        .get(vendor)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(vendor).copied().unwrap_or(0));
    delta as f64 / seconds.max(1e-3)
}

/// Renders one screen.
pub fn render(
    frame: &Frame<'_>,
    scrape: &Scrape,
    now: &Totals,
    before: &Totals,
    seconds: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}    {:>3.0}s / {:.0}s",
        frame.title,
        frame.elapsed.as_secs_f64(),
        frame.duration.as_secs_f64()
    );
    let _ = writeln!(out, "meter metrics: {}", frame.metrics_url);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>12} {:>12} {:>12} {:>14} {:>14} {:>8}",
        "VENDOR", "req/s", "sent/s", "received/s", "requests", "sent", "received", "tunnels"
    );
    let tunnels = scrape.sum_by(&spec::ACTIVE_TUNNELS.series(), &[spec::label::PROXY_VENDOR]);
    for vendor in now.requests.keys() {
        let _ = writeln!(
            out,
            "{:<12} {:>9.0} {:>12} {:>12} {:>12} {:>14} {:>14} {:>8}",
            vendor,
            rate(&now.requests, &before.requests, vendor, seconds),
            format!(
                "{}/s",
                human_bytes(rate(&now.sent, &before.sent, vendor, seconds) as u64)
            ),
            format!(
                "{}/s",
                human_bytes(rate(&now.received, &before.received, vendor, seconds) as u64)
            ),
            now.requests.get(vendor).copied().unwrap_or(0),
            human_bytes(now.sent.get(vendor).copied().unwrap_or(0)),
            human_bytes(now.received.get(vendor).copied().unwrap_or(0)),
            tunnels.get(&vec![vendor.clone()]).copied().unwrap_or(0),
        );
    }
    let _ = writeln!(out);
    let mut destinations: Vec<(Vec<String>, u64)> = scrape
        .sum_by(
            &spec::DESTINATION_REQUESTS.series(),
            &[spec::label::DESTINATION],
        )
        .into_iter()
        .collect();
    destinations.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut pods: Vec<(Vec<String>, u64)> = scrape
        .sum_by(
            &spec::RECEIVED_BYTES.series(),
            &[spec::label::SOURCE_NAMESPACE, spec::label::SOURCE_POD],
        )
        .into_iter()
        .collect();
    pods.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let _ = writeln!(
        out,
        "{:<34} {:<40}",
        "TOP DESTINATIONS (requests)", "TOP PODS (bytes received)"
    );
    for i in 0..5 {
        let left = destinations
            .get(i)
            .map(|(k, v)| format!("{:<22} {:>10}", k[0], v))
            .unwrap_or_default();
        let right = pods
            .get(i)
            .map(|(k, v)| {
                format!(
                    "{:<26} {:>12}",
                    format!("{}/{}", k[0], k[1]),
                    human_bytes(*v)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(out, "{left:<34} {right}");
    }
    let _ = writeln!(out);
    let (scheduled, completed, failed) = frame.stats.totals();
    let errors: Vec<String> = frame
        .stats
        .errors()
        .iter()
        .map(|(k, v)| format!("{} {v}", k.as_str()))
        .collect();
    let upstream = scrape.sum(&spec::UPSTREAM_ERRORS.series(), &[]);
    let rejected = scrape.sum(&spec::REJECTED_REQUESTS.series(), &[]);
    let _ = writeln!(
        out,
        "fleet: {scheduled} scheduled, {completed} completed, {failed} failed, {} in flight; errors: {}",
        frame
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "meter: {upstream} upstream errors, {rejected} rejected requests"
    );
    out
}

/// A Prometheus `scrape_configs` entry for the meter's admin address.
pub fn scrape_snippet(admin: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: proxy-telemetry-demo\n    scrape_interval: 5s\n    static_configs:\n      - targets: [\"{admin}\"]\n"
    )
}
