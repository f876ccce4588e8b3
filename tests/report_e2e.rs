//! `proxy-telemetry report` against a real Prometheus (Debian's; CI installs it, and without it
//! this test fails): 35 days of synthetic meter counters with known exact totals, backfilled
//! with `promtool tsdb create-blocks-from openmetrics`: three vendors, 241 pods that come and go
//! over two meters, two restarts of one meter (counter resets), a seven-hour scrape gap of the
//! other. The report for October must return exactly the known bytes and requests per vendor,
//! workload and destination, exactly the expected money, and `--compare` must find exactly the
//! days planted wrong in a vendor's export.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pt_testkit::process::{Running, free_port};

/// 2026-09-28 00:00 UTC: the data starts three days before the reported month...
const START: i64 = 1_790_553_600;
/// ...which is October 2026...
const OCTOBER: i64 = 1_790_812_800;
const NOVEMBER: i64 = 1_793_491_200;
/// ...and ends 35 days after the start.
const END: i64 = START + 35 * DAY;
const DAY: i64 = 86_400;
/// Samples every 15 minutes: a month of a few hundred series stays small to backfill.
const STEP: i64 = 900;
/// Meter m1 restarts twice (all its counters start again from zero)...
const RESTARTS: [i64; 2] = [
    OCTOBER + 9 * DAY + 13 * 3600 + 420,
    OCTOBER + 22 * DAY + 2 * 3600,
];
/// ...and meter m2 is not scraped for seven hours, across two report chunks.
const GAP: (i64, i64) = (
    OCTOBER + 19 * DAY + 5 * 3600,
    OCTOBER + 19 * DAY + 12 * 3600,
);

const VENDORS: [&str; 3] = ["vendor-a", "vendor-b", "vendor-c"];
const WORKLOADS: [(&str, &str); 4] = [
    ("crawlers", "shop"),
    ("crawlers", "news"),
    ("research", "maps"),
    ("research", "social"),
];
const DESTINATIONS: [&str; 3] = ["shop.example", "news.example", "maps.example"];

/// A small deterministic generator (64-bit LCG), so the data is the same in every run.
struct Rng(u64);

impl Rng {
    /// A random amount below `scale` for each step from `first` to `last`.
    fn increments(&mut self, first: i64, last: i64, scale: u64) -> Vec<(i64, u64)> {
        (first..=last)
            .step_by(STEP as usize)
            .map(|t| (t, self.below(scale)))
            .collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// One counter series: what was added at each step, and where it is scraped.
struct Counter {
    name: &'static str,
    labels: String,
    meter: usize,
    /// (step time, amount added during the step ending then)
    increments: Vec<(i64, u64)>,
}

/// The truth: what the report must find.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Usage {
    sent: u64,
    received: u64,
    requests: u64,
    successful: u64,
}

fn scraped(meter: usize, t: i64) -> bool {
    !(meter == 1 && t > GAP.0 && t <= GAP.1)
}

/// The samples Prometheus would hold for `counter`, and the exact increase each sample shows:
/// the amounts added since the previous sample, or since the restart if one came between.
fn samples(counter: &Counter) -> Vec<(i64, u64, u64)> {
    let mut out = Vec::new();
    let (mut value, mut unseen) = (0u64, 0u64);
    for &(t, amount) in &counter.increments {
        if counter.meter == 0 && RESTARTS.iter().any(|&r| r > t - STEP && r <= t) {
            // The meter restarted during this step, after its last scrape: what it counted
            // since that scrape is lost with it; the new process counts this step's amount.
            value = 0;
            unseen = 0;
        }
        value += amount;
        unseen += amount;
        if scraped(counter.meter, t) {
            out.push((t, value, unseen));
            unseen = 0;
        }
    }
    out
}

struct World {
    counters: Vec<Counter>,
    /// (vendor, namespace, workload) → usage in October
    workloads: BTreeMap<(String, String, String), Usage>,
    destinations: BTreeMap<(String, String), Usage>,
    /// (vendor, day) → usage
    days: BTreeMap<(String, i64), Usage>,
}

fn world() -> World {
    let mut rng = Rng(7);
    let mut counters = Vec::new();
    let mut owners = Vec::new();
    for pod in 0..=240 {
        let vendor = VENDORS[pod % 3];
        let (namespace, workload) = WORKLOADS[pod % 4];
        let mut born = START + rng.below(34 * 24) as i64 * 3600;
        if pod == 240 {
            // Born on m1 three hours before its first restart: after the restart its counters
            // climb past their value before it within the same chunk, so only `resets()`, not
            // a value going down, shows the reset.
            born = RESTARTS[0] - 3 * 3600;
        }
        let lifetime = (1 + rng.below(5) as i64) * DAY;
        let meter = pod % 2;
        let pod_labels = format!(
            "proxy_vendor=\"{vendor}\",source_namespace=\"{namespace}\",source_workload=\"{workload}\",source_pod=\"{workload}-{pod}\""
        );
        for (name, extra, scale) in [
            ("proxy_sent_bytes_total", "", 40_000_000),
            ("proxy_received_bytes_total", "", 400_000_000),
            (
                "proxy_requests_total",
                ",protocol=\"connect\",status_class=\"2xx\"",
                900,
            ),
            (
                "proxy_requests_total",
                ",protocol=\"connect\",status_class=\"5xx\"",
                60,
            ),
        ] {
            counters.push(Counter {
                name,
                labels: format!("{pod_labels}{extra}"),
                meter,
                increments: rng.increments(
                    (born / STEP + 1) * STEP,
                    (born + lifetime).min(END),
                    scale,
                ),
            });
            owners.push(Some((vendor, namespace, workload, extra.contains("2xx"))));
        }
    }
    for meter in 0..2 {
        for vendor in VENDORS {
            for destination in DESTINATIONS {
                for (name, scale) in [
                    ("proxy_destination_sent_bytes_total", 2_000_000_000),
                    ("proxy_destination_received_bytes_total", 20_000_000_000),
                    ("proxy_destination_requests_total", 50_000),
                ] {
                    counters.push(Counter {
                        name,
                        labels: format!("proxy_vendor=\"{vendor}\",destination=\"{destination}\""),
                        meter,
                        increments: rng.increments(START + STEP, END, scale),
                    });
                    owners.push(None);
                }
            }
        }
    }
    let mut world = World {
        counters,
        workloads: BTreeMap::new(),
        destinations: BTreeMap::new(),
        days: BTreeMap::new(),
    };
    for (counter, owner) in world.counters.iter().zip(owners) {
        for (t, _, increase) in samples(counter) {
            if t <= OCTOBER || t > NOVEMBER {
                continue;
            }
            let add = |usage: &mut Usage, successful: bool| match counter.name {
                "proxy_sent_bytes_total" | "proxy_destination_sent_bytes_total" => {
                    usage.sent += increase
                }
                "proxy_received_bytes_total" | "proxy_destination_received_bytes_total" => {
                    usage.received += increase
                }
                _ => {
                    usage.requests += increase;
                    if successful {
                        usage.successful += increase;
                    }
                }
            };
            match owner {
                Some((vendor, namespace, workload, successful)) => {
                    add(
                        world
                            .workloads
                            .entry((vendor.into(), namespace.into(), workload.into()))
                            .or_default(),
                        successful,
                    );
                    // A sample at 00:00 closes the day before.
                    let day = (t - 1).div_euclid(DAY) * DAY;
                    add(
                        world.days.entry((vendor.into(), day)).or_default(),
                        successful,
                    );
                }
                None => {
                    let vendor = between(&counter.labels, "proxy_vendor=\"");
                    let destination = between(&counter.labels, "destination=\"");
                    add(
                        world.destinations.entry((vendor, destination)).or_default(),
                        false,
                    );
                }
            }
        }
    }
    world
}

fn between(text: &str, prefix: &str) -> String {
    let rest = &text[text.find(prefix).unwrap() + prefix.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The prices of vendor-a (USD 4 per decimal GB both ways, a 300 fee including 50 GB, budget
/// 1,000) and vendor-b (EUR 8.5 per GiB received, 1.2 per 1,000 successful requests, cycles
/// starting on the 15th), as meters export them; vendor-c has none.
const PRICES: &[(&str, &str)] = &[
    (
        "proxy_vendor_price_per_byte",
        "proxy_vendor=\"vendor-a\",currency=\"USD\",direction=\"sent\"} 4e-09",
    ),
    (
        "proxy_vendor_price_per_byte",
        "proxy_vendor=\"vendor-a\",currency=\"USD\",direction=\"received\"} 4e-09",
    ),
    (
        "proxy_vendor_price_per_request",
        "proxy_vendor=\"vendor-a\",currency=\"USD\",requests=\"all\"} 0",
    ),
    (
        "proxy_vendor_monthly_fee",
        "proxy_vendor=\"vendor-a\",currency=\"USD\"} 300",
    ),
    (
        "proxy_vendor_included_bytes",
        "proxy_vendor=\"vendor-a\"} 50000000000",
    ),
    (
        "proxy_vendor_billing_cycle_start_day",
        "proxy_vendor=\"vendor-a\"} 1",
    ),
    (
        "proxy_vendor_monthly_budget",
        "proxy_vendor=\"vendor-a\",currency=\"USD\"} 1000",
    ),
    (
        "proxy_vendor_price_per_byte",
        "proxy_vendor=\"vendor-b\",currency=\"EUR\",direction=\"sent\"} 0",
    ),
    (
        "proxy_vendor_price_per_byte",
        "proxy_vendor=\"vendor-b\",currency=\"EUR\",direction=\"received\"} 7.916241884231567e-09",
    ),
    (
        "proxy_vendor_price_per_request",
        "proxy_vendor=\"vendor-b\",currency=\"EUR\",requests=\"successful\"} 0.0012",
    ),
    (
        "proxy_vendor_monthly_fee",
        "proxy_vendor=\"vendor-b\",currency=\"EUR\"} 0",
    ),
    (
        "proxy_vendor_included_bytes",
        "proxy_vendor=\"vendor-b\"} 0",
    ),
    (
        "proxy_vendor_billing_cycle_start_day",
        "proxy_vendor=\"vendor-b\"} 15",
    ),
];

fn openmetrics(world: &World) -> String {
    let mut text = String::new();
    for counter in &world.counters {
        for (t, value, _) in samples(counter) {
            let _ = writeln!(
                text,
                "{}{{job=\"proxy-telemetry\",instance=\"m{}:9464\",{}}} {value} {t}",
                counter.name,
                counter.meter + 1,
                counter.labels
            );
        }
    }
    for (name, rest) in PRICES {
        let mut t = START + 3600;
        while t <= END {
            let _ = writeln!(
                text,
                "{name}{{job=\"proxy-telemetry\",instance=\"m1:9464\",{rest} {t}"
            );
            t += 3600;
        }
    }
    text.push_str("# EOF\n");
    text
}

fn prometheus(dir: &Path, world: &World) -> (Running, String) {
    let input = dir.join("history.om");
    std::fs::write(&input, openmetrics(world)).unwrap();
    let data = dir.join("data");
    let status = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&input)
        .arg(&data)
        .status()
        .expect("promtool must be installed (CI installs Debian's prometheus package)");
    assert!(status.success(), "promtool failed");
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 15s\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        // The backfilled history is older than the default retention (15 days).
        .arg("--storage.tsdb.retention.time=3650d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus must be installed (CI installs Debian's package)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !report(
        &url,
        &[
            "--from",
            "2026-10-01",
            "--to",
            "2026-10-02",
            "--format",
            "json",
        ],
    )
    .0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not serve the backfilled blocks; see {}",
            dir.join("prometheus.log").display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    (Running(child), url)
}

/// Runs `report` against `url`; (success, standard output, standard error).
fn report(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_proxy-telemetry"))
        .args(["report", "--prometheus", url, "--chunk", "6h"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn json(url: &str, by: &str) -> serde_json::Value {
    let (ok, out, err) = report(
        url,
        &[
            "--from",
            "2026-10-01",
            "--to",
            "2026-11-01",
            "--by",
            by,
            "--format",
            "json",
        ],
    );
    assert!(ok, "report --by {by} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

fn usage_of(value: &serde_json::Value) -> Usage {
    Usage {
        sent: value["sent_bytes"].as_u64().unwrap(),
        received: value["received_bytes"].as_u64().unwrap(),
        requests: value["requests"].as_u64().unwrap(),
        successful: value["successful_requests"].as_u64().unwrap(),
    }
}

#[test]
fn a_months_report_is_exact_to_the_byte_and_the_cent_and_finds_the_planted_differences() {
    let dir = std::env::temp_dir().join(format!("pt-report-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let world = world();
    let (_prometheus, url) = prometheus(&dir, &world);

    // Per workload, exactly.
    let by_workload = json(&url, "workload");
    let rows = by_workload["rows"].as_array().unwrap();
    assert_eq!(rows.len(), world.workloads.len());
    for row in rows {
        let key = (
            row["vendor"].as_str().unwrap().to_owned(),
            row["namespace"].as_str().unwrap().to_owned(),
            row["workload"].as_str().unwrap().to_owned(),
        );
        assert_eq!(usage_of(row), world.workloads[&key], "{key:?}");
    }

    // Per vendor, exactly, and the money.
    let mut vendors: BTreeMap<String, Usage> = BTreeMap::new();
    for ((vendor, _, _), usage) in &world.workloads {
        let total = vendors.entry(vendor.clone()).or_default();
        total.sent += usage.sent;
        total.received += usage.received;
        total.requests += usage.requests;
        total.successful += usage.successful;
    }
    let reported = by_workload["vendors"].as_array().unwrap();
    assert_eq!(reported.len(), 3);
    for vendor in reported {
        let name = vendor["vendor"].as_str().unwrap();
        assert_eq!(usage_of(&vendor["usage"]), vendors[name], "{name}");
    }
    let a = &vendors["vendor-a"];
    let expected_a = 300.0 + (a.sent + a.received - 50_000_000_000) as f64 * 4e-9;
    assert_eq!(reported[0]["cost"].as_f64().unwrap(), expected_a);
    assert_eq!(reported[0]["cycles"].as_array().unwrap().len(), 1);
    // vendor-b: October lies in two cycles (from the 15th), each billed on its own.
    let (mut before, mut after) = (Usage::default(), Usage::default());
    for ((vendor, day), usage) in &world.days {
        if vendor == "vendor-b" {
            let part = if *day < OCTOBER + 14 * DAY {
                &mut before
            } else {
                &mut after
            };
            part.received += usage.received;
            part.successful += usage.successful;
        }
    }
    let price = 8.5 / (1u64 << 30) as f64;
    let cycles = reported[1]["cycles"].as_array().unwrap();
    assert_eq!(cycles[0]["start"], "2026-09-15");
    assert_eq!(cycles[1]["start"], "2026-10-15");
    assert!(cycles.iter().all(|c| c["partial"] == true));
    for (cycle, part) in cycles.iter().zip([before, after]) {
        assert_eq!(cycle["billed_bytes"], part.received);
        assert_eq!(cycle["billed_requests"], part.successful);
        let expected = part.received as f64 * price + part.successful as f64 * 0.0012;
        assert!((cycle["cost"].as_f64().unwrap() - expected).abs() < 1e-9 * expected);
    }
    assert!(reported[2]["cost"].is_null(), "vendor-c has no prices");
    // The rows' shares add up to their vendor's cost.
    let shares: f64 = rows
        .iter()
        .filter(|r| r["vendor"] == "vendor-a")
        .map(|r| r["cost"].as_f64().unwrap())
        .sum();
    assert!(
        (shares - expected_a).abs() < 1e-6,
        "{shares} vs {expected_a}"
    );

    // Per destination, exactly.
    let by_destination = json(&url, "destination");
    let rows = by_destination["rows"].as_array().unwrap();
    assert_eq!(rows.len(), world.destinations.len());
    for row in rows {
        let key = (
            row["vendor"].as_str().unwrap().to_owned(),
            row["destination"].as_str().unwrap().to_owned(),
        );
        let expected = world.destinations[&key];
        let got = usage_of(row);
        assert_eq!(
            (got.sent, got.received, got.requests),
            (expected.sent, expected.received, expected.requests),
            "{key:?}"
        );
    }

    // vendor-a's own export in decimal GB with three decimals, with three days planted wrong:
    // 2.5% more on the 5th, GiB instead of GB on the 12th, the 25th's figure on the 26th.
    let mut export = String::from("Day,Traffic (GB)\n");
    for day in 0..31 {
        let date = OCTOBER + day * DAY;
        let billed = |d: i64| {
            let u = world
                .days
                .get(&("vendor-a".to_owned(), d))
                .copied()
                .unwrap_or_default();
            (u.sent + u.received) as f64
        };
        let figure = match day + 1 {
            5 => billed(date) * 1.025 / 1e9,
            12 => billed(date) / (1u64 << 30) as f64,
            26 => billed(date - DAY) / 1e9,
            _ => billed(date) / 1e9,
        };
        let _ = writeln!(export, "2026-10-{:02},{figure:.3}", day + 1);
    }
    std::fs::write(dir.join("export.csv"), export).unwrap();
    let (ok, out, err) = report(
        &url,
        &[
            "--from",
            "2026-10-01",
            "--to",
            "2026-11-01",
            "--format",
            "json",
            "--compare",
            dir.join("export.csv").to_str().unwrap(),
            "--columns",
            "date=Day,bytes=Traffic (GB),unit=GB",
            "--vendor",
            "vendor-a",
        ],
    );
    assert!(ok, "report --compare failed: {err}");
    let lines: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(lines.len(), 31);
    let mismatches: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["mismatch"] == true)
        .map(|l| {
            (
                l["date"].as_str().unwrap(),
                l["reasons"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    assert_eq!(mismatches[0].0, "2026-10-05");
    assert!(mismatches[0].1.starts_with("overhead"), "{mismatches:?}");
    assert_eq!(mismatches[1].0, "2026-10-12");
    assert!(mismatches[1].1.starts_with("unit"), "{mismatches:?}");
    assert_eq!(mismatches[2].0, "2026-10-26");
    assert!(
        mismatches[2].1.starts_with("day boundary"),
        "{mismatches:?}"
    );

    // A Prometheus without the data, and one that is not there: errors, not stack traces.
    let (ok, _, err) = report(&url, &["--from", "2020-01-01", "--to", "2020-02-01"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: no sample of the meters' counters"),
        "{err}"
    );
    let (ok, _, err) = report(
        &format!("http://127.0.0.1:{}", free_port()),
        &["--from", "2026-10-01", "--to", "2026-11-01"],
    );
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
