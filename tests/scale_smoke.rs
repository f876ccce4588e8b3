//! The scale harness (`bench/scale.sh`), small: 300 pods with churn through one meter, and a
//! real Prometheus holding 300 churning pods per topology the chart ships, with the chart's
//! scrape configuration, rules and dashboards. Figures of this machine are not asserted; what
//! must hold at any size is: no refusals and no failed request through the meter, and the
//! series each new pod adds to Prometheus equal to the budget of docs/metrics.md.
//!
//! Needs Prometheus, promtool and the deployment tests' virtual environment (helm-python-sdk),
//! which `scripts/test.sh` installs; fails, never skips, without them.

use std::path::Path;
use std::process::Command;

#[test]
fn the_scale_harness_runs_small_and_the_series_budget_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/venv/bin/python");
    let pt_bench = root.join("target/debug/pt-bench");
    for (path, what) in [
        (&python, "the deployment tests' venv"),
        (&pt_bench, "pt-bench"),
    ] {
        assert!(
            path.exists(),
            "{} is missing ({what}): run scripts/test.sh",
            path.display()
        );
    }
    let work = std::env::temp_dir().join(format!("pt-scale-smoke-{}", std::process::id()));
    let status = Command::new(&python)
        .arg(root.join("bench/scale.py"))
        .args(["--smoke", "--binary", env!("CARGO_BIN_EXE_proxy-telemetry")])
        .arg("--pt-bench")
        .arg(&pt_bench)
        .arg("--work")
        .arg(&work)
        .status()
        .expect("run bench/scale.py");
    assert!(status.success(), "bench/scale.py --smoke failed: {status}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("scale.json")).expect("scale.json"))
            .expect("scale.json is JSON");

    let fleet = &report["meter"]["fleet"];
    assert_eq!(fleet["overloaded"], 0, "{fleet:#}");
    assert_eq!(fleet["load"]["failed"], 0, "{fleet:#}");
    assert_eq!(
        fleet["load"]["completed"], fleet["load"]["scheduled"],
        "{fleet:#}"
    );

    for profile in ["gateway", "sidecar"] {
        let live = &report["prometheus"][profile]["live"];
        let measured = live["per_pod_generation"].as_f64().expect("measured");
        let budget = live["per_pod_generation_budget"].as_f64().expect("budget");
        assert!(
            (measured - budget).abs() <= 0.15 * budget,
            "{profile}: each new pod added {measured} series to Prometheus, the budget says {budget}"
        );
        let queries = report["prometheus"][profile]["history"]["queries"]
            .as_array()
            .expect("queries");
        assert!(queries.len() > 30, "{queries:?}");
        for query in queries {
            for range in ["1h", "24h", "7d"] {
                assert!(query[range].is_number(), "{query}: no {range} figure");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}
