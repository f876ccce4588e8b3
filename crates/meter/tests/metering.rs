//! The meter's figures equal what the vendor carried, to the byte, on every protocol path.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use pt_testkit::VendorBooks;
use pt_testkit::paths::Path;
use support::{counters, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_is_metered_to_the_byte() {
    for path in Path::ALL {
        let world = world("").await;
        let proxy = world.proxy_for("crawlers/pod-1");
        let statuses = path
            .run(&proxy, "www.shop-a.test", world.roots(), counters())
            .await
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(statuses.iter().all(|s| *s == 200), "{path:?}: {statuses:?}");

        let scrape = world.settled().await;
        let vendor = &world.vendor;
        let pod = [
            ("proxy_vendor", "vendor-a"),
            ("source_namespace", "crawlers"),
            ("source_pod", "pod-1"),
        ];
        let destination = [("proxy_vendor", "vendor-a"), ("destination", "shop-a.test")];

        // (c) and (d): the vendor's books, byte for byte, in both label groups.
        assert_eq!(
            scrape.sum("proxy_sent_bytes_total", &pod),
            vendor.bytes_from_meter(),
            "{path:?} sent"
        );
        assert_eq!(
            scrape.sum("proxy_received_bytes_total", &pod),
            vendor.bytes_to_meter(),
            "{path:?} received"
        );
        assert_eq!(
            scrape.sum("proxy_destination_sent_bytes_total", &destination),
            vendor.bytes_from_meter(),
            "{path:?} destination sent"
        );
        assert_eq!(
            scrape.sum("proxy_destination_received_bytes_total", &destination),
            vendor.bytes_to_meter(),
            "{path:?} destination received"
        );
        assert!(vendor.bytes_to_meter() > 0 && vendor.bytes_from_meter() > 0);

        // (a) and (b): one count per request or tunnel, all 2xx, all to one destination.
        let mut requests = pod.to_vec();
        requests.extend([("protocol", path.protocol()), ("status_class", "2xx")]);
        assert_eq!(
            scrape.sum("proxy_requests_total", &requests),
            path.meter_requests(),
            "{path:?}"
        );
        assert_eq!(
            scrape.sum("proxy_requests_total", &[]),
            path.meter_requests(),
            "{path:?} all"
        );
        assert_eq!(
            scrape.sum("proxy_destination_requests_total", &destination),
            path.meter_requests(),
            "{path:?}"
        );
        assert_eq!(
            scrape.sum("proxy_destination_requests_total", &[]),
            path.meter_requests()
        );
        assert_eq!(
            scrape.sum("proxy_upstream_errors_total", &[]),
            0,
            "{path:?}"
        );
        assert_eq!(
            scrape.sum("proxy_rejected_requests_total", &[]),
            0,
            "{path:?}"
        );
        assert_eq!(
            world.meter.access_log.lines().len() as u64,
            path.meter_requests(),
            "{path:?}"
        );
        world.meter.shutdown().await;
    }
}

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use http::Method;
use pt_load::client::{self, ProxyEndpoint};
use pt_testkit::paths::absolute;
use pt_testkit::vendor::ExchangeBytes;

/// Per pod, the bytes the vendor's own books give the requests whose URL names that pod.
fn vendor_bytes_by_pod(exchanges: &[ExchangeBytes]) -> BTreeMap<String, (u64, u64)> {
    let mut by_pod = BTreeMap::new();
    for exchange in exchanges {
        let pod = exchange
            .target
            .split("pod=")
            .nth(1)
            .expect("every test URL names its pod")
            .to_owned();
        let entry = by_pod.entry(pod).or_insert((0, 0));
        entry.0 += exchange.from_meter;
        entry.1 += exchange.to_meter;
    }
    by_pod
}

/// A crawler pod with its own keep-alive connection to the meter.
async fn pod_connection(
    proxy: &ProxyEndpoint,
) -> hyper::client::conn::http1::SendRequest<client::ClientBody> {
    client::http1(proxy.dial(counters()).await.unwrap())
        .await
        .unwrap()
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<client::ClientBody>,
    proxy: &ProxyEndpoint,
    pod: &str,
    round: u64,
) {
    let (method, body) = if round.is_multiple_of(3) {
        (
            Method::POST,
            client::full(vec![b'u'; (round * 37) as usize]),
        )
    } else {
        (Method::GET, client::empty())
    };
    let size = 100 * round + pod.len() as u64;
    let request = absolute(
        proxy,
        method,
        "shop-a.test",
        &format!("/bytes/{size}?pod={pod}"),
        body,
    );
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    client::drain(response.into_body()).await.unwrap();
}

fn assert_pods_match(
    scrape: &pt_metrics::exposition::Scrape,
    vendor: &BTreeMap<String, (u64, u64)>,
) {
    for (pod, (sent, received)) in vendor {
        let labels = [("source_pod", pod.as_str())];
        assert_eq!(
            scrape.sum("proxy_sent_bytes_total", &labels),
            *sent,
            "{pod} sent"
        );
        assert_eq!(
            scrape.sum("proxy_received_bytes_total", &labels),
            *received,
            "{pod} received"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_vendor_connection_bills_each_request_to_its_own_pod() {
    let world = world("").await;
    let pods = ["pod-a", "pod-bb", "pod-ccc"];
    let mut connections = Vec::new();
    for pod in pods {
        let proxy = world.proxy_for(&format!("crawlers/{pod}"));
        connections.push((pod_connection(&proxy).await, proxy, pod));
    }
    // Round-robin, one request at a time: every request rides the same pooled vendor connection.
    for round in 0..10 {
        for (sender, proxy, pod) in &mut connections {
            get(sender, proxy, pod, round).await;
        }
    }
    let scrape = world.settled().await;
    assert_eq!(
        world.vendor.connections().len(),
        1,
        "the vendor connection was reused"
    );
    let by_pod = vendor_bytes_by_pod(&world.vendor.exchanges());
    assert_eq!(by_pod.len(), 3);
    assert_pods_match(&scrape, &by_pod);
    for pod in pods {
        assert_eq!(
            scrape.sum("proxy_requests_total", &[("source_pod", pod)]),
            10
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pods_sharing_pooled_connections_are_billed_exactly() {
    let world = world("").await;
    let mut tasks = Vec::new();
    for p in 0..6 {
        let proxy = world.proxy_for(&format!("crawlers/pod-{p}"));
        tasks.push(tokio::spawn(async move {
            let mut sender = pod_connection(&proxy).await;
            for round in 0..25 {
                get(&mut sender, &proxy, &format!("pod-{p}"), round).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let scrape = world.settled().await;
    let books = world.vendor.connections();
    let shared = books.iter().any(|book| {
        let pods: std::collections::BTreeSet<String> = book
            .exchanges()
            .iter()
            .filter_map(|e| e.target.split("pod=").nth(1).map(str::to_owned))
            .collect();
        pods.len() > 1
    });
    assert!(
        shared,
        "some vendor connection carried requests of several pods"
    );
    let by_pod = vendor_bytes_by_pod(&world.vendor.exchanges());
    assert_eq!(by_pod.len(), 6);
    assert_pods_match(&scrape, &by_pod);
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "2xx")]),
        150
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_shows_its_bytes_at_every_scrape() {
    let world = world("").await;
    let proxy = world.proxy_for("crawlers/long-lived");
    let tunnel = client::tunnel_h1(
        &proxy,
        proxy.dial(counters()).await.unwrap(),
        "shop-a.test:443",
    )
    .await
    .unwrap();
    let tls = client::tls(
        hyper_util::rt::TokioIo::new(tunnel),
        "shop-a.test",
        &["h2"],
        world.roots(),
    )
    .await
    .unwrap();
    let sender = client::http2(tls).await.unwrap();
    let mut previous = 0;
    for size in [1_000u64, 50_000, 200_000] {
        let request = http::Request::get(format!("https://shop-a.test/bytes/{size}"))
            .body(client::empty())
            .unwrap();
        let response = sender.clone().send_request(request).await.unwrap();
        assert_eq!(client::drain(response.into_body()).await.unwrap(), size);
        // The tunnel is still open: the scrape already shows what crossed the vendor socket.
        let scrape = support::settle(|| async {
            let scrape = world.meter.scrape().await;
            let done = world.vendor.books_match(&scrape);
            (done, scrape)
        })
        .await;
        world.vendor.assert_metered_exactly(&scrape, &[]);
        let received = scrape.sum("proxy_received_bytes_total", &[]);
        assert!(received > previous + size, "{received} after {size}");
        previous = received;
        assert_eq!(
            scrape.sum("proxy_active_tunnels", &[("proxy_vendor", "vendor-a")]),
            1
        );
        assert_eq!(
            scrape.sum("proxy_requests_total", &[("protocol", "connect")]),
            1
        );
    }
    drop(sender);
    let scrape = world.settled().await;
    assert_eq!(scrape.sum("proxy_active_tunnels", &[]), 0);
    assert_eq!(scrape.sum("proxy_tunnels_total", &[("inner", "tls_h2")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_an_ip_literal_is_billed_to_its_sni_host() {
    let world = world(
        "security:\n  connect_ports: [443, \"1024-65535\"]\n  allowed_private_destinations: [\"127.0.0.0/8\"]",
    )
    .await;
    let proxy = world.proxy_for("crawlers/pod-1");
    let target = world.origin.https.to_string();
    let tunnel = client::tunnel_h1(&proxy, proxy.dial(counters()).await.unwrap(), &target)
        .await
        .unwrap();
    let tls = client::tls(
        hyper_util::rt::TokioIo::new(tunnel),
        "news-b.test",
        &["http/1.1"],
        world.roots(),
    )
    .await
    .unwrap();
    let mut sender = client::http1(tls).await.unwrap();
    let request = http::Request::get("/bytes/4096")
        .header("host", "news-b.test")
        .body(client::empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    client::drain(response.into_body()).await.unwrap();
    drop(sender);

    // A plain (non-TLS) tunnel to an IP has no SNI: it stays an IP literal.
    let plain = client::tunnel_h1(
        &proxy,
        proxy.dial(counters()).await.unwrap(),
        &world.origin.http.to_string(),
    )
    .await
    .unwrap();
    let mut sender = client::http1(hyper_util::rt::TokioIo::new(plain))
        .await
        .unwrap();
    let request = http::Request::get("/bytes/10")
        .header("host", "x")
        .body(client::empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    client::drain(response.into_body()).await.unwrap();
    drop(sender);

    let scrape = world.settled().await;
    let books = world.vendor.connections();
    let tls_book = (
        books[0].from_meter.load(Ordering::SeqCst),
        books[0].to_meter.load(Ordering::SeqCst),
    );
    let plain_book = (
        books[1].from_meter.load(Ordering::SeqCst),
        books[1].to_meter.load(Ordering::SeqCst),
    );
    let sni = [("destination", "news-b.test")];
    let ip = [("destination", "ip-literal")];
    assert_eq!(
        scrape.sum("proxy_destination_sent_bytes_total", &sni),
        tls_book.0
    );
    assert_eq!(
        scrape.sum("proxy_destination_received_bytes_total", &sni),
        tls_book.1
    );
    assert_eq!(scrape.sum("proxy_destination_requests_total", &sni), 1);
    assert_eq!(
        scrape.sum("proxy_destination_sent_bytes_total", &ip),
        plain_book.0
    );
    assert_eq!(
        scrape.sum("proxy_destination_received_bytes_total", &ip),
        plain_book.1
    );
    assert_eq!(scrape.sum("proxy_destination_requests_total", &ip), 1);
    assert_eq!(
        scrape.sum("proxy_tunnels_total", &[("inner", "not_tls")]),
        1
    );
    assert_eq!(
        scrape.sum("proxy_tunnels_total", &[("inner", "tls_http1")]),
        1
    );
}

/// Under a cap of two destinations, a GET of 500 bytes to each host, one after another, from one
/// pod: the statuses; then the requests per destination label, and that the destination byte
/// families add up to the pod families exactly (nothing lost or counted twice by folding).
async fn through_a_cap_of_two(hosts: &[&str]) -> (Vec<u16>, BTreeMap<String, u64>) {
    let world = world("metrics:\n  max_destinations_per_vendor: 2").await;
    let proxy = world.proxy_for("crawlers/pod-1");
    let mut sender = pod_connection(&proxy).await;
    let mut statuses = Vec::new();
    for host in hosts {
        let request = absolute(&proxy, Method::GET, host, "/bytes/500", client::empty());
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        statuses.push(response.status().as_u16());
        client::drain(response.into_body()).await.unwrap();
    }
    let scrape = world.settled().await;
    for (family, pod_family) in [
        (
            "proxy_destination_sent_bytes_total",
            "proxy_sent_bytes_total",
        ),
        (
            "proxy_destination_received_bytes_total",
            "proxy_received_bytes_total",
        ),
    ] {
        assert_eq!(
            scrape.sum(family, &[]),
            scrape.sum(pod_family, &[]),
            "{family}"
        );
    }
    assert_eq!(
        scrape.sum("proxy_destination_labels", &[("proxy_vendor", "vendor-a")]),
        2
    );
    assert_eq!(scrape.sum("proxy_destination_label_limit", &[]), 2);
    let by_destination = scrape
        .sum_by("proxy_destination_requests_total", &["destination"])
        .into_iter()
        .map(|(labels, n)| (labels.concat(), n))
        .collect();
    (statuses, by_destination)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_past_the_cap_fold_into_other_and_totals_stay_exact() {
    let hosts = [
        "shop-a.test",
        "news-b.test",
        "api.data-c.test",
        "www.shop-a.test",
    ];
    let (statuses, by_destination) = through_a_cap_of_two(&hosts).await;
    assert_eq!(statuses, [200; 4]);
    assert_eq!(
        by_destination,
        counts(&[("news-b.test", 1), ("other", 1), ("shop-a.test", 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_that_never_answer_take_no_place_under_the_cap() {
    // Names that do not exist, which the vendor answers with 502: a crawler (or a hostile
    // client) asking for them must not push the sites it really crawls into `other`.
    let hosts = [
        "gone-1.test",
        "gone-2.test",
        "gone-3.test",
        "shop-a.test",
        "news-b.test",
    ];
    let (statuses, by_destination) = through_a_cap_of_two(&hosts).await;
    assert_eq!(statuses, [502, 502, 502, 200, 200]);
    assert_eq!(
        by_destination,
        counts(&[("news-b.test", 1), ("other", 3), ("shop-a.test", 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metering_off_traffic_flows_and_nothing_is_counted() {
    let world = world("metrics:\n  metering: false").await;
    let proxy = world.proxy_for("crawlers/pod-1");
    for path in [Path::AbsoluteGet, Path::ConnectTlsH2] {
        let statuses = path
            .run(&proxy, "shop-a.test", world.roots(), counters())
            .await
            .unwrap();
        assert!(statuses.iter().all(|s| *s == 200));
    }
    let scrape = world.meter.scrape().await;
    for family in [
        "proxy_requests_total",
        "proxy_sent_bytes_total",
        "proxy_destination_requests_total",
    ] {
        assert_eq!(scrape.select(family, &[]).count(), 0, "{family}");
    }
    assert!(world.vendor.bytes_to_meter() > 100_000);
    assert!(world.meter.access_log.lines().is_empty());
}
