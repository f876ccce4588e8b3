//! Every request and tunnel has one honest outcome, on every front end: the access-log line
//! says how it ended (`outcome`, `reason`, `status`), the metrics agree (`status_class`, the
//! refusal and vendor-error families), and the line's bytes equal what the metrics counted and
//! what the vendor's books hold, to the byte, for answers, refusals, failures and aborts alike.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use pt_load::client::{self, ProxyEndpoint};
use pt_testkit::VendorBooks;
use pt_testkit::meter::{MeterSetup, TestMeter};
use pt_testkit::paths::absolute;
use pt_testkit::vendor::{FakeVendor, Fault};
use support::{VENDOR_PASSWORD, counters, vendor_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a client reaches the meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Front {
    /// Absolute-form HTTP/1.1.
    Http1,
    /// CONNECT over HTTP/1.1.
    Connect,
    /// HTTP/2 with prior knowledge, absolute requests.
    H2,
    /// HTTP/2 CONNECT streams.
    H2Connect,
}

const FRONTS: [Front; 4] = [Front::Http1, Front::Connect, Front::H2, Front::H2Connect];

/// What the client does.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Asks for `bytes` and reads the answer to its end.
    Fetch(u64),
    /// Asks for `bytes`, reads a little of the answer, then goes away.
    Abort(u64),
    /// Asks, and goes away before any answer.
    LeaveEarly,
    /// Opens a tunnel and stays quiet.
    Quiet,
}

/// What the client saw.
#[derive(Debug, Default)]
struct Seen {
    status: Option<u16>,
}

/// Runs `act` through `front` to `target` (`host` or `host:port`).
async fn act(front: Front, proxy: &ProxyEndpoint, target: &str, act: Act) -> Seen {
    let size = match act {
        Act::Fetch(n) | Act::Abort(n) => n,
        _ => 1,
    };
    let path = format!("/bytes/{size}");
    match front {
        Front::Http1 | Front::H2 => {
            let io = proxy.dial(counters()).await.unwrap();
            let request = absolute(proxy, http::Method::GET, target, &path, client::empty());
            let response = if front == Front::Http1 {
                let mut sender = client::http1(io).await.unwrap();
                let sending = sender.send_request(request);
                if matches!(act, Act::LeaveEarly) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), sending).await;
                    return Seen::default();
                }
                sending.await
            } else {
                let mut sender = client::http2(io).await.unwrap();
                let mut request = request;
                request.headers_mut().remove(http::header::HOST);
                let sending = sender.send_request(request);
                if matches!(act, Act::LeaveEarly) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), sending).await;
                    return Seen::default();
                }
                sending.await
            };
            let Ok(response) = response else {
                return Seen::default();
            };
            let status = Some(response.status().as_u16());
            let mut body = response.into_body();
            match act {
                Act::Abort(_) => {
                    // One frame, then away.
                    let _ = body.frame().await;
                }
                _ => while let Some(Ok(_)) = body.frame().await {},
            }
            Seen { status }
        }
        Front::Connect | Front::H2Connect => {
            let opened = if front == Front::Connect {
                client::tunnel_h1(proxy, proxy.dial(counters()).await.unwrap(), target).await
            } else {
                let mut sender = client::http2(proxy.dial(counters()).await.unwrap())
                    .await
                    .unwrap();
                let opening = client::tunnel_h2(proxy, &mut sender, target);
                if matches!(act, Act::LeaveEarly) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), opening).await;
                    return Seen::default();
                }
                let opened = opening.await;
                // The connection must outlive the tunnel.
                std::mem::forget(sender);
                opened
            };
            let upgraded = match opened {
                Ok(upgraded) => upgraded,
                Err(client::ClientError::Refused(status)) => {
                    return Seen {
                        status: Some(status.as_u16()),
                    };
                }
                Err(_) => return Seen::default(),
            };
            let mut tunnel = TokioIo::new(upgraded);
            match act {
                Act::Quiet => {
                    let mut sink = Vec::new();
                    let _ = tunnel.read_to_end(&mut sink).await;
                }
                Act::LeaveEarly => {}
                Act::Fetch(_) | Act::Abort(_) => {
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = tunnel.write_all(request.as_bytes()).await;
                    let mut buf = vec![0u8; 4096];
                    if matches!(act, Act::Abort(_)) {
                        let _ = tunnel.read(&mut buf).await;
                    } else {
                        let mut sink = Vec::new();
                        let _ = tunnel.read_to_end(&mut sink).await;
                    }
                }
            }
            Seen { status: Some(200) }
        }
    }
}

/// The one access-log line of the exchange, once it is written.
async fn line(meter: &TestMeter) -> serde_json::Value {
    let lines = support::settle(|| async {
        let lines = meter.access_log.lines();
        (!lines.is_empty(), lines)
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    serde_json::from_str(&lines[0]).unwrap()
}

/// A meter in front of `vendor` (plain HTTP to port 80 and tunnels to port 443 only, plus the
/// origin's), with short timeouts.
async fn meter(vendor: std::net::SocketAddr) -> TestMeter {
    MeterSetup::new()
        .vendor_yaml(&format!(
            "  - name: vendor-a\n    url: http://{vendor}\n    username: meter\n    password_env: P\n"
        ))
        .env("P", VENDOR_PASSWORD)
        .yaml("routing:\n  default_vendor: vendor-a\nsecurity:\n  connect_ports: [80]\nlimits:\n  response_timeout: 500ms\n  tunnel_idle_timeout: 500ms\nshutdown:\n  grace_period: 1s")
        .spawn()
        .await
}

/// One row of the table: what a front end's request ends as.
struct Expected {
    outcome: &'static str,
    status: Option<u16>,
    reason: Option<&'static str>,
    status_class: &'static str,
}

fn expected(
    outcome: &'static str,
    status: Option<u16>,
    reason: Option<&'static str>,
    status_class: &'static str,
) -> Expected {
    Expected {
        outcome,
        status,
        reason,
        status_class,
    }
}

/// Checks the line against `expected`, the metrics against the line, and the line's bytes
/// against the metrics and, with a vendor, its books.
async fn check(
    front: Front,
    meter: &TestMeter,
    vendor: Option<&FakeVendor>,
    want: &Expected,
    failures: &mut Vec<String>,
) {
    let line = line(meter).await;
    let scrape = support::settle(|| async {
        let scrape = meter.scrape().await;
        // The line is written once the vendor connection closed: the counts are final then,
        // but the vendor's books may still be catching up with the bytes that crossed.
        let books = want.outcome == "client_cut" || vendor.is_none_or(|v| v.books_match(&scrape));
        let done = books && scrape.sum("proxy_active_tunnels", &[]) == 0;
        (done, scrape)
    })
    .await;
    let mut fail = |what: String| failures.push(format!("{front:?}: {what}: {line}"));
    if line["outcome"] != want.outcome {
        fail(format!("outcome, expected {}", want.outcome));
    }
    if line["status"].as_u64().map(|s| s as u16) != want.status {
        fail(format!("status, expected {:?}", want.status));
    }
    if line["reason"].as_str() != want.reason {
        fail(format!("reason, expected {:?}", want.reason));
    }
    let logged = (
        line["sent_bytes"].as_u64().unwrap(),
        line["received_bytes"].as_u64().unwrap(),
    );
    let counted = (
        scrape.sum("proxy_sent_bytes_total", &[]),
        scrape.sum("proxy_received_bytes_total", &[]),
    );
    if logged != counted {
        fail(format!("logged bytes {logged:?}, metrics {counted:?}"));
    }
    if let Some(vendor) = vendor {
        let books = (vendor.bytes_from_meter(), vendor.bytes_to_meter());
        // When the client aborts, the meter closes the vendor connection: what the vendor had
        // written but the network had not yet delivered is lost to both, and the vendor's
        // book (bytes written) is ahead by it. Everything that reached the meter is counted.
        let agrees = if want.outcome == "client_cut" {
            books.0 == counted.0 && books.1 >= counted.1
        } else {
            books == counted
        };
        if !agrees {
            fail(format!("vendor books {books:?}, metrics {counted:?}"));
        }
    }
    if want.outcome == "rejected" {
        let refused = scrape.sum("proxy_rejected_requests_total", &[]);
        let carried = scrape.sum("proxy_requests_total", &[]);
        if (refused, carried) != (1, 0) {
            fail(format!("refused {refused}, carried {carried}"));
        }
    } else {
        let class = scrape.sum(
            "proxy_requests_total",
            &[("status_class", want.status_class)],
        );
        if class != 1 {
            fail(format!(
                "status_class {} counted {class} times",
                want.status_class
            ));
        }
    }
    if let Some(reason) = want.reason
        && want.outcome != "rejected"
        && want.outcome != "client_cut"
        && want.outcome != "client_gone"
        && scrape.sum("proxy_upstream_errors_total", &[("reason", reason)]) != 1
    {
        fail(format!("no upstream error {reason}"));
    }
}

/// Runs one scenario on every front end, each against a fresh vendor and meter.
async fn scenario(
    fault: Option<Fault>,
    action: Act,
    expect: impl Fn(Front) -> Option<Expected>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for front in FRONTS {
        let Some(want) = expect(front) else { continue };
        let pki = pt_testkit::pki::TestPki::new(&support::HOSTS);
        let origin = pt_testkit::origin::Origin::start(&pki).await.unwrap();
        let vendor = match fault {
            Some(fault) => FakeVendor::builder().fault(fault).start().await.unwrap(),
            None => vendor_for(&origin).await,
        };
        let meter = meter(vendor.address).await;
        let proxy = ProxyEndpoint::new(meter.proxy());
        let target = match front {
            Front::Http1 | Front::H2 => "shop-a.test",
            Front::Connect | Front::H2Connect => "shop-a.test:80",
        };
        let seen = act(front, &proxy, target, action).await;
        if want.status.is_some() && matches!(action, Act::Fetch(_)) && seen.status != want.status {
            failures.push(format!("{front:?}: the client saw {:?}", seen.status));
        }
        check(front, &meter, Some(&vendor), &want, &mut failures).await;
        meter.shutdown().await;
    }
    failures
}

#[track_caller]
fn assert_none(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_request_is_ok() {
    let failures = scenario(None, Act::Fetch(10_000), |_| {
        Some(expected("ok", Some(200), None, "2xx"))
    })
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_meter_refuses_is_rejected_and_not_carried() {
    let mut failures = Vec::new();
    for front in FRONTS {
        let pki = pt_testkit::pki::TestPki::new(&support::HOSTS);
        let origin = pt_testkit::origin::Origin::start(&pki).await.unwrap();
        let vendor = vendor_for(&origin).await;
        let meter = meter(vendor.address).await;
        let proxy = ProxyEndpoint::new(meter.proxy());
        let target = match front {
            Front::Http1 | Front::H2 => "shop-a.test:22",
            _ => "shop-a.test:22",
        };
        act(front, &proxy, target, Act::Fetch(1)).await;
        let want = expected("rejected", Some(403), Some("port_not_allowed"), "");
        check(front, &meter, Some(&vendor), &want, &mut failures).await;
    }
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_refuses_the_credentials_is_vendor_refused() {
    let failures = scenario(Some(Fault::AlwaysDenyAuth), Act::Fetch(1), |_| {
        Some(expected(
            "vendor_refused",
            Some(502),
            Some("vendor_auth"),
            "5xx",
        ))
    })
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_refuses_a_tunnel_is_vendor_refused_with_its_status() {
    let failures = scenario(
        Some(Fault::Status(403)),
        Act::Fetch(1),
        |front| match front {
            Front::Connect | Front::H2Connect => Some(expected(
                "vendor_refused",
                Some(403),
                Some("tunnel_refused"),
                "4xx",
            )),
            // A plain request answered 403 by the vendor is just an answer.
            Front::Http1 | Front::H2 => Some(expected("ok", Some(403), None, "4xx")),
        },
    )
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vendor_is_a_vendor_error_with_504() {
    let failures = scenario(Some(Fault::Blackhole), Act::Fetch(1), |_| {
        Some(expected("vendor_error", Some(504), Some("timeout"), "5xx"))
    })
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_cuts_the_answer_short_is_vendor_cut() {
    let failures = scenario(Some(Fault::ResetMidBody), Act::Fetch(1), |_| {
        Some(expected("vendor_cut", Some(200), Some("reset"), "2xx"))
    })
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_client_gone() {
    let failures = scenario(
        Some(Fault::Blackhole),
        Act::LeaveEarly,
        |front| match front {
            Front::Http1 | Front::H2 => {
                Some(expected("client_gone", None, Some("client_gone"), "error"))
            }
            // A tunnel's verdict is the vendor's: the meter waits for it whatever the client does.
            Front::Connect | Front::H2Connect => None,
        },
    )
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_download_is_client_cut_and_logs_every_counted_byte() {
    // The bytes still unread in the vendor socket when the client went away are counted (the
    // vendor sent them), in the metrics and in the line alike.
    let failures = scenario(None, Act::Abort(8 << 20), |_| {
        Some(expected(
            "client_cut",
            Some(200),
            Some("client_gone"),
            "2xx",
        ))
    })
    .await;
    assert_none(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_is_closed_as_idle() {
    let failures = scenario(None, Act::Quiet, |front| match front {
        Front::Connect | Front::H2Connect => {
            Some(expected("idle", Some(200), Some("tunnel_idle"), "2xx"))
        }
        Front::Http1 | Front::H2 => None,
    })
    .await;
    assert_none(&failures);
}
