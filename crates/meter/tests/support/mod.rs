//! What every metering test file shares: a world of origin, vendor and meter, and a way to wait
//! until the bytes have stopped moving before asserting exact values.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pt_load::client::{ProxyEndpoint, WireCounters};
use pt_metrics::exposition::Scrape;
use pt_testkit::VendorBooks;
use pt_testkit::meter::{MeterSetup, TestMeter};
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::vendor::FakeVendor;

pub const HOSTS: [&str; 4] = [
    "shop-a.test",
    "www.shop-a.test",
    "news-b.test",
    "api.data-c.test",
];
pub const VENDOR_PASSWORD: &str = "vendor-canary-5d1e";

pub struct World {
    pub pki: TestPki,
    pub origin: Origin,
    pub vendor: FakeVendor,
    pub meter: TestMeter,
}

/// An origin serving [`HOSTS`], a vendor requiring the meter's credentials, and a meter with
/// that vendor as its default, plus `extra` YAML.
pub async fn world(extra: &str) -> World {
    let pki = TestPki::new(&HOSTS);
    let origin = Origin::start(&pki).await.unwrap();
    let vendor = vendor_for(&origin).await;
    let meter = MeterSetup::new()
        .vendor("vendor-a", &vendor, Some(VENDOR_PASSWORD))
        .yaml("routing:\n  default_vendor: vendor-a")
        .yaml(extra)
        .spawn()
        .await;
    World {
        pki,
        origin,
        vendor,
        meter,
    }
}

/// A vendor that resolves every test host to `origin` and requires the meter's credentials.
pub async fn vendor_for(origin: &Origin) -> FakeVendor {
    let mut builder =
        FakeVendor::builder().credentials(pt_testkit::meter::VENDOR_USERNAME, VENDOR_PASSWORD);
    for host in HOSTS {
        builder = builder.route(host, origin);
    }
    builder.start().await.unwrap()
}

impl World {
    /// The meter as the crawler pod `namespace/pod` sees it.
    pub fn proxy_for(&self, pod: &str) -> ProxyEndpoint {
        ProxyEndpoint::new(self.meter.proxy()).with_credentials(pod, "unused")
    }

    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.pki.roots.clone()
    }

    /// Waits until the meter's byte counters equal the vendor's books and no tunnel is open,
    /// then returns the scrape (or the last scrape after 10 s, for the assertions to explain).
    pub async fn settled(&self) -> Scrape {
        settle(|| async {
            let scrape = self.meter.scrape().await;
            let done =
                self.vendor.books_match(&scrape) && scrape.sum("proxy_active_tunnels", &[]) == 0;
            (done, scrape)
        })
        .await
    }
}

/// Polls `probe` every 20 ms until it reports done, for at most 10 s.
pub async fn settle<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (bool, T)>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (done, value) = probe().await;
        if done || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn counters() -> Arc<WireCounters> {
    Arc::new(WireCounters::default())
}

/// What a crawler got for a plain GET through the meter.
pub struct Answer {
    pub status: u16,
    /// The meter's `x-proxy-telemetry-error` header, or "".
    pub reason: String,
    /// The body, or the error that cut it short.
    pub body: Result<String, String>,
    /// Whether the answer carried a `Proxy-Authenticate` challenge.
    pub challenge: bool,
}

/// `GET http://host/bytes/100` through the meter on a new connection.
pub async fn get(proxy: &ProxyEndpoint, host: &str) -> Answer {
    use http_body_util::BodyExt;
    let mut sender = pt_load::client::http1(proxy.dial(counters()).await.unwrap())
        .await
        .unwrap();
    let request = pt_testkit::paths::absolute(
        proxy,
        http::Method::GET,
        host,
        "/bytes/100",
        pt_load::client::empty(),
    );
    let response = sender.send_request(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let reason = header("x-proxy-telemetry-error").unwrap_or_default();
    let challenge = header("proxy-authenticate").is_some();
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) => Err(e.to_string()),
    };
    Answer {
        status,
        reason,
        body,
        challenge,
    }
}

/// A CONNECT to `authority` through the meter: the tunnel, or the status it was refused with.
pub async fn connect(
    proxy: &ProxyEndpoint,
    authority: &str,
) -> Result<hyper::upgrade::Upgraded, u16> {
    match pt_load::client::tunnel_h1(proxy, proxy.dial(counters()).await.unwrap(), authority).await
    {
        Ok(upgraded) => Ok(upgraded),
        Err(pt_load::client::ClientError::Refused(status)) => Err(status.as_u16()),
        Err(e) => panic!("CONNECT {authority}: {e}"),
    }
}

/// The status a CONNECT got (200 when the tunnel opened).
pub async fn connect_status(proxy: &ProxyEndpoint, authority: &str) -> u16 {
    connect(proxy, authority)
        .await
        .map(|_| 200)
        .unwrap_or_else(|status| status)
}

/// A TLS tunnel to `host:443` through the meter, with HTTP/2 inside.
pub async fn h2_tunnel(
    world: &World,
    pod: &str,
    host: &str,
) -> hyper::client::conn::http2::SendRequest<pt_load::client::ClientBody> {
    let proxy = world.proxy_for(pod);
    let tunnel = connect(&proxy, &format!("{host}:443"))
        .await
        .expect("tunnel opens");
    let tls = pt_load::client::tls(
        hyper_util::rt::TokioIo::new(tunnel),
        host,
        &["h2"],
        world.roots(),
    )
    .await
    .unwrap();
    pt_load::client::http2(tls).await.unwrap()
}
