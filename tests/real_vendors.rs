//! The meter in front of a real vendor: Debian's tinyproxy (`scripts/test.sh` installs it; without
//! it this test fails, never skips). Tinyproxy closes a kept-alive connection after a response
//! without saying `Connection: close`, so a meter that reuses its pooled connection without care
//! answers the crawler 502. Every one of 1,000 back-to-back keep-alive GETs must succeed, and the
//! meter must count each one once.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;
use pt_testkit::meter::MeterSetup;
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::process::{Running, free_port};

/// Requests in the run: the audit saw 4 failures in 300.
const REQUESTS: usize = 1_000;
/// Body size of each answer.
const BODY: usize = 2_000;

fn start_tinyproxy(dir: &std::path::Path, port: u16) -> Running {
    let config = dir.join("tinyproxy.conf");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Critical\nDisableViaHeader Yes\n"
        ),
    )
    .unwrap();
    let child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tinyproxy.log")).unwrap())
        .spawn()
        .expect("tinyproxy must be installed (scripts/test.sh installs Debian's package)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "tinyproxy did not listen; see {}",
            dir.join("tinyproxy.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Running(child)
}

#[test]
fn a_thousand_keep_alive_requests_through_tinyproxy_all_succeed() {
    let dir = std::env::temp_dir().join(format!("pt-tinyproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _tinyproxy = start_tinyproxy(&dir, port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let origin = Origin::start(&TestPki::new(&["shop.test"])).await.unwrap();
        let meter = MeterSetup::new()
            .vendor_yaml(&format!("  - name: tiny\n    url: http://127.0.0.1:{port}\n"))
            .yaml("routing:\n  default_vendor: tiny\nsecurity:\n  allowed_private_destinations: [\"127.0.0.0/8\"]\n")
            .spawn()
            .await;
        let stream = tokio::net::TcpStream::connect(meter.proxy()).await.unwrap();
        let mut client = pt_load::client::http1(stream).await.unwrap();
        let mut failures = Vec::new();
        for i in 0..REQUESTS {
            let request = http::Request::get(format!(
                "http://127.0.0.1:{}/bytes/{BODY}",
                origin.http.port()
            ))
            .header("host", format!("127.0.0.1:{}", origin.http.port()))
            .header("proxy-authorization", "Basic Y3Jhd2xlcnMvcG9kLTE6eA==")
            .body(pt_load::client::empty())
            .unwrap();
            if let Err(e) = client.ready().await {
                panic!("request {i}: the meter closed the client connection: {e}");
            }
            let response = client.send_request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            if status != 200 || body.len() != BODY {
                failures.push((i, status, body.len()));
            }
        }
        assert!(failures.is_empty(), "{} of {REQUESTS} failed: {failures:?}", failures.len());
        let scrape = meter.scrape().await;
        assert_eq!(
            scrape.sum("proxy_requests_total", &[("proxy_vendor", "tiny"), ("status_class", "2xx")]),
            REQUESTS as u64
        );
        assert_eq!(scrape.sum("proxy_requests_total", &[("proxy_vendor", "tiny")]), REQUESTS as u64);
        assert_eq!(scrape.sum("proxy_upstream_errors_total", &[]), 0);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
