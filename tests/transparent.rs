//! Transparent mode end to end, in network namespaces (root required; these tests fail, they
//! never skip, when they cannot create namespaces).
//!
//! A "pod" namespace holds the crawler (curl, or the project's own `load`) and the meter; a
//! "vendor" namespace, one veth away, holds a fake vendor (HTTP proxy, SOCKS5 proxy and HTTPS
//! proxy listeners) and the origin sites behind it. The crawler talks to the vendor's address
//! as if no meter existed; `proxy-telemetry init-iptables` in the pod redirects those
//! connections to the meter's transparent listener; the vendor books every byte it carried,
//! and the meter's figures must equal them exactly. One test puts a real SOCKS5 server
//! (Debian's microsocks, which `scripts/test.sh` installs) behind a byte-counting tap instead.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use pt_metrics::exposition::Scrape;
use pt_sniff::destination::DestinationKey;
use pt_testkit::VendorBooks;
use pt_testkit::meter::{MeterSetup, TestMeter, admin_get};
use pt_testkit::netns::{Link, NsRuntime, run};
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::process::Running;
use pt_testkit::tap::Tap;
use pt_testkit::vendor::FakeVendor;

const BIN: &str = env!("CARGO_BIN_EXE_proxy-telemetry");
const HOSTS: [&str; 4] = [
    "shop-a.test",
    "news-b.test",
    "api.data-c.test",
    // The HTTPS proxy's own certificate names its address.
    "10.99.0.2",
];
/// The crawler's own account at its vendor; it must reach the vendor untouched and appear
/// nowhere else. (The project's load generator names its vendor account after its pod.)
const CRAWLER_USER: &str = "crawlers/crawler-0";
const CRAWLER_PASSWORD: &str = "crawler-canary-4471";
const CREDENTIALS: &str = "crawlers/crawler-0:crawler-canary-4471";
const TRANSPARENT_PORT: u16 = 15001;
/// The meter's socket mark, excluded from redirection.
const MARK: &str = "1337";
/// The labels of the crawler pod's traffic to the fake vendor.
const CRAWLER_POD: [(&str, &str); 4] = [
    ("proxy_vendor", "vendor-a"),
    ("source_namespace", "crawlers"),
    ("source_pod", "crawler-0"),
    ("source_workload", "crawler"),
];

/// One pod, one vendor, one meter; see the module documentation.
struct Rig {
    link: Link,
    pod: NsRuntime,
    vendor_runtime: NsRuntime,
    origin: Origin,
    vendor: FakeVendor,
    meter: Option<TestMeter>,
    dir: PathBuf,
}

fn vendor_yaml(vendor: &FakeVendor) -> String {
    let extra: Vec<String> = [vendor.socks5_address, vendor.https_address]
        .into_iter()
        .flatten()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "  - name: vendor-a\n    url: http://{}\n    endpoints: [{}]\n",
        vendor.address,
        extra.join(", ")
    )
}

impl Rig {
    /// The world, with a meter whose configuration gets `meter_yaml` appended.
    fn new(meter_yaml: &str) -> Rig {
        Rig::build(&format!("  outbound_mark: {MARK}\n"), meter_yaml)
    }

    /// The world, with `transparent_yaml` lines in the meter's `transparent:` section.
    fn build(transparent_yaml: &str, meter_yaml: &str) -> Rig {
        Rig::build_with_vendors(transparent_yaml, meter_yaml, "")
    }

    /// The world, with vendors of `extra_vendors` (YAML list items) besides the fake one.
    fn build_with_vendors(transparent_yaml: &str, meter_yaml: &str, extra_vendors: &str) -> Rig {
        let link = Link::new();
        let vendor_runtime = link.vendor.runtime();
        let pod = link.pod.runtime();
        let pki = TestPki::new(&HOSTS);
        let origin = vendor_runtime.run({
            let pki = pki.clone();
            async move { Origin::start(&pki).await.unwrap() }
        });
        let vendor = vendor_runtime.run({
            let origin = origin.clone();
            let https = pki.server_config(&["http/1.1"]);
            async move {
                let mut builder = FakeVendor::builder()
                    .credentials(CRAWLER_USER, CRAWLER_PASSWORD)
                    .listen(SocketAddr::new(Link::VENDOR_V4.into(), 0))
                    .socks5()
                    .https(https);
                for host in &HOSTS[..3] {
                    builder = builder.route(host, &origin);
                }
                builder.start().await.unwrap()
            }
        });
        let dir = std::env::temp_dir().join(format!("{}-files", link.pod.name()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        let mut rig = Rig {
            link,
            pod,
            vendor_runtime,
            origin,
            vendor,
            meter: None,
            dir,
        };
        let mut setup = rig.meter_setup(transparent_yaml, meter_yaml);
        if !extra_vendors.is_empty() {
            setup = setup.vendor_yaml(extra_vendors);
        }
        rig.meter = Some(rig.pod.run(setup.spawn()));
        rig
    }

    fn meter_setup(&self, transparent: &str, extra: &str) -> MeterSetup {
        MeterSetup::new()
            .vendor_yaml(&vendor_yaml(&self.vendor))
            .yaml(&format!(
                "transparent:\n  listeners: [\"127.0.0.1:{TRANSPARENT_PORT}\"]\n{transparent}identity:\n  from: environment\n{extra}"
            ))
            .env("POD_NAME", "crawler-0")
            .env("POD_NAMESPACE", "crawlers")
            .env("POD_WORKLOAD", "crawler")
    }

    fn meter(&self) -> &TestMeter {
        self.meter.as_ref().unwrap()
    }

    /// Installs the redirect rules in the pod: every destination at the vendor's ports.
    fn capture(&self, extra: &[&str]) -> Output {
        let mut command = self.link.pod.command(BIN);
        command.args([
            "init-iptables",
            "--redirect-to",
            &TRANSPARENT_PORT.to_string(),
        ]);
        for address in [
            Some(self.vendor.address),
            self.vendor.socks5_address,
            self.vendor.https_address,
        ]
        .into_iter()
        .flatten()
        {
            command.args(["--port", &address.port().to_string()]);
        }
        command.args(extra);
        run(&mut command)
    }

    fn proxy(&self, scheme: &str, address: SocketAddr) -> String {
        format!("{scheme}://{address}")
    }

    fn http_proxy(&self) -> String {
        self.proxy("http", self.vendor.address)
    }

    fn socks_proxy(&self) -> String {
        self.proxy("socks5h", self.vendor.socks5_address.unwrap())
    }

    /// curl inside the pod; returns the status codes it printed, one per URL.
    fn curl(&self, args: &[&str]) -> Result<String, String> {
        self.curl_reporting("%{http_code}\\n", args)
    }

    /// curl inside the pod, printing `write_out` (curl's `-w`) per URL.
    fn curl_reporting(&self, write_out: &str, args: &[&str]) -> Result<String, String> {
        let ca = self.dir.join("ca.pem");
        let output = self
            .link
            .pod
            .command("curl")
            .args(["-sS", "--max-time", "20", "-o", "/dev/null"])
            .args(["-w", write_out, "--cacert"])
            .arg(&ca)
            .args(if args.contains(&"--proxy-user") {
                vec![]
            } else {
                vec!["--proxy-user", CREDENTIALS]
            })
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{stdout} {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn scrape(&self) -> Scrape {
        let admin = self.meter().admin;
        let (status, _, body) = self
            .pod
            .run(async move { admin_get(admin, "/metrics").await });
        assert_eq!(status, 200);
        Scrape::parse(&body).unwrap()
    }

    /// The scrape once the meter's bytes equal the vendor's books and no tunnel is open (or the
    /// last one after 10 s, for the assertions to explain).
    fn settled(&self) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = self.scrape();
            let done =
                self.vendor.books_match(&scrape) && scrape.sum("proxy_active_tunnels", &[]) == 0;
            if done || Instant::now() > deadline {
                return scrape;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The destination label of a vendor-side target (`http://host/path`, `host:port`).
fn destination(target: &str) -> String {
    let rest = target.split_once("://").map_or(target, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    DestinationKey::RegistrableDomain.of(&pt_sniff::authority::parse_host(host).unwrap())
}

/// Bytes per destination as the vendor booked them: a tunnel's whole connection to its target,
/// a keep-alive connection's exchanges each to its own.
fn vendor_bytes_by_destination(vendor: &FakeVendor) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for book in vendor.connections() {
        let exchanges = book.exchanges();
        let parts: Vec<(String, u64, u64)> = if book.tunnel.load(Ordering::SeqCst) {
            let target = exchanges.iter().find(|e| !e.target.is_empty()).unwrap();
            vec![(
                target.target.clone(),
                book.from_meter.load(Ordering::SeqCst),
                book.to_meter.load(Ordering::SeqCst),
            )]
        } else {
            // A read after a write starts a new exchange in the vendor's books; after a
            // `100 Continue` that read is the same request's body (no target of its own).
            let mut parts: Vec<(String, u64, u64)> = Vec::new();
            for e in exchanges {
                match parts.last_mut() {
                    Some(last) if e.target.is_empty() => {
                        last.1 += e.from_meter;
                        last.2 += e.to_meter;
                    }
                    _ => parts.push((e.target, e.from_meter, e.to_meter)),
                }
            }
            parts
        };
        for (target, sent, received) in parts {
            let entry = out.entry(destination(&target)).or_default();
            entry.0 += sent;
            entry.1 += received;
        }
    }
    out
}

fn meter_bytes_by_destination(scrape: &Scrape) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (family, sent) in [
        ("proxy_destination_sent_bytes_total", true),
        ("proxy_destination_received_bytes_total", false),
    ] {
        for sample in scrape.samples.iter().filter(|s| s.name == family) {
            let destination = sample.label("destination").unwrap().to_owned();
            let entry = out.entry(destination).or_default();
            if sent {
                entry.0 += sample.raw.parse::<u64>().unwrap();
            } else {
                entry.1 += sample.raw.parse::<u64>().unwrap();
            }
        }
    }
    out.retain(|_, (s, r)| *s + *r > 0);
    out
}

fn requests(scrape: &Scrape, protocol: &str, class: &str) -> u64 {
    scrape.sum(
        "proxy_requests_total",
        &[("protocol", protocol), ("status_class", class)],
    )
}

#[test]
fn a_crawler_talking_to_its_vendor_is_metered_exactly_on_every_path() {
    let rig = Rig::new("");
    rig.capture(&["--exclude-mark", MARK]);
    let proxy = rig.http_proxy();
    // Two absolute-form requests on one keep-alive connection, to two destinations.
    assert_eq!(
        rig.curl(&[
            "-x",
            &proxy,
            "http://shop-a.test/bytes/1000",
            "-o",
            "/dev/null",
            "http://news-b.test/bytes/2000"
        ]),
        Ok("200\n200".into())
    );
    // A chunked upload.
    let upload = rig.dir.join("upload");
    std::fs::write(&upload, vec![b'u'; 5000]).unwrap();
    assert_eq!(
        rig.curl(&[
            "-x",
            &proxy,
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", upload.display()),
            "http://api.data-c.test/bytes/10"
        ]),
        Ok("200".into())
    );
    // CONNECT + TLS with HTTP/1.1 and with HTTP/2 inside.
    assert_eq!(
        rig.curl(&["-x", &proxy, "--http1.1", "https://shop-a.test/bytes/3000"]),
        Ok("200".into())
    );
    assert_eq!(
        rig.curl(&["-x", &proxy, "--http2", "https://news-b.test/bytes/4000"]),
        Ok("200".into())
    );
    // SOCKS5 with the crawler's credentials, TLS inside.
    assert_eq!(
        rig.curl(&[
            "-x",
            &rig.socks_proxy(),
            "https://api.data-c.test/bytes/5000"
        ]),
        Ok("200".into())
    );
    // A SOCKS5 CONNECT the vendor refuses (nothing listens there): counted as a 5xx.
    let refused = rig.proxy("socks5", rig.vendor.socks5_address.unwrap());
    assert!(
        rig.curl(&[
            "-x",
            &refused,
            "--resolve",
            "shop-a.test:443:127.0.0.1",
            "https://shop-a.test/"
        ])
        .is_err()
    );
    // Wrong credentials: the vendor's 407 is the crawler's answer, counted as a 4xx.
    assert_eq!(
        rig.curl(&[
            "-x",
            &proxy,
            "--proxy-user",
            "crawlers/crawler-0:wrong",
            "http://shop-a.test/bytes/1"
        ]),
        Ok("407".into())
    );

    let scrape = rig.settled();
    rig.vendor.assert_metered_exactly(&scrape, &CRAWLER_POD);
    assert!(rig.vendor.bytes_to_meter() > 15_000);
    assert_eq!(requests(&scrape, "http1", "2xx"), 3);
    assert_eq!(requests(&scrape, "http1", "4xx"), 1);
    assert_eq!(requests(&scrape, "connect", "2xx"), 2);
    assert_eq!(requests(&scrape, "socks5", "2xx"), 1);
    assert_eq!(requests(&scrape, "socks5", "5xx"), 1);
    assert_eq!(scrape.sum("proxy_requests_total", &[]), 8);
    let destinations = |d: &str| {
        scrape.sum(
            "proxy_destination_requests_total",
            &[("proxy_vendor", "vendor-a"), ("destination", d)],
        )
    };
    assert_eq!(destinations("shop-a.test"), 3);
    assert_eq!(destinations("news-b.test"), 2);
    assert_eq!(destinations("data-c.test"), 2);
    assert_eq!(destinations("ip-literal"), 1);
    assert_eq!(
        meter_bytes_by_destination(&scrape),
        vendor_bytes_by_destination(&rig.vendor)
    );
    let speaks = |p: &str| {
        scrape.sum(
            "proxy_transparent_connections_total",
            &[("client_protocol", p)],
        )
    };
    assert_eq!((speaks("http1"), speaks("socks5")), (5, 2));
    let inner = |i: &str| scrape.sum("proxy_tunnels_total", &[("inner", i)]);
    assert_eq!((inner("tls_h2"), inner("tls_http1")), (2, 1));

    // The crawler's credentials reached the vendor untouched, and nothing else saw them.
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{CRAWLER_USER}:{CRAWLER_PASSWORD}"));
    let vendor_saw: Vec<String> = rig
        .vendor
        .requests()
        .into_iter()
        .flat_map(|r| r.headers)
        .collect();
    assert!(vendor_saw.iter().any(|h| h.contains(&token)));
    assert!(
        vendor_saw
            .iter()
            .any(|h| h == &format!("socks5-username: {CRAWLER_USER}"))
    );
    let log = rig.meter().access_log.lines().join("\n");
    assert_eq!(rig.meter().access_log.lines().len(), 8);
    let metrics = rig.pod.run({
        let admin = rig.meter().admin;
        async move { admin_get(admin, "/metrics").await.2 }
    });
    for secret in [CRAWLER_PASSWORD, token.as_str()] {
        assert!(
            !log.contains(secret),
            "the access log holds a crawler secret"
        );
        assert!(!metrics.contains(secret), "/metrics holds a crawler secret");
    }
    assert!(log.contains("\"protocol\":\"socks5\""));
    assert!(rig.origin.requests().len() >= 6);
}

#[test]
fn captured_crawlers_are_admitted_as_their_vendor_would_be_not_as_the_meters_proxy_clients() {
    // The meter asks its own proxy clients for a password and lets them tunnel only to 8443 and
    // send plain HTTP only to 8080. A captured crawler addressed its vendor, with the vendor's
    // credentials, and the meter connects only to that vendor: where the crawler's requests go
    // is the vendor's to allow, so none of it is refused, and all of it is metered.
    let password = std::env::temp_dir().join(format!(
        "pt-transparent-client-password-{}",
        std::process::id()
    ));
    std::fs::write(&password, "for-the-meters-own-clients").unwrap();
    let rig = Rig::new(&format!(
        "clients:\n  password_file: {}\nsecurity:\n  connect_ports: [8443]\n  http_ports: [8080]\n",
        password.display()
    ));
    rig.capture(&["--exclude-mark", MARK]);
    let proxy = rig.http_proxy();
    assert_eq!(
        rig.curl(&["-x", &proxy, "http://shop-a.test/bytes/1000"]),
        Ok("200".into())
    );
    assert_eq!(
        rig.curl(&["-x", &proxy, "https://news-b.test/bytes/2000"]),
        Ok("200".into())
    );
    assert_eq!(
        rig.curl(&[
            "-x",
            &rig.socks_proxy(),
            "https://api.data-c.test/bytes/3000"
        ]),
        Ok("200".into())
    );

    let scrape = rig.settled();
    std::fs::remove_file(&password).unwrap();
    rig.vendor.assert_metered_exactly(&scrape, &CRAWLER_POD);
    assert_eq!(requests(&scrape, "http1", "2xx"), 1);
    assert_eq!(requests(&scrape, "connect", "2xx"), 1);
    assert_eq!(requests(&scrape, "socks5", "2xx"), 1);
    assert_eq!(scrape.sum("proxy_rejected_requests_total", &[]), 0);
    assert_eq!(
        meter_bytes_by_destination(&scrape),
        vendor_bytes_by_destination(&rig.vendor)
    );
}

#[test]
fn an_https_proxy_endpoint_is_metered_as_bytes() {
    let rig = Rig::new("");
    rig.capture(&["--exclude-mark", MARK]);
    let https = rig.proxy("https", rig.vendor.https_address.unwrap());
    let ca = rig.dir.join("ca.pem");
    assert_eq!(
        rig.curl(&[
            "-x",
            &https,
            "--proxy-cacert",
            ca.to_str().unwrap(),
            "http://shop-a.test/bytes/2500"
        ]),
        Ok("200".into())
    );
    let scrape = rig.settled();
    rig.vendor
        .assert_metered_exactly(&scrape, &[("proxy_vendor", "vendor-a")]);
    assert!(rig.vendor.bytes_to_meter() > 2500);
    assert_eq!(
        scrape.sum(
            "proxy_transparent_connections_total",
            &[("client_protocol", "tls")]
        ),
        1
    );
    assert_eq!(scrape.sum("proxy_requests_total", &[]), 0);
}

#[test]
fn ipv6_vendor_endpoints_are_captured_too() {
    let link = Link::new();
    let vendor_runtime = link.vendor.runtime();
    let pod = link.pod.runtime();
    let pki = TestPki::new(&HOSTS);
    let vendor = vendor_runtime.run({
        let pki = pki.clone();
        async move {
            let origin = Origin::start(&pki).await.unwrap();
            FakeVendor::builder()
                .route("shop-a.test", &origin)
                .listen(SocketAddr::new(Link::VENDOR_V6.into(), 0))
                .start()
                .await
                .unwrap()
        }
    });
    let meter = pod.run(
        MeterSetup::new()
            .vendor_yaml(&format!(
                "  - name: vendor-six\n    url: http://{}\n",
                vendor.address
            ))
            .yaml(&format!(
                "transparent:\n  listeners: [\"[::1]:{TRANSPARENT_PORT}\"]\n  outbound_mark: {MARK}"
            ))
            .spawn(),
    );
    run(link.pod.command(BIN).args([
        "init-iptables",
        "--redirect-to",
        &TRANSPARENT_PORT.to_string(),
        "--destination",
        &vendor.address.to_string(),
        "--exclude-mark",
        MARK,
        "--ipv6",
        "on",
    ]));
    let output = run(link.pod.command("curl").args([
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &format!("http://{}", vendor.address),
        "http://shop-a.test/bytes/777",
    ]));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    let admin = meter.admin;
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (_, _, body) = pod.run(async move { admin_get(admin, "/metrics").await });
        let scrape = Scrape::parse(&body).unwrap();
        if vendor.books_match(&scrape) || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        scrape.sum("proxy_requests_total", &[("proxy_vendor", "vendor-six")]),
        1
    );
    vendor.assert_metered_exactly(&scrape, &[]);
}

/// A plain HTTP server at the vendor host's address that is no vendor endpoint (it relays to
/// the origin).
fn other_server(rig: &Rig) -> SocketAddr {
    let origin = rig.origin.http;
    rig.vendor_runtime.run(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(Link::VENDOR_V4.into(), 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut upstream = tokio::net::TcpStream::connect(origin).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        address
    })
}

#[test]
fn other_destinations_pass_through_untouched_and_are_counted_only_when_asked() {
    for meter_unmatched in [false, true] {
        let rig = Rig::build(
            &format!("  outbound_mark: {MARK}\n  meter_unmatched: {meter_unmatched}\n"),
            "",
        );
        let other = other_server(&rig);
        rig.capture(&["--exclude-mark", MARK, "--all"]);
        let sizes = rig
            .curl_reporting(
                "%{http_code} %{size_request} %{size_header} %{size_download}",
                &[&format!("http://{other}/bytes/1234")],
            )
            .unwrap();
        let sizes: Vec<u64> = sizes.split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(sizes[0], 200, "meter_unmatched: {meter_unmatched}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let unknown = [("proxy_vendor", "unknown")];
        let scrape = loop {
            let scrape = rig.scrape();
            let sent = scrape.sum("proxy_sent_bytes_total", &unknown);
            if !meter_unmatched || sent == sizes[1] || Instant::now() > deadline {
                break scrape;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (sent, received) = (
            scrape.sum("proxy_sent_bytes_total", &unknown),
            scrape.sum("proxy_received_bytes_total", &unknown),
        );
        if meter_unmatched {
            // Exactly what curl wrote, and the head and body it read.
            assert_eq!((sent, received), (sizes[1], sizes[2] + sizes[3]));
            assert_eq!(
                scrape.sum(
                    "proxy_transparent_connections_total",
                    &[("proxy_vendor", "unknown"), ("client_protocol", "other")]
                ),
                1
            );
        } else {
            assert_eq!((sent, received), (0, 0));
            assert_eq!(scrape.sum("proxy_transparent_connections_total", &[]), 0);
        }
        assert_eq!(scrape.sum("proxy_requests_total", &[]), 0);
        assert!(rig.vendor.connections().is_empty());
    }
}

#[test]
fn a_redirect_loop_is_refused_and_the_meter_stays_healthy() {
    // No mark on the meter's sockets and no exclusion in the rules: the meter's own connection
    // to the vendor is redirected back to it.
    let rig = Rig::build("", "");
    rig.capture(&[]);
    let started = Instant::now();
    let result = rig.curl(&["-x", &rig.http_proxy(), "http://shop-a.test/bytes/10"]);
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A connection made straight to the transparent port was not redirected either.
    let output = rig
        .link
        .pod
        .command("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{TRANSPARENT_PORT}/"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = rig.scrape();
        if scrape.sum("proxy_open_connections", &[]) == 0 || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "loop")]),
        2
    );
    assert_eq!(scrape.sum("proxy_open_connections", &[]), 0);
    assert!(rig.vendor.connections().is_empty());
    // With the meter's mark excluded, the same request goes through.
    rig.capture(&["--exclude-mark", MARK]);
    let marked = Rig::new("");
    marked.capture(&["--exclude-mark", MARK]);
    assert_eq!(
        marked.curl(&["-x", &marked.http_proxy(), "http://shop-a.test/bytes/10"]),
        Ok("200".into())
    );
}

/// Where the tap in front of the real SOCKS5 vendor listens, in the vendor namespace (fresh, so a
/// fixed port is free; the meter's configuration names it before the tap starts).
const SOCKS_TAP_PORT: u16 = 10_800;
/// Where microsocks listens, on the vendor namespace's loopback.
const MICROSOCKS_PORT: u16 = 10_801;

#[test]
fn a_real_socks5_vendor_with_credentials_is_metered_to_the_byte_through_capture() {
    let tap_address = SocketAddr::new(Link::VENDOR_V4.into(), SOCKS_TAP_PORT);
    let rig = Rig::build_with_vendors(
        &format!("  outbound_mark: {MARK}\n"),
        "",
        &format!("  - name: vendor-socks\n    url: http://{tap_address}\n"),
    );
    let mut microsocks = rig.link.vendor.command("microsocks");
    microsocks
        .args(["-i", "127.0.0.1", "-p", &MICROSOCKS_PORT.to_string()])
        .args(["-u", CRAWLER_USER, "-P", CRAWLER_PASSWORD])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _microsocks = Running(
        microsocks
            .spawn()
            .expect("microsocks must be installed (scripts/test.sh installs Debian's package)"),
    );
    let microsocks_address = SocketAddr::from(([127, 0, 0, 1], MICROSOCKS_PORT));
    let tap = rig.vendor_runtime.run(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(microsocks_address)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "microsocks did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Tap::start(tap_address, microsocks_address).await.0
    });
    rig.capture(&[
        "--exclude-mark",
        MARK,
        "--port",
        &SOCKS_TAP_PORT.to_string(),
    ]);

    // The crawler resolves names itself (socks5://) and asks microsocks for the origin's
    // address in the vendor namespace: TLS with HTTP/1.1 and HTTP/2 inside, plain HTTP.
    let socks = format!("socks5://{tap_address}");
    let https = rig.origin.https.port();
    let resolve = format!("shop-a.test:{https}:127.0.0.1");
    let tls = format!("https://shop-a.test:{https}/bytes/5000");
    assert_eq!(
        rig.curl(&["-x", &socks, "--resolve", &resolve, "--http1.1", &tls]),
        Ok("200".into())
    );
    assert_eq!(
        rig.curl(&["-x", &socks, "--resolve", &resolve, "--http2", &tls]),
        Ok("200".into())
    );
    let plain = format!("http://{}/bytes/3000", rig.origin.http);
    assert_eq!(rig.curl(&["-x", &socks, &plain]), Ok("200".into()));
    // Credentials microsocks refuses.
    assert!(
        rig.curl(&[
            "-x",
            &socks,
            "--proxy-user",
            &format!("{CRAWLER_USER}:wrong"),
            &plain
        ])
        .is_err()
    );

    // The tap is the ground truth: wait until the meter has counted every byte it saw.
    let socks_vendor = [("proxy_vendor", "vendor-socks")];
    let metered = |scrape: &Scrape| {
        (
            scrape.sum("proxy_sent_bytes_total", &socks_vendor),
            scrape.sum("proxy_received_bytes_total", &socks_vendor),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = rig.scrape();
        let settled =
            metered(&scrape) == tap.counts() && scrape.sum("proxy_active_tunnels", &[]) == 0;
        if settled || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metered(&scrape),
        tap.counts(),
        "the meter's (sent, received) bytes vs the tap's"
    );
    assert!(tap.counts().1 > 13_000, "the bodies went through the tap");
    let socks_requests = |class: &str| {
        scrape.sum(
            "proxy_requests_total",
            &[
                ("proxy_vendor", "vendor-socks"),
                ("protocol", "socks5"),
                ("status_class", class),
            ],
        )
    };
    assert_eq!((socks_requests("2xx"), socks_requests("4xx")), (3, 1));
    assert_eq!(scrape.sum("proxy_requests_total", &socks_vendor), 4);
    let inner = |i: &str| {
        scrape.sum(
            "proxy_tunnels_total",
            &[("proxy_vendor", "vendor-socks"), ("inner", i)],
        )
    };
    assert_eq!((inner("tls_h2"), inner("tls_http1")), (1, 1));
    let log = rig.meter().access_log.lines().join("\n");
    assert!(
        !log.contains(CRAWLER_PASSWORD),
        "the access log holds a crawler secret"
    );
}

#[test]
fn the_rules_are_idempotent_and_removed_completely() {
    let rig = Rig::new("");
    let nat_rules = || {
        let output = run(rig.link.pod.command("iptables-save").args(["-t", "nat"]));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let first = rig.capture(&["--exclude-mark", MARK]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("jump from OUTPUT added"));
    let once = nat_rules();
    let second = rig.capture(&["--exclude-mark", MARK]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("already present"));
    assert_eq!(nat_rules(), once);
    assert_eq!(
        once.iter()
            .filter(|r| r.starts_with("-A OUTPUT") && r.contains("PROXY_TELEMETRY_OUTPUT"))
            .count(),
        1
    );
    assert_eq!(
        once.iter().filter(|r| r.contains("REDIRECT")).count(),
        3,
        "{once:#?}"
    );
    for _ in 0..2 {
        run(rig
            .link
            .pod
            .command(BIN)
            .args(["init-iptables", "--cleanup"]));
        assert_eq!(nat_rules(), Vec::<String>::new());
    }
    // Without rules, the crawler reaches its vendor directly and the meter sees nothing.
    assert_eq!(
        rig.curl(&["-x", &rig.http_proxy(), "http://shop-a.test/bytes/10"]),
        Ok("200".into())
    );
    assert_eq!(rig.scrape().sum("proxy_sent_bytes_total", &[]), 0);
}

#[test]
fn the_projects_own_load_generator_reconciles_exactly_through_capture() {
    let rig = Rig::new("");
    rig.capture(&["--exclude-mark", MARK]);
    let ledger = rig.dir.join("ledger.json");
    let vendor = format!("vendor-a=http://{}", rig.vendor.address);
    let output = rig
        .link
        .pod
        .command(BIN)
        .args(["load", "--vendor", "vendor-a", "--vendor-proxy", &vendor])
        .args(["--pods", "1", "--rate", "40", "--duration", "3s"])
        .args(["--target", "http://shop-a.test/bytes/1500"])
        .args(["--target", "https://news-b.test/bytes/2500 h1"])
        .args(["--target", "https://api.data-c.test/bytes/3500 h2"])
        .arg("--ca-file")
        .arg(rig.dir.join("ca.pem"))
        .arg("--ledger")
        .arg(&ledger)
        .env("POD_NAMESPACE", "crawlers")
        .env("POD_NAME", "crawler-0")
        .env("PROXY_PASSWORD", CRAWLER_PASSWORD)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let scrape = rig.settled();
    // One per plain request and one per tunnel (the requests inside a tunnel are the crawler's
    // business with the destination).
    let completed = scrape.sum("proxy_requests_total", &[("status_class", "2xx")]);
    assert!(completed >= 10, "{completed}");
    rig.vendor.assert_metered_exactly(&scrape, &[]);
    // The meter forwards the crawler's bytes unchanged, so its byte counts are also the
    // crawler's own, as the ledger recorded them.
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let truth: serde_json::Value = serde_json::from_str(&ledger_text).unwrap();
    let total = |field: &dyn Fn(&serde_json::Value) -> u64| -> u64 {
        truth["entries"].as_array().unwrap().iter().map(field).sum()
    };
    assert_eq!(
        total(&|e| e["bytes_written"].as_u64().unwrap()),
        scrape.sum("proxy_sent_bytes_total", &[])
    );
    // Reading, the crawler may stop early: when it closes a TLS tunnel, what the origin sends
    // in return still crosses the vendor leg and is counted (the vendor's figure above is the
    // exact check), but the crawler never reads it: at most an HTTP/2 GOAWAY (a 17-byte frame in
    // a 39-byte TLS 1.3 record) and a close_notify (24 bytes) per tunnel.
    const UNREAD_PER_TUNNEL: u64 = 39 + 24;
    let read = total(&|e| e["bytes_read"].as_u64().unwrap());
    let received = scrape.sum("proxy_received_bytes_total", &[]);
    let tunnels = scrape.sum("proxy_requests_total", &[("protocol", "connect")]);
    assert!(
        received >= read && received - read <= tunnels * UNREAD_PER_TUNNEL,
        "the meter received {received}, the crawler read {read}, over {tunnels} tunnels"
    );
    assert_eq!(
        total(&|e| ["http1", "h2", "connect"]
            .iter()
            .map(|p| e["proxy_requests"][p].as_u64().unwrap())
            .sum()),
        completed
    );
    // And the checker agrees, request by request, through the same metrics URL.
    let metrics_url = format!("http://{}/metrics", rig.meter().admin);
    let check = rig
        .link
        .pod
        .command(BIN)
        .args(["check", "--metrics-url", &metrics_url, "--expect"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn the_injected_init_container_and_sidecar_meter_a_crawler_as_the_webhook_wrote_them() {
    // What `inject` (the webhook's patch, applied) puts in a pod, run as the kubelet would:
    // the init container's command as root, then the meter sidecar's command as its uid with
    // its environment; then the crawler, which knows nothing of either.
    const ADMIN: &str = "127.0.0.1:19464";
    let rig = Rig::new("");
    let injector = rig.dir.join("injector.yaml");
    let meter_config = format!(
        "listeners: []\ntransparent:\n  listeners: [\"127.0.0.1:15129\"]\nadmin:\n  address: \"0.0.0.0:19464\"\nidentity:\n  from: environment\nvendors:\n{}access_log:\n  enabled: false\n",
        vendor_yaml(&rig.vendor)
    );
    let indented: String = meter_config.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(
        &injector,
        format!("image: meter:test\ninit_image: init:test\nmeter_config: |\n{indented}"),
    )
    .unwrap();
    let pod = rig.dir.join("pod.json");
    std::fs::write(
        &pod,
        r#"{"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "crawler-0", "namespace": "crawlers", "labels": {"pod-template-hash": "7f9c"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "crawler-7f9c",
                                              "uid": "1", "controller": true}]},
            "spec": {"containers": [{"name": "crawler", "image": "example/crawler:1"}]}}"#,
    )
    .unwrap();
    let injected = run(std::process::Command::new(BIN)
        .args(["inject", "--config"])
        .arg(&injector)
        .arg("--file")
        .arg(&pod));
    let injected: serde_json::Value = serde_json::from_slice(&injected.stdout).unwrap();
    let containers = injected["spec"]["initContainers"].as_array().unwrap();
    let (init, meter) = (&containers[0], &containers[1]);
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    // The kubelet resolves the Downward API fields; literal values pass as they are.
    let env = |container: &serde_json::Value| -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => "crawler-0".to_owned(),
                    Some("metadata.namespace") => "crawlers".to_owned(),
                    Some(other) => panic!("unexpected field {other}"),
                    None => e["value"].as_str().unwrap().to_owned(),
                };
                (name, value)
            })
            .collect()
    };

    run(rig
        .link
        .pod
        .command(BIN)
        .args(strings(&init["args"]))
        .envs(env(init)));
    let uid = meter["securityContext"]["runAsUser"].to_string();
    assert_eq!(uid, "2102");
    let _meter = Running(
        rig.link
            .pod
            .command("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                BIN,
            ])
            .args(strings(&meter["args"]))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env(meter))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin_get = |path: &str| {
        rig.link
            .pod
            .command("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{ADMIN}{path}"))
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin_get("/readyz").status.success() {
        assert!(Instant::now() < deadline, "the meter did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        rig.curl(&["-x", &rig.http_proxy(), "http://shop-a.test/bytes/4321"]),
        Ok("200".into())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape =
            Scrape::parse(&String::from_utf8_lossy(&admin_get("/metrics").stdout)).unwrap();
        if rig.vendor.books_match(&scrape) || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pod = [("source_pod", "crawler-0"), ("source_workload", "crawler")];
    assert_eq!(scrape.sum("proxy_requests_total", &pod), 1);
    rig.vendor.assert_metered_exactly(&scrape, &pod);
    assert_eq!(
        scrape.sum("proxy_rejected_requests_total", &[("reason", "loop")]),
        0
    );
}

#[test]
fn pipelined_requests_are_each_counted_with_their_own_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::new("");
    rig.capture(&["--exclude-mark", MARK]);
    let token = base64::engine::general_purpose::STANDARD.encode(CREDENTIALS);
    let request = |method: &str, url: &str, last: bool| {
        format!(
            "{method} {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {token}\r\n{}\r\n",
            if last { "Connection: close\r\n" } else { "" }
        )
    };
    // Three requests in one write: a GET, a HEAD (its response announces a body it does not
    // carry) and a GET answered with a chunked body.
    let pipelined = [
        request("GET", "http://shop-a.test/bytes/100", false),
        request("HEAD", "http://news-b.test/bytes/5000", false),
        request("GET", "http://api.data-c.test/chunked/3000", true),
    ];
    let all = pipelined.concat();
    let vendor = rig.vendor.address;
    let answer = rig.pod.run(async move {
        let mut stream = tokio::net::TcpStream::connect(vendor).await.unwrap();
        stream.write_all(all.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    });
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    let scrape = rig.settled();
    assert_eq!(requests(&scrape, "http1", "2xx"), 3);
    assert_eq!(
        scrape.sum("proxy_received_bytes_total", &[]),
        answer.len() as u64
    );
    let by_destination = meter_bytes_by_destination(&scrape);
    for (destination, request) in ["shop-a.test", "news-b.test", "data-c.test"]
        .iter()
        .zip(&pipelined)
    {
        assert_eq!(
            by_destination[*destination].0,
            request.len() as u64,
            "{destination}"
        );
    }
    // The HEAD response is a head only.
    let head_only = by_destination["news-b.test"].1;
    assert!(head_only < 500, "{head_only}");
    assert!(
        by_destination["data-c.test"].1 > 3000,
        "{by_destination:?}\n{text}"
    );
}
