//! The benchmark (`bench/run.sh`, its `--duel` against HAProxy and its `--instructions` count)
//! and the syscall count (`bench/syscalls.sh`), small: every scenario for a second through the meter and HAProxy,
//! with this build's binaries. Their figures are not asserted (a debug build on a shared machine
//! measures nothing); what must hold is that they still run end to end and that no scenario saw
//! an error: a benchmark that broke quietly would publish a table of zeros.
//!
//! Needs nginx, wrk, HAProxy, openssl and valgrind (`scripts/test.sh` installs them), two cores (the
//! benchmark pins the proxy and the clients apart) and root for strace; fails, never skips,
//! without them.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The benchmark's bulk transfers in smoke mode: five runs of 8 MiB (bench/run.py).
const SMOKE_TRANSFER_BYTES: u64 = 5 * 8 * 1024 * 1024;

#[test]
fn the_benchmark_and_the_syscall_count_run_small_without_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let meter = env!("CARGO_BIN_EXE_proxy-telemetry");
    let pt_bench = root.join("target/debug/pt-bench");
    assert!(
        pt_bench.exists(),
        "{} is missing: run scripts/test.sh (it builds pt-bench)",
        pt_bench.display()
    );
    let work = std::env::temp_dir().join(format!("pt-bench-smoke-{}", std::process::id()));
    let out = work.join("results");
    // bench/run.py --smoke with `extra` arguments; its JSON result `file`.
    let smoke = |extra: &[&str], file: &str| -> Value {
        let status = Command::new("python3")
            .arg(root.join("bench/run.py"))
            .args(["--smoke", "--binary", meter, "--pt-bench"])
            .arg(&pt_bench)
            .args(extra)
            .arg("--work")
            .arg(&work)
            .arg("--out")
            .arg(&out)
            .status()
            .expect("run bench/run.py");
        assert!(
            status.success(),
            "bench/run.py --smoke {extra:?} failed: {status}"
        );
        serde_json::from_slice(&std::fs::read(out.join(file)).expect(file)).expect("JSON")
    };

    let results = smoke(&[], "latest.json");
    // The direct transfers: the bodies, and a response head beside each of them.
    for transfer in ["transfer_plain", "transfer_tls"] {
        let bytes = results["direct"][transfer]["bytes"].as_u64().unwrap_or(0);
        assert!(
            (SMOKE_TRANSFER_BYTES..SMOKE_TRANSFER_BYTES + 5 * 1024).contains(&bytes),
            "direct {transfer}: {bytes} bytes"
        );
    }
    for proxy in ["meter", "haproxy"] {
        let r = &results[proxy];
        for scenario in ["keepalive", "new_connection"] {
            assert!(r[scenario]["requests"].as_u64() > Some(0), "{proxy}: {r:#}");
            assert_eq!(r[scenario]["non_2xx"], 0, "{proxy} {scenario}: {r:#}");
            assert_eq!(
                r[scenario]["socket_errors"], "",
                "{proxy} {scenario}: {r:#}"
            );
        }
        assert_eq!(r["paced"]["errors"], 0, "{proxy}: {r:#}");
        assert!(r["paced"]["requests"].as_u64() > Some(0), "{proxy}: {r:#}");
        assert_eq!(r["churn"]["errors"], 0, "{proxy}: {r:#}");
        assert!(r["churn"]["tunnels"].as_u64() > Some(0), "{proxy}: {r:#}");
        assert!(
            r["h2_tunnels"]["requests"].as_u64() > Some(0),
            "{proxy}: {r:#}"
        );
        for transfer in ["transfer_plain", "transfer_tls"] {
            // Through the proxy, to the byte what came from the origin directly.
            assert_eq!(
                r[transfer]["bytes"], results["direct"][transfer]["bytes"],
                "{proxy} {transfer}"
            );
        }
        assert!(
            r["anon_1000_tunnels_kb"].as_u64() > Some(0),
            "{proxy}: {r:#}"
        );
    }
    let table = std::fs::read_to_string(out.join("latest.md")).expect("latest.md");
    assert!(
        table.contains("| meter |") && table.contains("| haproxy |"),
        "{table}"
    );

    // The duel: the same scenarios in alternating rounds (one, here), with a ratio per scenario.
    let duel = smoke(&["--duel", "1"], "duel.json");
    for proxy in ["meter", "meter-nolog", "haproxy"] {
        let round = &duel[proxy][0];
        for key in ["keepalive_us", "new_connection_us", "tunnel_us"] {
            assert!(round[key].as_f64() > Some(0.0), "{proxy} {key}: {round:#}");
        }
    }

    // Instructions per request under callgrind (a few requests each, here): every scenario of
    // both proxies counted, and answered 200 (run.py fails otherwise).
    let instructions = smoke(&["--instructions"], "instructions.json");
    for proxy in ["meter", "haproxy"] {
        for scenario in ["keep-alive", "new-connection", "tunnel"] {
            let counted = &instructions[proxy][scenario];
            assert!(
                counted["per_request"].as_f64() > Some(1000.0),
                "{proxy} {scenario}: {counted:#}"
            );
        }
    }

    let counted = Command::new("python3")
        .arg(root.join("bench/syscalls.py"))
        .args([
            "--seconds",
            "1",
            "--proxies",
            "meter",
            "--binary",
            meter,
            "--pt-bench",
        ])
        .arg(&pt_bench)
        .arg("--work")
        .arg(&work)
        .output()
        .expect("run bench/syscalls.py");
    let text = String::from_utf8_lossy(&counted.stdout);
    assert!(
        counted.status.success(),
        "bench/syscalls.py failed: {}\n{text}{}",
        counted.status,
        String::from_utf8_lossy(&counted.stderr)
    );
    // One line per path, each with a positive count of syscalls over a positive number of units.
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("meter ")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for line in lines {
        let total: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        assert!(total > 1.0, "{line}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
