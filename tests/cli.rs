//! The `proxy-telemetry` binary as an operator runs it: config checking, and `curl -x` through
//! a running meter showing up in `/metrics` exactly.
//!
//! These tests need `curl` on the PATH (CI installs it); without it they fail, they do not skip.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pt_metrics::exposition::Scrape;
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::vendor::FakeVendor;

const BINARY: &str = env!("CARGO_BIN_EXE_proxy-telemetry");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pt-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_bad_config_exits_64_listing_every_error() {
    let dir = temp_dir("bad");
    let path = dir.join("meter.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: nowhere\nvendors:\n  - name: Bad Name\n    url: ftp://x\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["meter", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["listeners[0].address", "vendors[0].name", "vendors[0].url"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    let output = Command::new(BINARY)
        .args(["meter", "--check-config", "--config", "examples/meter.yaml"])
        .env("VENDOR_A_PASSWORD", "a")
        .env("VENDOR_B_PASSWORD", "b")
        .env("VENDOR_C_PASSWORD", "c")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A meter process and the addresses it logged.
struct MeterProcess {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl MeterProcess {
    fn start(config: &std::path::Path, env: &[(&str, &str)]) -> MeterProcess {
        let mut child = Command::new(BINARY)
            .args(["meter", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let line = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find(|l| l.contains("meter serving"))
            .expect("the meter logs its addresses");
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| -> SocketAddr {
            let start = line.find(name).unwrap() + name.len();
            let rest = line[start..].trim_start_matches(['=', '[']);
            let end = rest.find([']', ' ', ',']).unwrap_or(rest.len());
            rest[..end].parse().unwrap()
        };
        MeterProcess {
            proxy: field("listeners"),
            admin: field("admin"),
            child,
        }
    }

    fn terminate(self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let output = self.child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed (CI installs it)");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn curl_through_the_meter_binary_is_metered_exactly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pki = TestPki::new(&["shop-a.test"]);
    let (vendor, _origin) = runtime.block_on(async {
        let origin = Origin::start(&pki).await;
        let vendor = FakeVendor::builder()
            .credentials("meter", "cli-vendor-secret")
            .route("shop-a.test", &origin)
            .start()
            .await;
        (vendor, origin)
    });
    let dir = temp_dir("curl");
    let config = dir.join("meter.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\n\
             vendors:\n  - name: vendor-a\n    url: http://{}\n    username: meter\n    password_env: VENDOR_A_PASSWORD\n\
             routing:\n  default_vendor: vendor-a\nidentity:\n  from: proxy_username\n",
            vendor.address
        ),
    )
    .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let meter = MeterProcess::start(&config, &[("VENDOR_A_PASSWORD", "cli-vendor-secret")]);
    let proxy = format!("http://{}", meter.proxy);

    let plain = curl(&[
        "-x",
        &proxy,
        "-U",
        "crawlers/curl-pod:x",
        "http://shop-a.test/bytes/1234",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
    ]);
    assert_eq!(plain, "1234");
    let tls = curl(&[
        "-x",
        &proxy,
        "-U",
        "crawlers/curl-pod:x",
        "--cacert",
        ca.to_str().unwrap(),
        "https://shop-a.test/bytes/4321",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
    ]);
    assert_eq!(tls, "4321");

    // Wait for the tunnel to close, then compare the scrape with the vendor's books.
    let metrics_url = format!("http://{}/metrics", meter.admin);
    let mut scrape = Scrape::default();
    for _ in 0..250 {
        scrape = Scrape::parse(&curl(&[&metrics_url])).unwrap();
        if scrape.sum("proxy_received_bytes_total", &[]) == vendor.bytes_to_meter()
            && scrape.sum("proxy_active_tunnels", &[]) == 0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pod = [("source_namespace", "crawlers"), ("source_pod", "curl-pod")];
    assert_eq!(
        scrape.sum("proxy_sent_bytes_total", &pod),
        vendor.bytes_from_meter()
    );
    assert_eq!(
        scrape.sum("proxy_received_bytes_total", &pod),
        vendor.bytes_to_meter()
    );
    assert_eq!(
        scrape.sum(
            "proxy_requests_total",
            &[("protocol", "http1"), ("status_class", "2xx")]
        ),
        1
    );
    assert_eq!(
        scrape.sum(
            "proxy_requests_total",
            &[("protocol", "connect"), ("status_class", "2xx")]
        ),
        1
    );
    assert_eq!(
        scrape.sum(
            "proxy_destination_requests_total",
            &[("destination", "shop-a.test")]
        ),
        2
    );

    let (status, stdout) = meter.terminate();
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
    let log: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        log.len(),
        2,
        "one access-log line per request and tunnel: {stdout}"
    );
    assert!(
        log.iter()
            .all(|l| l.starts_with('{') && l.contains("\"pod\":\"curl-pod\""))
    );
    assert!(!stdout.contains("cli-vendor-secret"));
}
