//! The project's own hostile-input suite: the catalogue of `docs/hostile-inputs.md`, made
//! executable. Cases are generated per class; each asserts the exact answer, that a refused
//! case put zero bytes on the recording fake vendor, and that the meter still serves afterwards.
//! Every failure of a class is reported together.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

#[path = "../support/mod.rs"]
mod support;

mod corpus;
mod h2;
mod h2raw;
mod harness;
mod limits;
mod open_proxy;
mod slow;
mod smuggling;
mod targets;
mod vendors;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pt_testkit::VendorBooks;
use pt_testkit::meter::MeterSetup;
use support::{VENDOR_PASSWORD, world};

#[test]
fn the_suite_holds_at_least_400_generated_cases() {
    let http1 = smuggling::cases().len()
        + corpus::cases().len()
        + 2 * targets::private_addresses().len()
        + targets::malformed().len()
        + targets::own_sockets(1, 2).len()
        + open_proxy::credentials().len()
        + open_proxy::ports_and_vendors().len()
        + limits::cases().len();
    let http2 = h2::malformed().len() + h2::floods().len();
    let vendors: usize = vendors::faults()
        .into_iter()
        .map(|(f, g, c)| vendors::cases(f, g, c).len())
        .sum();
    let total = http1 + http2 + vendors;
    assert!(total >= 400, "{total} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused_before_a_byte_is_forwarded() {
    let world = world("").await;
    let cases = smuggling::cases();
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_desync_guardian_corpus_is_answered_as_pinned() {
    let world = world("").await;
    let cases = corpus::cases();
    assert!(cases.len() >= 150, "{} corpus cases", cases.len());
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_public_destinations_are_refused_before_any_dial() {
    let world = world("").await;
    let mut cases = targets::private_addresses();
    cases.extend(targets::malformed());
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_vendor_refuses_the_same_addresses_and_names_that_resolve_to_them() {
    let world = world("").await;
    let direct = MeterSetup::new()
        .vendor("vendor-a", &world.vendor, Some(VENDOR_PASSWORD))
        .vendor_yaml("  - name: direct\n    kind: direct\n")
        .yaml("routing:\n  default_vendor: direct")
        .spawn()
        .await;
    let mut cases = targets::private_addresses();
    for name in ["localhost", "LOCALHOST", "localhost."] {
        for (form, bytes) in [
            (
                "GET",
                format!("GET http://{name}:8080/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            ),
            (
                "CONNECT",
                format!("CONNECT {name}:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
        ] {
            cases.push(harness::Case::new(
                "targets",
                format!("{form} {name} (resolves to loopback)"),
                bytes,
                harness::Expect::Refused(403, "destination_not_allowed"),
            ));
        }
    }
    let healthy = b"GET http://shop-a.test/bytes/10 HTTP/1.1\r\nHost: shop-a.test\r\nX-Proxy-Vendor: vendor-a\r\nConnection: close\r\n\r\n";
    let failures = harness::run_with_health(&direct, &world.vendor, &cases, healthy).await;
    harness::assert_none(&failures, cases.len());
    // Every refusal is counted once, names that resolved to a refused address included, and
    // none of them as a request carried to a vendor: those are the health checks alone.
    let scrape = direct.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[]),
        cases.len() as u64
    );
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-a")]),
        cases.len() as u64
    );
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "direct")]),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_never_proxies_to_itself_whatever_the_allow_list_says() {
    let world =
        world("security:\n  allowed_private_destinations: [\"127.0.0.0/8\", \"0.0.0.0/32\"]").await;
    let cases = targets::own_sockets(world.meter.proxy().port(), world.meter.admin.port());
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "loop")]),
        cases.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_proxy_is_refused_to_clients_without_the_password() {
    let pki = pt_testkit::pki::TestPki::new(&support::HOSTS);
    let origin = pt_testkit::origin::Origin::start(&pki).await.unwrap();
    let vendor = support::vendor_for(&origin).await;
    let meter = MeterSetup::new()
        .vendor("vendor-a", &vendor, Some(VENDOR_PASSWORD))
        .yaml("routing:\n  default_vendor: vendor-a\nclients:\n  password_env: CLIENT_PASSWORD")
        .env("CLIENT_PASSWORD", open_proxy::PASSWORD)
        .spawn()
        .await;
    let cases = open_proxy::credentials();
    let failures = harness::run_with_health(&meter, &vendor, &cases, &open_proxy::healthy()).await;
    harness::assert_none(&failures, cases.len());

    // An HTTP/2 request without credentials is refused on its header block: the meter reads
    // none of a body that is still coming (three bytes of ten).
    let mut client = h2raw::Client::connect(meter.proxy()).await;
    let mut frames = h2raw::headers(1, &h2raw::post_fields(), false);
    frames.extend(h2raw::frame(h2raw::DATA, 0, 1, b"abc"));
    client.send(&frames).await;
    assert_eq!(
        client.outcome(1, Duration::from_secs(5)).await,
        h2raw::Outcome::Answered(407, Some("auth_required".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_and_vendors_outside_the_configuration_are_refused() {
    let world = world("").await;
    let cases = open_proxy::ports_and_vendors();
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_with_their_status() {
    let world = world("limits:\n  max_header_bytes: 16384\n  max_headers: 20").await;
    let cases = limits::cases();
    let failures = harness::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_are_stream_errors_and_nothing_is_forwarded() {
    let world = world("").await;
    let cases = h2::malformed();
    let failures = h2::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_the_connection_or_are_absorbed() {
    let world = world("").await;
    let cases = h2::floods();
    let failures = h2::run(&world.meter, &world.vendor, &cases).await;
    harness::assert_none(&failures, cases.len());
}

/// Timeouts short enough for a test, long enough for a loaded CI machine to meet them.
const SLOW: &str =
    "limits:\n  header_read_timeout: 500ms\n  client_idle_timeout: 1500ms\n  response_timeout: 1s";

/// Whether `took` is the timeout `expected` (not earlier, and not much later).
fn at(took: Option<Duration>, expected: Duration) -> bool {
    took.is_some_and(|t| t >= expected.mul_f32(0.9) && t <= expected + Duration::from_millis(1500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_at_their_timeouts() {
    let world = world(SLOW).await;
    let address = world.meter.proxy();
    let head = Duration::from_millis(500);
    let idle = Duration::from_millis(1500);
    let limit = Duration::from_secs(10);
    let mut failures = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("[slow] {name}: {detail}"));
        }
    };

    let took = slow::silent(address, limit).await;
    check(
        "a silent connection",
        at(took, head),
        format!("closed after {took:?}"),
    );

    let request = b"GET http://shop-a.test/bytes/1 HTTP/1.1\r\nHost: shop-a.test\r\n\r\n";
    let (took, answer) = slow::trickle(address, request, Duration::from_millis(50), limit).await;
    check(
        "a trickled HTTP/1.1 head",
        at(took, head) && answer.starts_with(b"HTTP/1.1 408"),
        format!("{took:?} {:?}", String::from_utf8_lossy(&answer)),
    );

    let (took, answer) = slow::trickle(
        address,
        pt_sniff::h2::PREFACE,
        Duration::from_millis(50),
        limit,
    )
    .await;
    check(
        "a trickled HTTP/2 preface",
        at(took, head) && answer.is_empty(),
        format!("{took:?} {answer:?}"),
    );

    // Preface and SETTINGS, then PINGs and nothing else: no request within the head timeout.
    let mut client = h2raw::Client::connect(address).await;
    let started = std::time::Instant::now();
    let mut closed = None;
    for i in 0..100u64 {
        if !client
            .send(&h2raw::frame(h2raw::PING, 0, 0, &i.to_be_bytes()))
            .await
        {
            closed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(
        "an HTTP/2 connection that never sends a request",
        at(closed, head),
        format!("closed after {closed:?}"),
    );

    // One request, then only PINGs: closed (GOAWAY) at the idle timeout after the stream ended.
    let mut client = h2raw::Client::connect(address).await;
    client
        .send(&h2raw::headers(1, &h2raw::get_fields(b"/bytes/1"), true))
        .await;
    let answered = client.outcome(1, limit).await;
    let (outcome, took) = client.ping_until_closed().await;
    let took = Some(took);
    check(
        "an HTTP/2 connection with no stream, sending PINGs",
        answered == h2raw::Outcome::Answered(200, None)
            && outcome == h2raw::Outcome::GoAway(0)
            && at(took, idle),
        format!("{answered:?}, then {outcome:?} after {took:?}"),
    );

    // HTTP/2 streams that stop moving, on a connection kept busy with PINGs: a body that stops
    // coming, and a client that lets no response data through (its stream window at zero).
    // The connection is sent GOAWAY at the idle timeout and closed.
    let window_zero = h2raw::frame(h2raw::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
    for (name, frames) in [
        ("an HTTP/2 body that stops coming", {
            let mut f = h2raw::headers(1, &h2raw::post_fields(), false);
            f.extend(h2raw::frame(h2raw::DATA, 0, 1, b"abc"));
            f
        }),
        ("an HTTP/2 client that stops reading", {
            let mut f = window_zero.clone();
            f.extend(h2raw::headers(
                1,
                &h2raw::get_fields(b"/bytes/2000000"),
                true,
            ));
            f
        }),
    ] {
        let mut client = h2raw::Client::connect(address).await;
        client.send(&frames).await;
        let (outcome, took) = client.ping_until_closed().await;
        let took = Some(took);
        check(
            name,
            outcome == h2raw::Outcome::GoAway(0) && at(took, idle),
            format!("{outcome:?} after {took:?}"),
        );
    }

    // A vendor that stops mid-body on one stream while the connection's other streams go on:
    // that stream is reset at the idle timeout, as an HTTP/1.1 exchange would be ended.
    let mut client = h2raw::Client::connect(address).await;
    client
        .send(&h2raw::headers(1, &h2raw::get_fields(b"/stall/1000"), true))
        .await;
    let answered = client.outcome(1, limit).await;
    let started = std::time::Instant::now();
    let mut stalled = h2raw::Outcome::Silent;
    let mut others = Vec::new();
    for stream in (3..200u32).step_by(2) {
        client
            .send(&h2raw::headers(
                stream,
                &h2raw::get_fields(b"/bytes/1"),
                true,
            ))
            .await;
        others.push(client.outcome(stream, limit).await);
        stalled = client.outcome(1, Duration::from_millis(150)).await;
        if stalled != h2raw::Outcome::Silent || started.elapsed() > limit {
            break;
        }
    }
    let took = Some(started.elapsed());
    check(
        "an HTTP/2 stream whose vendor stops mid-body, beside busy ones",
        answered == h2raw::Outcome::Answered(200, None)
            && matches!(stalled, h2raw::Outcome::Reset(_))
            && at(took, idle)
            && others
                .iter()
                .all(|o| *o == h2raw::Outcome::Answered(200, None)),
        format!(
            "{answered:?}, then {stalled:?} after {took:?}; {} other streams, the last {:?}",
            others.len(),
            others.last()
        ),
    );

    // A keep-alive connection after its request: closed at the idle timeout.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let answer = harness::read_answer(&mut stream, false).await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await;
    let took = Some(started.elapsed());
    check(
        "an idle keep-alive connection",
        answer.status == Some(200) && at(took, idle),
        format!("{:?} then closed after {took:?}", answer.status),
    );

    // A body that stops coming: the exchange ends at the idle timeout, blamed on the client.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"POST http://shop-a.test/up HTTP/1.1\r\nHost: shop-a.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await;
    let took = Some(started.elapsed());
    check(
        "a stalled body",
        at(took, idle),
        format!("closed after {took:?}"),
    );

    // A client that stops reading a large response: ended at the idle timeout.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET http://shop-a.test/bytes/200000000 HTTP/1.1\r\nHost: shop-a.test\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let lines = || world.meter.access_log.lines();
    let stalled = support::settle(|| async {
        let done = lines().iter().any(|l| l.contains("/bytes/200000000"));
        (done, ())
    });
    tokio::time::timeout(limit, stalled).await.ok();
    let took = Some(started.elapsed());
    let line = lines()
        .into_iter()
        .find(|l| l.contains("/bytes/200000000"))
        .unwrap_or_default();
    check(
        "a client that stops reading",
        at(took, idle) && line.contains("\"outcome\":\"client_cut\""),
        format!("logged after {took:?}: {line}"),
    );
    drop(stream);
    harness::assert_none(&failures, 11);
    assert_eq!(
        harness::send(&world.meter, harness::HEALTHY).await.status,
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_their_first_bytes_do_not_lock_others_out() {
    // Every slot held by a client trickling the HTTP/2 preface a byte at a time: such a
    // connection has sent no request yet, so a new client takes its slot and is served.
    let world = world("limits:\n  max_connections: 50\n  header_read_timeout: 3s").await;
    let address = world.meter.proxy();
    let mut tricklers = Vec::new();
    for _ in 0..50 {
        tricklers.push(tokio::spawn(slow::trickle(
            address,
            pt_sniff::h2::PREFACE,
            Duration::from_millis(200),
            Duration::from_secs(10),
        )));
    }
    support::settle(|| async {
        let open = world
            .meter
            .scrape()
            .await
            .sum("proxy_open_connections", &[]);
        (open == 50, ())
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let answer = harness::send(&world.meter, harness::HEALTHY).await;
        assert_eq!(answer.status, Some(200), "{}", answer.head);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "served at once");
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "overloaded")]),
        0
    );
    for trickler in tricklers {
        trickler.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_vendors_get_fast_answers_with_every_byte_counted() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (fault, get, connect) in vendors::faults() {
        let vendor = match fault {
            Some(fault) => pt_testkit::vendor::FakeVendor::builder()
                .fault(fault)
                .start()
                .await
                .unwrap(),
            // A vendor that refuses connections: bound, then closed.
            None => pt_testkit::vendor::FakeVendor::builder()
                .start()
                .await
                .unwrap(),
        };
        let address = match fault {
            Some(_) => vendor.address,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
        };
        let meter = MeterSetup::new()
            .vendor_yaml(&format!("  - name: vendor-a\n    url: http://{address}\n    username: meter\n    password_env: P\n"))
            .env("P", VENDOR_PASSWORD)
            .yaml("routing:\n  default_vendor: vendor-a\nlimits:\n  response_timeout: 300ms")
            .spawn()
            .await;
        let cases = vendors::cases(fault, get, connect);
        count += cases.len();
        // The health check needs a working vendor: any answer from the meter will do here, so
        // check the meter's admin endpoint instead.
        for case in &cases {
            let answer = harness::send(&meter, &case.bytes).await;
            let ok = match case.expect {
                harness::Expect::VendorFailed(status, reason) => {
                    answer.status == Some(status) && answer.reason.as_deref() == Some(reason)
                }
                harness::Expect::Forwarded(status) => {
                    answer.status == Some(status) && answer.reason.is_none() && answer.complete
                }
                harness::Expect::Cut(status) => answer.status == Some(status) && answer.closed,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "[vendor-faults] {}: expected {:?}, got {:?} {:?} closed {}",
                    case.name, case.expect, answer.status, answer.reason, answer.closed
                ));
            }
            if meter.admin_get("/healthz").await.0 != 200 {
                failures.push(format!(
                    "[vendor-faults] {}: the meter stopped serving",
                    case.name
                ));
            }
        }
        let scrape = support::settle(|| async {
            let scrape = meter.scrape().await;
            (
                vendor.books_match(&scrape) && scrape.sum("proxy_active_tunnels", &[]) == 0,
                scrape,
            )
        })
        .await;
        if fault.is_some() && !vendor.books_match(&scrape) {
            failures.push(format!(
                "[vendor-faults] {fault:?}: the meter counted {} / {} bytes, the vendor {} / {}",
                scrape.sum("proxy_sent_bytes_total", &[]),
                scrape.sum("proxy_received_bytes_total", &[]),
                vendor.bytes_from_meter(),
                vendor.bytes_to_meter()
            ));
        }
        if scrape.sum("proxy_active_tunnels", &[]) != 0 {
            failures.push(format!("[vendor-faults] {fault:?}: a tunnel is still open"));
        }
        meter.shutdown().await;
    }
    harness::assert_none(&failures, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_canaries_appear_nowhere_they_do_not_belong() {
    let pki = pt_testkit::pki::TestPki::new(&support::HOSTS);
    let origin = pt_testkit::origin::Origin::start(&pki).await.unwrap();
    let vendor = support::vendor_for(&origin).await;
    let denying = pt_testkit::vendor::FakeVendor::builder()
        .fault(pt_testkit::vendor::Fault::AlwaysDenyAuth)
        .start()
        .await
        .unwrap();
    let meter = MeterSetup::new()
        .vendor("vendor-a", &vendor, Some(VENDOR_PASSWORD))
        .vendor("vendor-denies", &denying, Some(VENDOR_PASSWORD))
        .yaml("routing:\n  default_vendor: vendor-a\nclients:\n  password_env: CLIENT_PASSWORD")
        .env("CLIENT_PASSWORD", open_proxy::PASSWORD)
        .spawn()
        .await;
    let right = open_proxy::healthy();
    let right = String::from_utf8_lossy(&right);
    let auth_line = right
        .lines()
        .find(|l| l.starts_with("Proxy-Authorization"))
        .unwrap()
        .to_owned();
    let mut requests: Vec<Vec<u8>> = open_proxy::credentials()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    for (vendor, target) in [
        ("vendor-denies", "shop-a.test"),
        ("vendor-a", "169.254.169.254"),
        ("vendor-a", "shop-a.test:22"),
        ("nope", "shop-a.test"),
    ] {
        for form in ["GET", "CONNECT"] {
            let line = match form {
                "GET" => format!("GET http://{target}/ HTTP/1.1"),
                _ => format!(
                    "CONNECT {target}{} HTTP/1.1",
                    if target.contains(':') { "" } else { ":443" }
                ),
            };
            requests.push(
                format!("{line}\r\nHost: x\r\n{auth_line}\r\nX-Proxy-Vendor: {vendor}\r\nConnection: close\r\n\r\n")
                    .into_bytes(),
            );
        }
    }
    let mut answers = String::new();
    for request in &requests {
        let answer = harness::send(&meter, request).await;
        answers.push_str(&answer.head);
        answers.push_str(&String::from_utf8_lossy(&answer.body));
    }
    let vendor_token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{}:{VENDOR_PASSWORD}", pt_testkit::meter::VENDOR_USERNAME),
    );
    let client_token = auth_line
        .trim_start_matches("Proxy-Authorization: Basic ")
        .to_owned();
    let (_, _, metrics) = meter.admin_get("/metrics").await;
    let origin_saw: Vec<String> = origin
        .requests()
        .iter()
        .flat_map(|r| r.headers.clone())
        .collect();
    let vendor_saw: Vec<String> = vendor
        .requests()
        .iter()
        .chain(denying.requests().iter())
        .flat_map(|r| r.headers.clone())
        .collect();
    let places = [
        ("answers to the client", answers),
        ("the access log", meter.access_log.lines().join("\n")),
        ("/metrics", metrics),
        ("the origin", origin_saw.join("\n")),
    ];
    for (place, text) in &places {
        for secret in [
            VENDOR_PASSWORD,
            vendor_token.as_str(),
            open_proxy::PASSWORD,
            client_token.as_str(),
        ] {
            assert_eq!(
                text.matches(secret).count(),
                0,
                "{secret} leaked into {place}"
            );
        }
    }
    // The vendors see the meter's credentials, never the client's.
    let vendor_saw = vendor_saw.join("\n");
    assert!(vendor_saw.contains(&vendor_token));
    assert!(!vendor_saw.contains(&client_token) && !vendor_saw.contains(open_proxy::PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_vendor_connection_bound_get_a_counted_503() {
    // Every HTTP/2 stream needs a vendor connection: ten connections opening 32 tunnels each
    // against a bound of 8 get 8 tunnels and 312 refusals, no descriptor runs out, and once the
    // tunnels close the meter serves again.
    let world = world("limits:\n  max_vendor_connections: 8").await;
    let connect = |id: u32| {
        h2raw::headers(
            id,
            &[
                (b":method", b"CONNECT"),
                (b":authority", b"shop-a.test:443"),
            ],
            false,
        )
    };
    let mut clients = Vec::new();
    let (mut opened, mut refused, mut other) = (0, 0, Vec::new());
    for _ in 0..10 {
        let mut client = h2raw::Client::connect(world.meter.proxy()).await;
        let frames: Vec<u8> = (0..32u32).flat_map(|i| connect(1 + 2 * i)).collect();
        client.send(&frames).await;
        for i in 0..32u32 {
            match client.outcome(1 + 2 * i, Duration::from_secs(2)).await {
                h2raw::Outcome::Answered(200, None) => opened += 1,
                h2raw::Outcome::Answered(503, Some(reason))
                    if reason == "vendor_connection_limit" =>
                {
                    refused += 1
                }
                outcome => other.push(outcome),
            }
        }
        clients.push(client);
    }
    assert_eq!((opened, refused, other), (8, 312, Vec::new()));
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum(
            "proxy_rejected_requests_total",
            &[("reason", "vendor_connection_limit")]
        ),
        312
    );
    drop(clients);
    let answer = support::settle(|| async {
        let answer = harness::send(&world.meter, harness::HEALTHY).await;
        (answer.status == Some(200), answer)
    })
    .await;
    assert_eq!(answer.status, Some(200), "{}", answer.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_gets_counted_503s_and_the_meter_recovers() {
    let world = world("limits:\n  max_connections: 20").await;
    // 100 connections, each in the middle of a request head: busy, not reclaimable.
    let mut storm = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(world.meter.proxy()).await.unwrap();
        let _ = stream.write_all(b"GET http://shop-a.test/").await;
        storm.push(stream);
    }
    // Every connection's answer is awaited at once, for a second: the 503s come at accept, the
    // admitted connections answer nothing (their heads are incomplete). A connection the meter
    // admitted before its first bytes arrived was idle, and may have been reclaimed for a later
    // one (closed without an answer): still never more than 20 served at once.
    let mut reads = tokio::task::JoinSet::new();
    for mut stream in storm {
        reads.spawn(async move {
            let mut answer = vec![0u8; 256];
            let outcome = match tokio::time::timeout(
                Duration::from_secs(1),
                stream.read(&mut answer),
            )
            .await
            {
                Err(_) => "held",
                Ok(Ok(n)) if answer[..n].starts_with(b"HTTP/1.1 503") => "refused",
                Ok(_) => "reclaimed",
            };
            (stream, outcome)
        });
    }
    let mut storm = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(joined) = reads.join_next().await {
        let (stream, outcome) = joined.unwrap();
        *outcomes.entry(outcome).or_default() += 1;
        storm.push(stream);
    }
    let count = |outcome| outcomes.get(outcome).copied().unwrap_or(0);
    assert_eq!(count("held"), 20, "{outcomes:?}");
    assert_eq!(count("refused") + count("reclaimed"), 80, "{outcomes:?}");
    assert!(count("reclaimed") <= 5, "{outcomes:?}");
    let scrape = world.meter.scrape().await;
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "overloaded")]),
        count("refused") as u64
    );
    drop(storm);
    let started = std::time::Instant::now();
    let answer = support::settle(|| async {
        let answer = harness::send(&world.meter, harness::HEALTHY).await;
        (answer.status == Some(200), answer)
    })
    .await;
    assert_eq!(answer.status, Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "recovered in {:?}",
        started.elapsed()
    );
}
