//! Broken vendors: each failure gives the client the right status, the metrics the right
//! reason, and the bytes that did cross the vendor socket are still counted exactly.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use std::time::Duration;

use pt_load::client::ProxyEndpoint;
use pt_testkit::VendorBooks;
use pt_testkit::meter::MeterSetup;
use pt_testkit::vendor::{FakeVendor, Fault, RESET_AFTER};
use support::{connect, get};
use tokio::io::AsyncReadExt;

async fn meter_with(vendor_url: &str, extra: &str) -> pt_testkit::meter::TestMeter {
    MeterSetup::new()
        .vendor_yaml(&format!(
            "  - name: vendor-a\n    url: http://{vendor_url}\n    username: meter\n    password_env: P\n"
        ))
        .env("P", "pw")
        .yaml("routing:\n  default_vendor: vendor-a")
        .yaml(extra)
        .spawn()
        .await
}

fn reason_count(scrape: &pt_metrics::exposition::Scrape, reason: &str) -> u64 {
    scrape.sum(
        "proxy_upstream_errors_total",
        &[("proxy_vendor", "vendor-a"), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_refuses_connections_gives_502_connect_refused() {
    // Bind and drop: nothing listens on this port any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let meter = meter_with(&closed.to_string(), "").await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let answer = get(&proxy, "shop-a.test").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (502, "connect_refused")
    );
    assert!(
        answer
            .body
            .unwrap()
            .contains("vendor-a refused the connection")
    );
    assert_eq!(connect(&proxy, "shop-a.test:443").await.err(), Some(502));
    let scrape = meter.scrape().await;
    assert_eq!(reason_count(&scrape, "connect_refused"), 2);
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "5xx")]),
        2
    );
    assert_eq!(scrape.sum("proxy_sent_bytes_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_407_becomes_502_vendor_auth_without_the_challenge() {
    let vendor = FakeVendor::builder()
        .fault(Fault::AlwaysDenyAuth)
        .start()
        .await
        .unwrap();
    let meter = meter_with(&vendor.address.to_string(), "").await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let answer = get(&proxy, "shop-a.test").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (502, "vendor_auth")
    );
    assert!(!answer.challenge, "no vendor challenge leaks");
    let body = answer.body.unwrap();
    assert!(body.contains("rejected the meter's credentials"), "{body}");
    assert!(!body.contains("fake-vendor-challenge"));
    assert_eq!(connect(&proxy, "shop-a.test:443").await.err(), Some(502));
    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        let done = scrape.sum("proxy_received_bytes_total", &[]) == vendor.bytes_to_meter();
        (done, scrape)
    })
    .await;
    assert_eq!(reason_count(&scrape, "vendor_auth"), 2);
    vendor.assert_metered_exactly(&scrape, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_reset_mid_body_is_counted_as_reset_with_every_byte_that_arrived() {
    let vendor = FakeVendor::builder()
        .fault(Fault::ResetMidBody)
        .start()
        .await
        .unwrap();
    let meter = meter_with(&vendor.address.to_string(), "").await;
    let proxy = ProxyEndpoint::new(meter.proxy());

    // Plain HTTP: the head was 200, the body breaks off.
    let answer = get(&proxy, "shop-a.test").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_err(), "the client sees the body cut short");

    // A tunnel: the destination's first bytes arrive, then the tunnel closes.
    let upgraded = connect(&proxy, "shop-a.test:443")
        .await
        .expect("tunnel established");
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    let mut received = Vec::new();
    let _ = tunnel.read_to_end(&mut received).await;
    assert_eq!(received.len(), RESET_AFTER);

    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        let done =
            reason_count(&scrape, "reset") == 2 && scrape.sum("proxy_active_tunnels", &[]) == 0;
        (done, scrape)
    })
    .await;
    assert_eq!(reason_count(&scrape, "reset"), 2);
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "2xx")]),
        2
    );
    vendor.assert_metered_exactly(&scrape, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vendor_times_out_with_504() {
    let vendor = FakeVendor::builder()
        .fault(Fault::Blackhole)
        .start()
        .await
        .unwrap();
    let meter = meter_with(
        &vendor.address.to_string(),
        "limits:\n  response_timeout: 300ms",
    )
    .await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let started = std::time::Instant::now();
    let answer = get(&proxy, "shop-a.test").await;
    assert_eq!((answer.status, answer.reason.as_str()), (504, "timeout"));
    assert_eq!(connect(&proxy, "shop-a.test:443").await.err(), Some(504));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        let done = scrape.sum("proxy_sent_bytes_total", &[]) == vendor.bytes_from_meter();
        (done, scrape)
    })
    .await;
    assert_eq!(reason_count(&scrape, "timeout"), 2);
    assert_eq!(
        scrape.sum("proxy_sent_bytes_total", &[]),
        vendor.bytes_from_meter()
    );
    assert_eq!(scrape.sum("proxy_received_bytes_total", &[]), 0);
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "5xx")]),
        2
    );
}

/// Sends `count` keep-alive GETs over one client connection; returns the statuses.
async fn keep_alive_gets(proxy: &ProxyEndpoint, count: usize) -> Vec<u16> {
    let mut sender = pt_load::client::http1(proxy.dial(support::counters()).await.unwrap())
        .await
        .unwrap();
    let mut statuses = Vec::with_capacity(count);
    for i in 0..count {
        sender.ready().await.unwrap();
        let request = pt_testkit::paths::absolute(
            proxy,
            http::Method::GET,
            "shop-a.test",
            &format!("/n/{i}"),
            pt_load::client::empty(),
        );
        let response = sender.send_request(request).await.unwrap();
        statuses.push(response.status().as_u16());
        pt_load::client::drain(response.into_body()).await.unwrap();
    }
    statuses
}

/// The access log's (sent, received) bytes over every line.
fn logged_bytes(meter: &pt_testkit::meter::TestMeter) -> (u64, u64) {
    meter
        .access_log
        .lines()
        .iter()
        .fold((0, 0), |(s, r), line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                s + value["sent_bytes"].as_u64().unwrap(),
                r + value["received_bytes"].as_u64().unwrap(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_closes_kept_alive_connections_fails_no_request() {
    // The vendor answers the first request of each connection and drops the connection when a
    // second one arrives on it (a keep-alive timeout firing as the request comes in): every such
    // request is sent again on a fresh connection; the failed attempts' bytes stay counted.
    for fault in [Fault::DropSecondRequest, Fault::CloseAfterResponse] {
        let vendor = FakeVendor::builder().fault(fault).start().await.unwrap();
        let meter = meter_with(&vendor.address.to_string(), "").await;
        let proxy = ProxyEndpoint::new(meter.proxy());
        let statuses = keep_alive_gets(&proxy, 1000).await;
        assert!(statuses.iter().all(|s| *s == 200), "{fault:?}");
        let scrape = support::settle(|| async {
            let scrape = meter.scrape().await;
            (vendor.books_match(&scrape), scrape)
        })
        .await;
        vendor.assert_metered_exactly(&scrape, &[]);
        assert_eq!(
            scrape.sum("proxy_requests_total", &[("status_class", "2xx")]),
            1000,
            "{fault:?}"
        );
        assert_eq!(
            scrape.sum("proxy_upstream_errors_total", &[]),
            0,
            "{fault:?}"
        );
        assert_eq!(
            logged_bytes(&meter),
            (vendor.bytes_from_meter(), vendor.bytes_to_meter())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_a_vendor_cut_with_every_byte_counted_and_logged() {
    let vendor = FakeVendor::builder()
        .fault(Fault::Truncated)
        .start()
        .await
        .unwrap();
    let meter = meter_with(&vendor.address.to_string(), "").await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let answer = get(&proxy, "shop-a.test").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_err(), "the client sees the body cut short");
    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        (
            vendor.books_match(&scrape) && meter.access_log.lines().len() == 1,
            scrape,
        )
    })
    .await;
    vendor.assert_metered_exactly(&scrape, &[]);
    assert_eq!(reason_count(&scrape, "reset"), 1);
    let line: serde_json::Value = serde_json::from_str(&meter.access_log.lines()[0]).unwrap();
    assert_eq!(line["outcome"], "vendor_cut");
    assert_eq!(line["status"], 200);
    assert_eq!(
        logged_bytes(&meter),
        (vendor.bytes_from_meter(), vendor.bytes_to_meter())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendors_own_error_status_reaches_the_client_as_an_answer() {
    let vendor = FakeVendor::builder()
        .fault(Fault::Status(503))
        .start()
        .await
        .unwrap();
    let meter = meter_with(&vendor.address.to_string(), "").await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let statuses = keep_alive_gets(&proxy, 3).await;
    assert_eq!(statuses, [503, 503, 503]);
    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        (vendor.books_match(&scrape), scrape)
    })
    .await;
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "5xx")]),
        3
    );
    assert_eq!(scrape.sum("proxy_upstream_errors_total", &[]), 0);
    assert_eq!(vendor.connections().len(), 1, "the connection was kept");
    for line in meter.access_log.lines() {
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (line["outcome"].as_str(), line["status"].as_u64()),
            (Some("ok"), Some(503))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_kept_alive_connection_gets_a_whole_response_timeout_of_its_own() {
    // A client connection keeps one response timer for its life, re-armed per request: the
    // second request must get its whole timeout, not what was left of the first's, and a timer
    // that went off between requests must not fail the next one.
    let answering = FakeVendor::builder()
        .fault(Fault::Status(200))
        .start()
        .await
        .unwrap();
    let silent = FakeVendor::builder()
        .fault(Fault::Blackhole)
        .start()
        .await
        .unwrap();
    let meter = MeterSetup::new()
        .vendor_yaml(&format!(
            "  - name: vendor-a\n    url: http://{}\n    username: meter\n    password_env: P\n",
            answering.address
        ))
        .vendor_yaml(&format!(
            "  - name: vendor-b\n    url: http://{}\n    username: meter\n    password_env: P\n",
            silent.address
        ))
        .env("P", "pw")
        .yaml("routing:\n  default_vendor: vendor-a\nlimits:\n  response_timeout: 600ms")
        .spawn()
        .await;
    let proxy = ProxyEndpoint::new(meter.proxy());
    let mut sender = pt_load::client::http1(proxy.dial(support::counters()).await.unwrap())
        .await
        .unwrap();
    let mut status_from = async |vendor: &'static str| {
        sender.ready().await.unwrap();
        let mut request = pt_testkit::paths::absolute(
            &proxy,
            http::Method::GET,
            "shop-a.test",
            "/bytes/10",
            pt_load::client::empty(),
        );
        request
            .headers_mut()
            .insert("x-proxy-vendor", http::HeaderValue::from_static(vendor));
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        pt_load::client::drain(response.into_body()).await.unwrap();
        status
    };
    assert_eq!(status_from("vendor-a").await, 200);
    // Longer than the timeout: the first request's timer goes off while the connection idles.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status_from("vendor-a").await, 200);
    // Most of a timeout later, a request the vendor never answers.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let started = std::time::Instant::now();
    assert_eq!(status_from("vendor-b").await, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(550),
        "timed out after {waited:?}, before its own 600 ms"
    );
    assert!(waited < Duration::from_secs(5));
}
