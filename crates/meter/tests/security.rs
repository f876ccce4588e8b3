//! Security fails closed: no open proxy, no private destinations, no credential leaks, no
//! request smuggling, every size bounded. Each refusal forwards nothing and is counted.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use std::time::Duration;

use base64::Engine;
use pt_load::client::ProxyEndpoint;
use pt_testkit::meter::{MeterSetup, TestMeter};
use pt_testkit::paths::Path;
use pt_testkit::vendor::{FakeVendor, Fault};
use support::{VENDOR_PASSWORD, connect_status, counters, get, world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_CANARY: &str = "client-canary-93be";

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_appear_only_where_they_belong() {
    let world = world("").await;
    let denying = FakeVendor::builder()
        .fault(Fault::AlwaysDenyAuth)
        .start()
        .await
        .unwrap();
    let meter = MeterSetup::new()
        .vendor("vendor-a", &world.vendor, Some(VENDOR_PASSWORD))
        .vendor("vendor-denies", &denying, Some(VENDOR_PASSWORD))
        .yaml("routing:\n  default_vendor: vendor-a")
        .spawn()
        .await;
    let proxy = ProxyEndpoint::new(meter.proxy()).with_credentials("crawlers/pod-1", CLIENT_CANARY);
    for path in Path::ALL {
        path.run(&proxy, "shop-a.test", world.roots(), counters())
            .await
            .unwrap();
    }
    // Error answers must not carry credentials either.
    let mut bodies = Vec::new();
    bodies.push(
        get(
            &proxy.clone().with_header("x-proxy-vendor", "vendor-denies"),
            "shop-a.test",
        )
        .await
        .body
        .unwrap(),
    );
    bodies.push(
        get(
            &proxy.clone().with_header("x-proxy-vendor", "nope"),
            "shop-a.test",
        )
        .await
        .body
        .unwrap(),
    );
    bodies.push(get(&proxy, "169.254.169.254").await.body.unwrap());

    let vendor_token = base64(&format!("meter:{VENDOR_PASSWORD}"));
    let client_token = base64(&format!("crawlers/pod-1:{CLIENT_CANARY}"));
    let secrets = [
        VENDOR_PASSWORD,
        vendor_token.as_str(),
        CLIENT_CANARY,
        client_token.as_str(),
    ];
    let (_, _, metrics) = meter.admin_get("/metrics").await;
    let origin_saw: Vec<String> = world
        .origin
        .requests()
        .iter()
        .flat_map(|r| r.headers.clone())
        .collect();
    let places = [
        ("the origin", origin_saw.join("\n")),
        ("the access log", meter.access_log.lines().join("\n")),
        ("/metrics", metrics),
        ("error bodies", bodies.join("\n")),
    ];
    assert!(!world.origin.requests().is_empty());
    for (place, text) in &places {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked into {place}");
        }
    }
    // The vendor gets the meter's credentials and never the client's.
    let vendor_saw: Vec<String> = world
        .vendor
        .requests()
        .iter()
        .flat_map(|r| r.headers.clone())
        .collect();
    let vendor_saw = vendor_saw.join("\n");
    assert!(vendor_saw.contains(&vendor_token));
    assert!(!vendor_saw.contains(&client_token) && !vendor_saw.contains(CLIENT_CANARY));
    assert!(!vendor_saw.to_ascii_lowercase().contains("x-proxy-vendor"));
    meter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_destinations_are_refused_before_any_dial() {
    let world = world("").await;
    let direct = MeterSetup::new()
        .vendor_yaml("  - name: direct\n    kind: direct\n")
        .yaml("routing:\n  default_vendor: direct")
        .spawn()
        .await;
    let admin_port = world.meter.admin.port();
    for meter in [&world.meter, &direct] {
        let proxy = ProxyEndpoint::new(meter.proxy());
        for host in [
            "127.0.0.1",
            "[::1]",
            "169.254.169.254",
            "[fd00:ec2::254]",
            "10.0.0.8",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
        ] {
            let answer = get(&proxy, host).await;
            assert_eq!(
                (answer.status, answer.reason.as_str()),
                (403, "destination_not_allowed"),
                "GET {host}"
            );
            assert_eq!(
                connect_status(&proxy, &format!("{host}:443")).await,
                403,
                "CONNECT {host}"
            );
        }
        // A meter's own admin port is refused as a loop (whatever the allow-list says); another
        // meter's is a loopback address like any other.
        let answer = get(&proxy, &format!("127.0.0.1:{admin_port}")).await;
        let own = std::ptr::eq(meter, &world.meter);
        let reason = if own {
            "loop"
        } else {
            "destination_not_allowed"
        };
        assert_eq!((answer.status, answer.reason.as_str()), (403, reason));
    }
    // A direct vendor resolves names itself and checks the address it will dial.
    let proxy = ProxyEndpoint::new(direct.proxy());
    let answer = get(&proxy, "localhost").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (403, "destination_not_allowed")
    );
    assert_eq!(connect_status(&proxy, "localhost:443").await, 403);
    assert!(
        world.vendor.connections().is_empty(),
        "nothing reached the vendor"
    );
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "destination_not_allowed")]
        ),
        24
    );
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "loop")]),
        1
    );
    assert_eq!(scrape.sum("proxy_requests_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_private_network_is_reachable_directly() {
    let world = world("").await;
    let direct = MeterSetup::new()
        .vendor_yaml("  - name: direct\n    kind: direct\n")
        .yaml(&format!(
            "routing:\n  default_vendor: direct\nsecurity:\n  allowed_private_destinations: [\"127.0.0.0/8\"]\n  http_ports: [{}]",
            world.origin.http.port()
        ))
        .spawn()
        .await;
    let proxy = ProxyEndpoint::new(direct.proxy());
    let answer = get(&proxy, &world.origin.http.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let scrape = direct.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_requests_total",
            &[("proxy_vendor", "direct"), ("status_class", "2xx")]
        ),
        1
    );
    assert!(scrape.sum("proxy_received_bytes_total", &[]) > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_only_reaches_allowed_ports() {
    let world = world("").await;
    let proxy = world.proxy_for("crawlers/pod-1");
    assert_eq!(connect_status(&proxy, "shop-a.test:22").await, 403);
    assert_eq!(connect_status(&proxy, "shop-a.test:8443").await, 403);
    let answer = get(&proxy, "shop-a.test:25").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (403, "port_not_allowed")
    );
    assert!(world.vendor.connections().is_empty());
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "port_not_allowed")]
        ),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_required_when_configured() {
    let pki = pt_testkit::pki::TestPki::new(&support::HOSTS);
    let origin = pt_testkit::origin::Origin::start(&pki).await.unwrap();
    let vendor = support::vendor_for(&origin).await;
    let meter = MeterSetup::new()
        .vendor("vendor-a", &vendor, Some(VENDOR_PASSWORD))
        .yaml("routing:\n  default_vendor: vendor-a\nclients:\n  password_env: CLIENT_PW")
        .env("CLIENT_PW", "let-me-in")
        .spawn()
        .await;
    let anonymous = ProxyEndpoint::new(meter.proxy());
    let answer = get(&anonymous, "shop-a.test").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (407, "auth_required")
    );
    let wrong = anonymous
        .clone()
        .with_credentials("crawlers/pod-1", "guess");
    assert_eq!(get(&wrong, "shop-a.test").await.status, 407);
    assert_eq!(connect_status(&wrong, "shop-a.test:443").await, 407);
    let right = anonymous
        .clone()
        .with_credentials("crawlers/pod-1", "let-me-in");
    assert_eq!(get(&right, "shop-a.test").await.status, 200);
    assert_eq!(
        vendor.requests().len(),
        1,
        "only the authenticated request was forwarded"
    );
    let scrape = meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "auth_required")]
        ),
        1
    );
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "auth_failed")]
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowed_sources_are_turned_away() {
    let world = world("clients:\n  allowed_sources: [\"10.0.0.0/8\"]").await;
    let mut stream = TcpStream::connect(world.meter.proxy()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "source_not_allowed")]
        ),
        1
    );
}

/// Sends raw bytes on a new connection and returns everything the meter answers until close.
async fn raw(meter: &TestMeter, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(meter.proxy()).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_nothing_is_forwarded() {
    let world = world("").await;
    let head = "POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\n";
    for (case, framing) in [
        ("plus sign", "Content-Length: +3\r\n\r\nabc".to_owned()),
        (
            "two lengths",
            "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_owned(),
        ),
        (
            "not chunked last",
            "Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "chunk overflow",
            "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n".to_owned(),
        ),
        ("space in name", "Content-Length : 3\r\n\r\nabc".to_owned()),
        (
            "obs-fold",
            "X-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
    ] {
        let answer = raw(&world.meter, format!("{head}{framing}").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
    }
    assert_eq!(world.vendor.bytes_from_meter(), 0, "nothing was forwarded");
    // The meter still serves.
    let proxy = world.proxy_for("crawlers/pod-1");
    assert_eq!(get(&proxy, "shop-a.test").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_both_length_and_chunking_is_refused_before_a_byte_is_forwarded() {
    // CL.TE: a vendor trusting Content-Length would see two requests, one of them smuggled into
    // a connection that other pods share. RFC 9112 §6.1 lets a server refuse such a message;
    // the meter does, before anything reaches the vendor, and closes the connection.
    let world = world("").await;
    let smuggled = "GET http://shop-a.test/smuggled HTTP/1.1\r\nHost: shop-a.test\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let request = format!(
        "POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answer = raw(&world.meter, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(world.vendor.bytes_from_meter(), 0, "nothing was forwarded");
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "bad_request")]
        ),
        1
    );
    let proxy = world.proxy_for("crawlers/pod-1");
    assert_eq!(get(&proxy, "shop-a.test").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused() {
    let world = world("limits:\n  max_header_bytes: 16384\n  max_headers: 20").await;
    let big = format!(
        "GET http://shop-a.test/ HTTP/1.1\r\nHost: shop-a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(
        raw(&world.meter, big.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET http://shop-a.test/ HTTP/1.1\r\nHost: shop-a.test\r\n{many}\r\n");
    assert!(
        raw(&world.meter, many.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    let long_uri = format!(
        "GET http://shop-a.test/{} HTTP/1.1\r\nHost: shop-a.test\r\n\r\n",
        "u".repeat(20_000)
    );
    let answer = raw(&world.meter, long_uri.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 414") || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(world.vendor.bytes_from_meter(), 0);
}

/// Waits until the meter has accepted `n` client connections.
async fn open_connections(meter: &TestMeter, n: u64) {
    support::settle(|| async {
        let open = meter.scrape().await.sum("proxy_open_connections", &[]);
        (open == n, ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_idle_connections_make_room_and_busy_ones_get_a_counted_503() {
    let world = world("limits:\n  max_connections: 2").await;
    // Two connections in the middle of an upload: busy. Once the vendor has seen both requests
    // the meter is certainly working on them (a connection that has only just been accepted may
    // not have read its first bytes yet, and then counts as idle).
    let mut first = TcpStream::connect(world.meter.proxy()).await.unwrap();
    let mut second = TcpStream::connect(world.meter.proxy()).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(
                b"POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\n\
                  Content-Length: 100\r\n\r\n0123456789",
            )
            .await
            .unwrap();
    }
    support::settle(|| async { (world.vendor.connections().len() == 2, ()) }).await;
    let answer = raw(&world.meter, b"").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("overloaded"));
    drop((first, second));

    // Two idle keep-alive connections: the oldest is closed for the newcomer, which is served.
    let proxy = world.proxy_for("crawlers/pod-1");
    open_connections(&world.meter, 0).await;
    let mut oldest = TcpStream::connect(world.meter.proxy()).await.unwrap();
    open_connections(&world.meter, 1).await;
    let _newer = TcpStream::connect(world.meter.proxy()).await.unwrap();
    open_connections(&world.meter, 2).await;
    assert_eq!(get(&proxy, "shop-a.test").await.status, 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), oldest.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the oldest idle connection was closed");
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "overloaded")]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_at_the_header_timeout() {
    let world = world("limits:\n  header_read_timeout: 300ms").await;
    let mut stream = TcpStream::connect(world.meter.proxy()).await.unwrap();
    stream
        .write_all(b"GET http://shop-a.test/ HTTP/1.1\r\nHost: sh")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the meter closed the slow connection");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(world.vendor.bytes_from_meter(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_and_https_absolute_requests_are_bad_requests() {
    let world = world("").await;
    let answer = raw(
        &world.meter,
        b"GET / HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(
        &world.meter,
        b"GET https://shop-a.test/ HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(
        &world.meter,
        b"CONNECT shop-a.test:443\r\nX: y HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(world.vendor.connections().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_its_framing_mid_way_is_a_client_framing_error() {
    // The head and a good first chunk leave for the vendor; then a malformed chunk size. The
    // client is answered 400 `bad_framing` (not `client_gone`), the request counted as a 4xx
    // and as a refusal, and the vendor connection, out of step, is never reused.
    let world = world("").await;
    let mut stream = TcpStream::connect(world.meter.proxy()).await.unwrap();
    stream
        .write_all(b"POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    support::settle(|| async { (world.vendor.bytes_from_meter() > 0, ()) }).await;
    assert!(
        world.vendor.bytes_from_meter() > 0,
        "the head went out first"
    );
    stream.write_all(b"4 \r\nabcd\r\n0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("X-Proxy-Telemetry-Error: bad_framing"),
        "{answer}"
    );

    assert_eq!(
        get(&world.proxy_for("crawlers/pod-1"), "shop-a.test")
            .await
            .status,
        200
    );
    assert_eq!(
        world.vendor.connections().len(),
        2,
        "the broken connection was not reused"
    );
    // The vendor's answer to the broken upload was written after the meter closed: it never
    // arrived. Everything the meter sent, and everything that arrived, is counted.
    let scrape = support::settle(|| async {
        let scrape = world.meter.scrape().await;
        let done = scrape.sum("proxy_sent_bytes_total", &[]) == world.vendor.bytes_from_meter();
        (done, scrape)
    })
    .await;
    assert_eq!(
        scrape.sum("proxy_sent_bytes_total", &[]),
        world.vendor.bytes_from_meter()
    );
    assert!(scrape.sum("proxy_received_bytes_total", &[]) <= world.vendor.bytes_to_meter());
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "bad_framing")]
        ),
        1
    );
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("status_class", "4xx")]),
        1
    );
    let lines = world.meter.access_log.lines();
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (first["outcome"].as_str(), first["status"].as_u64()),
        (Some("bad_framing"), Some(400))
    );
}
