//! The meter in front of real vendors: Debian's Squid and tinyproxy (`scripts/test.sh` installs
//! them; without them these tests fail, never skip).
//!
//! - Exactness: each vendor requires Basic credentials and sits behind a byte-counting relay (a
//!   tap on the wire, the ground truth); every protocol path a crawler uses (plain HTTP/1.1 GETs,
//!   uploads with a length and chunked, CONNECT with TLS HTTP/1.1 and HTTP/2 inside, h2c and
//!   HTTP/2 CONNECT from the crawler) must be counted by the meter exactly as the tap saw it, in
//!   both directions, and each request once.
//! - Keep-alive: tinyproxy closes a kept-alive connection after a response without saying
//!   `Connection: close`, so a meter that reuses its pooled connection without care answers the
//!   crawler 502. Every one of 1,000 back-to-back keep-alive GETs must succeed.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use pt_load::client::ProxyEndpoint;
use pt_testkit::meter::MeterSetup;
use pt_testkit::origin::Origin;
use pt_testkit::paths::Path;
use pt_testkit::pki::TestPki;
use pt_testkit::process::{Running, free_port};
use pt_testkit::tap::Tap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests in the run: the audit saw 4 failures in 300.
const REQUESTS: usize = 1_000;
/// Body size of each answer.
const BODY: usize = 2_000;

/// The vendors' Basic credentials.
const VENDOR_USER: &str = "meter";
const VENDOR_PASSWORD: &str = "s3cret-vendor-pw";

/// The origin's address: its own loopback address, so that it can serve on the ports 80 and 443
/// the crawler paths name, and that both vendors reach it without a resolver.
const ORIGIN: &str = "127.77.0.1";

fn start_tinyproxy(dir: &std::path::Path, port: u16, auth: bool) -> Running {
    let config = dir.join("tinyproxy.conf");
    let auth = if auth {
        format!("BasicAuth {VENDOR_USER} {VENDOR_PASSWORD}\n")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Critical\nDisableViaHeader Yes\n{auth}"
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
    let _tinyproxy = start_tinyproxy(&dir, port, false);
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

/// Squid 5 with Basic credentials (its NCSA helper, an htpasswd file in apr1 form), no cache, no
/// forwarding headers, any port allowed to CONNECT.
fn start_squid(dir: &std::path::Path, port: u16) -> Running {
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", VENDOR_PASSWORD])
        .output()
        .expect("openssl must be installed");
    let hash = String::from_utf8(hash.stdout).unwrap();
    std::fs::write(
        dir.join("htpasswd"),
        format!("{VENDOR_USER}:{}", hash.trim()),
    )
    .unwrap();
    let config = dir.join("squid.conf");
    std::fs::write(
        &config,
        format!(
            "http_port 127.0.0.1:{port}\n\
             auth_param basic program /usr/lib/squid/basic_ncsa_auth {htpasswd}\n\
             auth_param basic realm vendor\n\
             acl authenticated proxy_auth REQUIRED\n\
             http_access allow authenticated\n\
             http_access deny all\n\
             cache deny all\n\
             access_log none\n\
             cache_log {log}\n\
             pid_filename {pid}\n\
             coredump_dir {dir}\n\
             via off\n\
             forwarded_for delete\n\
             shutdown_lifetime 0 seconds\n\
             dns_v4_first on\n",
            htpasswd = dir.join("htpasswd").display(),
            log = dir.join("cache.log").display(),
            pid = dir.join("squid.pid").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    // Squid drops root for its own user, which must read the password file and write its log.
    Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(dir)
        .status()
        .unwrap();
    let child = Command::new("squid")
        .args(["-N", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("squid.stderr")).unwrap())
        .spawn()
        .expect("squid must be installed (scripts/test.sh installs Debian's package)");
    wait_listening(port, dir, "squid");
    Running(child)
}

fn wait_listening(port: u16, dir: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not start; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every crawler path through the meter to a real vendor behind a tap: the meter's bytes equal
/// the tap's, each way, and each request is counted once.
async fn every_path_is_metered_exactly(vendor: &str, vendor_port: u16, pki: &TestPki) {
    let (tap, tap_address) = Tap::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::from(([127, 0, 0, 1], vendor_port)),
    )
    .await;
    let meter = MeterSetup::new()
        .vendor_yaml(&format!(
            "  - name: {vendor}\n    url: http://{tap_address}\n    username: {VENDOR_USER}\n    password_env: VENDOR_PASSWORD\n"
        ))
        .env("VENDOR_PASSWORD", VENDOR_PASSWORD)
        .yaml(&format!(
            "routing:\n  default_vendor: {vendor}\nsecurity:\n  allowed_private_destinations: [\"127.0.0.0/8\"]\n"
        ))
        .spawn()
        .await;
    let mut proxy = ProxyEndpoint::new(meter.proxy());
    proxy.credentials = Some(("crawlers/crawler-1".into(), "x".into()));
    let mut requests = 0;
    for path in Path::ALL {
        let statuses = path
            .run(&proxy, ORIGIN, pki.roots.clone(), Arc::default())
            .await
            .unwrap_or_else(|e| panic!("{vendor}, {path:?}: {e}"));
        assert!(
            statuses.iter().all(|s| *s == 200),
            "{vendor}, {path:?}: {statuses:?}"
        );
        requests += path.meter_requests();
    }
    let labels = [("proxy_vendor", vendor)];
    let mut last = None;
    for _ in 0..100 {
        let scrape = meter.scrape().await;
        let metered = (
            scrape.sum("proxy_sent_bytes_total", &labels),
            scrape.sum("proxy_received_bytes_total", &labels),
        );
        if metered == tap.counts() {
            eprintln!(
                "{vendor}: {requests} requests, (sent, received) {metered:?} on the wire and at the meter"
            );
            assert!(
                metered.0 > 10_000 && metered.1 > 100_000,
                "{vendor}: {metered:?}"
            );
            assert_eq!(
                scrape.sum("proxy_requests_total", &labels),
                requests,
                "{vendor}"
            );
            assert_eq!(
                scrape.sum(
                    "proxy_requests_total",
                    &[("proxy_vendor", vendor), ("status_class", "2xx")]
                ),
                requests,
                "{vendor}"
            );
            assert_eq!(
                scrape.sum("proxy_upstream_errors_total", &[]),
                0,
                "{vendor}"
            );
            return;
        }
        last = Some(metered);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{vendor}: the meter counted (sent, received) {last:?}, the wire carried {:?}",
        tap.counts()
    );
}

#[test]
fn squid_and_tinyproxy_with_credentials_are_metered_to_the_byte_on_every_path() {
    let dir = std::env::temp_dir().join(format!("pt-real-vendors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("squid")).unwrap();
    std::fs::create_dir_all(dir.join("tinyproxy")).unwrap();
    let (squid_port, tinyproxy_port) = (free_port(), free_port());
    let _squid = start_squid(&dir.join("squid"), squid_port);
    let _tinyproxy = start_tinyproxy(&dir.join("tinyproxy"), tinyproxy_port, true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pki = TestPki::new(&[ORIGIN]);
        // Ports 80 and 443 of a loopback address of its own (the test runs as root).
        let http = TcpListener::bind((ORIGIN, 80))
            .await
            .expect("bind 127.77.0.1:80 (root needed)");
        let https = TcpListener::bind((ORIGIN, 443))
            .await
            .expect("bind 127.77.0.1:443 (root needed)");
        let _origin = Origin::serve(http, https, pki.server_config(&["h2", "http/1.1"])).unwrap();
        // Both really want the credentials the meter sends.
        for port in [squid_port, tinyproxy_port] {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream
                .write_all(
                    format!("GET http://{ORIGIN}/ HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n").as_bytes(),
                )
                .await
                .unwrap();
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer[8..], b" 407", "port {port}: {answer:?}");
        }
        every_path_is_metered_exactly("squid", squid_port, &pki).await;
        every_path_is_metered_exactly("tinyproxy", tinyproxy_port, &pki).await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
