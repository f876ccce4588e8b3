//! Operating the meter: admin endpoints, draining on shutdown, idle timeouts.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use std::time::Duration;

use pt_load::client::{self, ProxyEndpoint};
use pt_testkit::meter::admin_get;
use support::{counters, world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_metrics_health_and_readiness() {
    let world = world("").await;
    let (status, content_type, body) = world.meter.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, pt_meter::OPENMETRICS);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    assert!(body.contains("proxy_build_info{version=\""));
    // Per-vendor series exist at zero before any traffic.
    assert!(body.contains("proxy_active_tunnels{proxy_vendor=\"vendor-a\"} 0"));
    assert_eq!(world.meter.admin_get("/healthz").await.0, 200);
    assert_eq!(world.meter.admin_get("/readyz").await.0, 200);
    assert_eq!(world.meter.admin_get("/other").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_cannot_keep_prometheus_from_scraping() {
    let world = world("").await;
    // Every admin connection taken, and kept open between requests.
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut stream = TcpStream::connect(world.meter.admin).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    // The next scrape gets its answer: the oldest idle connection made room.
    let scrape = tokio::time::timeout(Duration::from_secs(3), world.meter.admin_get("/metrics"));
    assert_eq!(scrape.await.expect("scraped in time").0, 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), held[0].read_to_end(&mut rest));
    assert!(closed.await.is_ok(), "the oldest connection was closed");
}

async fn fetch(
    sender: &hyper::client::conn::http2::SendRequest<client::ClientBody>,
    size: u64,
) -> Result<u64, String> {
    let request = http::Request::get(format!("https://shop-a.test/bytes/{size}"))
        .body(client::empty())
        .unwrap();
    let response = sender
        .clone()
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    client::drain(response.into_body())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_tunnels_while_metrics_stay_up() {
    let world = world("shutdown:\n  grace_period: 20s").await;
    let sender = support::h2_tunnel(&world, "crawlers/pod-1", "shop-a.test").await;
    assert_eq!(fetch(&sender, 1000).await, Ok(1000));
    let (admin, proxy) = (world.meter.admin, world.meter.proxy());
    let shutdown = tokio::spawn(world.meter.shutdown());

    // Not ready, not accepting; the open tunnel still works and is still metered.
    let ready = support::settle(|| async {
        let status = admin_get(admin, "/readyz").await.0;
        (status == 503, status)
    })
    .await;
    assert_eq!(ready, 503);
    let refused = support::settle(|| async {
        let refused = TcpStream::connect(proxy).await.is_err();
        (refused, refused)
    })
    .await;
    assert!(refused, "the listener is closed");
    assert_eq!(fetch(&sender, 50_000).await, Ok(50_000));
    let (_, _, metrics) = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("proxy_active_tunnels{proxy_vendor=\"vendor-a\"} 1"));

    // Closing the tunnel lets the drain finish well before the grace period.
    drop(sender);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the drain ends once the tunnel is closed")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_remaining_tunnels_are_closed() {
    let world = world("shutdown:\n  grace_period: 300ms").await;
    let sender = support::h2_tunnel(&world, "crawlers/pod-1", "shop-a.test").await;
    assert_eq!(fetch(&sender, 10).await, Ok(10));
    let started = std::time::Instant::now();
    world.meter.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(fetch(&sender, 10).await.is_err(), "the tunnel was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed_and_counted() {
    let world = world("limits:\n  tunnel_idle_timeout: 300ms").await;
    let sender = support::h2_tunnel(&world, "crawlers/pod-1", "shop-a.test").await;
    assert_eq!(fetch(&sender, 10).await, Ok(10));
    let scrape = support::settle(|| async {
        let scrape = world.meter.scrape().await;
        (scrape.sum("proxy_active_tunnels", &[]) == 0, scrape)
    })
    .await;
    assert_eq!(scrape.sum("proxy_active_tunnels", &[]), 0);
    assert_eq!(
        scrape.sum("proxy_upstream_errors_total", &[("reason", "tunnel_idle")]),
        1
    );
    assert!(fetch(&sender, 10).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let world = world("limits:\n  client_idle_timeout: 400ms\n  response_timeout: 200ms").await;
    let proxy = ProxyEndpoint::new(world.meter.proxy());
    let mut stream = proxy.dial(counters()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(started.elapsed() >= Duration::from_millis(350));
}
