//! The chart's Prometheus rules and Grafana dashboards against real data: a Prometheus (Debian's
//! package; CI installs it, and without it this test fails) scrapes a live meter under load from
//! the load generator, with the chart's recording rules and alerts. Every recording rule and
//! every dashboard panel query must return data, and Prometheus' counters must equal the meter's.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pt_check::source::prometheus_query;
use pt_load::engine::Run;
use pt_load::plan::{LoadPlan, Stop, Target, VendorRoute, VendorShare};
use pt_metrics::exposition::Scrape;
use pt_testkit::meter::MeterSetup;
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::process::{Running, free_port};
use pt_testkit::vendor::FakeVendor;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/proxy-telemetry");

/// Starts Prometheus scraping `target` every second with the chart's rules (the daily group
/// evaluated every second too, instead of every 5 minutes).
fn start_prometheus(dir: &Path, target: std::net::SocketAddr) -> (Running, String) {
    let rules = std::fs::read_to_string(format!("{CHART}/files/prometheus-rules.yaml")).unwrap();
    assert!(rules.contains("interval: 5m"));
    std::fs::write(
        dir.join("rules.yaml"),
        rules.replace("interval: 5m", "interval: 1s"),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
             scrape_configs:\n  - job_name: proxy-telemetry\n    static_configs:\n      - targets: [\"{target}\"]\n",
            dir.join("rules.yaml").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus must be installed (CI installs Debian's package)");
    (Running(child), format!("http://127.0.0.1:{port}"))
}

/// Every panel query of the four dashboards, with Grafana's variables set to "all".
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(format!("{CHART}/files/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let mut expr = target["expr"].as_str().unwrap().to_owned();
                for variable in [
                    "cluster",
                    "vendor",
                    "namespace",
                    "workload",
                    "pod",
                    "destination",
                ] {
                    expr = expr.replace(&format!("\"${variable}\""), "\".*\"");
                }
                // Grafana's $__rate_interval is at least four scrape intervals.
                expr = expr.replace("$__rate_interval", "10s");
                // The dashboard's range: the whole run.
                expr = expr.replace("$__range_s", "60").replace("$__range", "60s");
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                queries.push((file, panel["title"].as_str().unwrap().to_owned(), expr));
            }
        }
    }
    queries
}

/// Every recording rule's name in the chart's rules.
fn recording_rules() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{CHART}/files/prometheus-rules.yaml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn prometheus_with_the_charts_rules_answers_every_panel_and_agrees_with_the_meter() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("pt-prometheus-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = ["shop-a.test", "news-b.test", "api.data-c.test"];
    let pki = TestPki::new(&hosts);

    runtime.block_on(async {
        let origin = Origin::start(&pki).await.unwrap();
        let mut setup = MeterSetup::new();
        for name in ["vendor-a", "vendor-b"] {
            let mut builder = FakeVendor::builder().credentials("meter", "pw");
            for host in hosts {
                builder = builder.route(host, &origin);
            }
            setup = setup.vendor(name, &builder.start().await.unwrap(), Some("pw"));
        }
        // A vendor nobody listens for: its requests fail, so error series exist.
        let closed = free_port();
        // Prices, set as environment overrides (as the chart's users may): every cost rule
        // and Cost panel then has data.
        for (name, value) in [
            ("0__PRICING__CURRENCY", "USD"),
            ("0__PRICING__PER_GB", "4"),
            ("0__PRICING__PER_1K_REQUESTS", "0.5"),
            ("0__PRICING__MONTHLY_BUDGET", "1000"),
            ("1__PRICING__CURRENCY", "EUR"),
            ("1__PRICING__PER_GB", "8.5"),
            ("1__PRICING__UNIT", "GiB"),
            ("1__PRICING__BILLED_BYTES", "received"),
            ("1__PRICING__PER_1K_REQUESTS", "1.2"),
            ("1__PRICING__BILLED_REQUESTS", "successful"),
            ("1__PRICING__MONTHLY_FEE", "100"),
            ("1__PRICING__INCLUDED_GB", "1"),
            ("1__PRICING__CYCLE_START_DAY", "15"),
            ("1__PRICING__MONTHLY_BUDGET", "500"),
        ] {
            setup = setup.env(&format!("PROXY_TELEMETRY__VENDORS__{name}"), value);
        }
        let meter = setup
            .vendor_yaml(&format!(
                "  - name: vendor-broken\n    url: http://127.0.0.1:{closed}\n"
            ))
            // Three destinations past a cap of two: the "other" series exists.
            .yaml("metrics:\n  max_destinations_per_vendor: 2")
            .spawn()
            .await;
        let (_prometheus, url) = start_prometheus(&dir, meter.admin);

        let targets = [
            "GET http://shop-a.test/bytes/2000 h1 x2",
            "GET http://news-b.test/bytes/500 h2",
            "GET https://api.data-c.test/bytes/9000 h1",
            "POST https://shop-a.test/upload body=100-2000 h2",
        ];
        let plan = LoadPlan {
            proxy: meter.proxy(),
            vendor_header: "X-Proxy-Vendor".into(),
            vendors: [("vendor-a", 45), ("vendor-b", 45), ("vendor-broken", 10)]
                .iter()
                .map(|(name, weight)| VendorShare {
                    name: (*name).into(),
                    weight: *weight,
                    route: VendorRoute::Header,
                })
                .collect(),
            targets: targets
                .iter()
                .map(|t| t.parse::<Target>().unwrap())
                .collect(),
            pods: (0..3).map(|i| format!("crawlers/crawler-{i}")).collect(),
            proxy_password: String::new(),
            rate_per_pod: 30.0,
            concurrency_per_pod: 10,
            stop: Stop {
                duration: Some(Duration::from_secs(8)),
                requests: None,
            },
            requests_per_connection: 10,
            request_timeout: Duration::from_secs(10),
            pod_lifetime: None,
            vendor_per_pod: false,
        };
        let outcome = Run::new(plan, pki.roots.clone())
            .unwrap()
            .execute(Default::default())
            .await;
        assert!(
            outcome.report.completed > 300,
            "{}",
            outcome.report.render_text()
        );
        // A refused request, so the rejected-requests series exist.
        let proxy = pt_load::client::ProxyEndpoint::new(meter.proxy());
        let refused = pt_load::client::tunnel_h1(
            &proxy,
            proxy.dial(Arc::default()).await.unwrap(),
            "shop-a.test:22",
        )
        .await;
        assert!(refused.is_err());

        // Wait until Prometheus' latest samples equal the meter's own figures.
        // Both are re-read on every round: a tunnel's last bytes (its TLS
        // close_notify) may reach the meter after the load run has returned.
        let families = [
            "proxy_requests_total",
            "proxy_sent_bytes_total",
            "proxy_received_bytes_total",
            "proxy_destination_requests_total",
        ];
        let by_vendor = |scrape: &Scrape, family: &str| -> BTreeMap<String, u64> {
            scrape
                .sum_by(family, &["proxy_vendor"])
                .into_iter()
                .map(|(k, v)| (k[0].clone(), v))
                .collect()
        };
        let query_by_vendor = |family: &str| {
            let url = url.clone();
            let query = format!("sum by (proxy_vendor) ({family})");
            async move {
                prometheus_query(&url, &query, None)
                    .await
                    .map(|rows| {
                        rows.into_iter()
                            .map(|r| {
                                (
                                    r.labels.get("proxy_vendor").cloned().unwrap_or_default(),
                                    r.value,
                                )
                            })
                            .collect::<BTreeMap<_, _>>()
                    })
                    .unwrap_or_default()
            }
        };
        let (mut at_meter, mut in_prometheus) = (Vec::new(), Vec::new());
        for _ in 0..150 {
            let scrape = meter.scrape().await;
            at_meter = families.iter().map(|f| by_vendor(&scrape, f)).collect();
            in_prometheus.clear();
            for family in families {
                in_prometheus.push(query_by_vendor(family).await);
            }
            if in_prometheus == at_meter {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for ((family, meter), prometheus) in families.iter().zip(&at_meter).zip(&in_prometheus) {
            assert_eq!(prometheus, meter, "{family}: Prometheus vs the meter");
        }
        let expected_requests = &at_meter[0];
        assert_eq!(
            expected_requests.len(),
            3,
            "all three vendors carried requests: {expected_requests:?}"
        );
        // The meter exports its prices as they were configured.
        let scrape = meter.scrape().await;
        let price = |name: &str, matchers: &[(&str, &str)]| {
            scrape
                .select(name, matchers)
                .map(|s| s.value())
                .collect::<Vec<f64>>()
        };
        assert_eq!(
            price(
                "proxy_vendor_price_per_byte",
                &[("proxy_vendor", "vendor-a"), ("direction", "sent")]
            ),
            [4e-9]
        );
        assert_eq!(
            price(
                "proxy_vendor_price_per_byte",
                &[("proxy_vendor", "vendor-b"), ("direction", "sent")]
            ),
            [0.0]
        );
        assert_eq!(
            price(
                "proxy_vendor_price_per_byte",
                &[("proxy_vendor", "vendor-b"), ("direction", "received")]
            ),
            [8.5 / 1_073_741_824.0]
        );
        assert_eq!(
            price(
                "proxy_vendor_price_per_request",
                &[("proxy_vendor", "vendor-b"), ("requests", "successful")]
            ),
            [0.0012]
        );
        assert_eq!(
            price(
                "proxy_vendor_included_bytes",
                &[("proxy_vendor", "vendor-b")]
            ),
            [1_073_741_824.0]
        );
        assert_eq!(
            price(
                "proxy_vendor_billing_cycle_start_day",
                &[("proxy_vendor", "vendor-b")]
            ),
            [15.0]
        );
        assert!(
            price(
                "proxy_vendor_monthly_fee",
                &[("proxy_vendor", "vendor-broken")]
            )
            .is_empty()
        );
        // Let the rules evaluate over the final data.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let mut empty = Vec::new();
        for record in recording_rules() {
            let rows = prometheus_query(&url, &record, None).await.unwrap();
            if rows.is_empty() {
                empty.push(format!("recording rule {record}"));
            }
        }
        let queries = panel_queries();
        assert!(queries.len() >= 30, "{} panel queries", queries.len());
        for (file, title, expr) in &queries {
            match prometheus_query(&url, expr, None).await {
                Ok(rows) if rows.is_empty() => empty.push(format!("{file} / {title}: {expr}")),
                Ok(_) => {}
                Err(e) => empty.push(format!("{file} / {title}: {e}")),
            }
        }
        assert!(empty.is_empty(), "no data for:\n{}", empty.join("\n"));
    });
    let _ = std::fs::remove_dir_all(&dir);
}
