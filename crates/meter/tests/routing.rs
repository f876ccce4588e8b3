//! Choosing the vendor: dedicated listener, then the vendor header, then the username map,
//! then the default or the weights. A name that matches no vendor is refused, nothing forwarded.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use http::Method;
use pt_load::client::{self, ProxyEndpoint};
use pt_testkit::meter::{MeterSetup, TestMeter};
use pt_testkit::origin::Origin;
use pt_testkit::paths::absolute;
use pt_testkit::pki::TestPki;
use pt_testkit::vendor::FakeVendor;
use support::{HOSTS, VENDOR_PASSWORD, connect_status, counters, get, vendor_for};

struct Two {
    a: FakeVendor,
    b: FakeVendor,
    meter: TestMeter,
    pki: TestPki,
}

async fn two_vendors(extra: &str, listeners: &[Option<&str>]) -> Two {
    let pki = TestPki::new(&HOSTS);
    let origin = Origin::start(&pki).await.unwrap();
    let (a, b) = (vendor_for(&origin).await, vendor_for(&origin).await);
    let meter = MeterSetup::new()
        .listeners(listeners)
        .vendor("vendor-a", &a, Some(VENDOR_PASSWORD))
        .vendor("vendor-b", &b, Some(VENDOR_PASSWORD))
        .yaml(extra)
        .spawn()
        .await;
    Two { a, b, meter, pki }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendor_header_chooses_the_vendor_and_is_not_forwarded() {
    let two = two_vendors("routing:\n  default_vendor: vendor-a", &[None]).await;
    let base = ProxyEndpoint::new(two.meter.proxy());
    let to_b = base.clone().with_header("X-Proxy-Vendor", "vendor-b");
    assert_eq!(get(&to_b, "shop-a.test").await.status, 200);
    assert_eq!(connect_status(&to_b, "shop-a.test:443").await, 200);
    assert_eq!(get(&base, "shop-a.test").await.status, 200);
    assert_eq!(two.b.requests().len(), 2);
    assert_eq!(two.a.requests().len(), 1);
    for seen in two.b.requests() {
        assert!(
            seen.headers
                .iter()
                .all(|h| !h.to_ascii_lowercase().starts_with("x-proxy-vendor"))
        );
    }
    let scrape = two.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-b")]),
        2
    );
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-a")]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vendor_is_refused_and_nothing_is_forwarded() {
    let two = two_vendors("routing:\n  default_vendor: vendor-a", &[None]).await;
    let wrong = ProxyEndpoint::new(two.meter.proxy()).with_header("X-Proxy-Vendor", "vendor-z");
    assert_eq!(get(&wrong, "shop-a.test").await.status, 400);
    assert_eq!(connect_status(&wrong, "shop-a.test:443").await, 400);
    assert!(two.a.connections().is_empty() && two.b.connections().is_empty());
    let scrape = two.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "unknown_vendor")]
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_choice_or_default_the_request_is_refused() {
    let two = two_vendors("", &[None]).await;
    assert_eq!(
        get(&ProxyEndpoint::new(two.meter.proxy()), "shop-a.test")
            .await
            .status,
        400
    );
    let scrape = two.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "no_vendor")]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_listener_sends_everything_to_its_vendor() {
    let two = two_vendors(
        "routing:\n  default_vendor: vendor-a",
        &[None, Some("vendor-b")],
    )
    .await;
    let dedicated = ProxyEndpoint::new(two.meter.proxies[1]);
    assert_eq!(get(&dedicated, "shop-a.test").await.status, 200);
    assert_eq!(connect_status(&dedicated, "shop-a.test:443").await, 200);
    // The listener wins over a header naming another vendor.
    assert_eq!(
        get(
            &dedicated.clone().with_header("X-Proxy-Vendor", "vendor-a"),
            "shop-a.test"
        )
        .await
        .status,
        200
    );
    assert_eq!(two.b.requests().len(), 3);
    assert!(two.a.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_username_can_choose_the_vendor() {
    let two = two_vendors(
        "routing:\n  default_vendor: vendor-a\n  usernames: {team-b: vendor-b}",
        &[None],
    )
    .await;
    let team_b = ProxyEndpoint::new(two.meter.proxy()).with_credentials("team-b", "x");
    assert_eq!(get(&team_b, "shop-a.test").await.status, 200);
    assert_eq!(two.b.requests().len(), 1);
    let scrape = two.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_requests_total",
            &[("proxy_vendor", "vendor-b"), ("source_pod", "team-b")]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_spread_requests_and_every_one_is_counted_where_it_went() {
    let two = two_vendors("routing:\n  weights: {vendor-a: 1, vendor-b: 3}", &[None]).await;
    let proxy = ProxyEndpoint::new(two.meter.proxy());
    let mut sender = client::http1(proxy.dial(counters()).await.unwrap())
        .await
        .unwrap();
    for _ in 0..200 {
        sender.ready().await.unwrap();
        let request = absolute(
            &proxy,
            Method::GET,
            "shop-a.test",
            "/bytes/1",
            client::empty(),
        );
        let response = sender.send_request(request).await.unwrap();
        client::drain(response.into_body()).await.unwrap();
    }
    let (a, b) = (two.a.requests().len() as u64, two.b.requests().len() as u64);
    assert_eq!(a + b, 200);
    // Expected 50 / 150; the binomial standard deviation is about 6, so ±35 is ~6 sigma.
    assert!((15..=85).contains(&a), "vendor-a got {a}");
    let scrape = two.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-a")]),
        a
    );
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-b")]),
        b
    );
    drop(two.pki);
}
