//! A meter under test: configured from YAML, listening on `127.0.0.1:0`, scraped over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use pt_config::Env;
use pt_meter::{MemoryAccessLog, RunningMeter};
use pt_metrics::exposition::Scrape;

use crate::vendor::FakeVendor;

/// The username the meter presents to fake vendors.
pub const VENDOR_USERNAME: &str = "meter";

/// Builds a meter configuration around fake vendors.
#[derive(Debug, Clone)]
pub struct MeterSetup {
    listeners: Vec<Option<String>>,
    vendors: Vec<String>,
    extra: String,
    env: Env,
}

impl Default for MeterSetup {
    fn default() -> Self {
        MeterSetup {
            listeners: vec![None],
            vendors: Vec::new(),
            extra: String::new(),
            env: Env::new(),
        }
    }
}

impl MeterSetup {
    pub fn new() -> MeterSetup {
        MeterSetup::default()
    }

    /// A proxy vendor at `vendor`'s address; with a password, the meter authenticates as
    /// [`VENDOR_USERNAME`] (the password travels through an environment variable, as in
    /// production).
    pub fn vendor(mut self, name: &str, vendor: &FakeVendor, password: Option<&str>) -> MeterSetup {
        let mut yaml = format!("  - name: {name}\n    url: http://{}\n", vendor.address);
        if let Some(password) = password {
            let var = format!("TEST_{}_PASSWORD", self.vendors.len());
            yaml.push_str(&format!(
                "    username: {VENDOR_USERNAME}\n    password_env: {var}\n"
            ));
            self.env.insert(var, password.to_owned());
        }
        self.vendors.push(yaml);
        self
    }

    /// A vendor given as raw YAML list-item lines (for unusual settings).
    pub fn vendor_yaml(mut self, yaml: &str) -> MeterSetup {
        self.vendors.push(yaml.to_owned());
        self
    }

    /// One listener per entry: `None` is a shared listener, `Some(v)` is dedicated to vendor `v`.
    pub fn listeners(mut self, listeners: &[Option<&str>]) -> MeterSetup {
        self.listeners = listeners.iter().map(|l| l.map(str::to_owned)).collect();
        self
    }

    /// Top-level YAML appended to the configuration (routing, security, limits, ...).
    pub fn yaml(mut self, extra: &str) -> MeterSetup {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> MeterSetup {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The configuration text.
    pub fn to_yaml(&self) -> String {
        let mut yaml = String::from("listeners:\n");
        for listener in &self.listeners {
            yaml.push_str("  - address: \"127.0.0.1:0\"\n");
            if let Some(vendor) = listener {
                yaml.push_str(&format!("    vendor: {vendor}\n"));
            }
        }
        yaml.push_str("admin:\n  address: \"127.0.0.1:0\"\n");
        yaml.push_str("vendors:\n");
        for vendor in &self.vendors {
            yaml.push_str(vendor);
        }
        if !self.extra.contains("identity:") {
            yaml.push_str("identity:\n  from: proxy_username\n  default_namespace: crawlers\n");
        }
        yaml.push_str(&self.extra);
        yaml
    }

    /// Starts the meter.
    pub async fn spawn(self) -> TestMeter {
        self.spawn_with(None).await
    }

    /// Starts the meter with this pod resolver (as `identity.from: kubernetes` needs), or the
    /// one its configuration describes.
    pub async fn spawn_with(
        self,
        identity: Option<Arc<dyn pt_meter::identity::PodResolver>>,
    ) -> TestMeter {
        let yaml = self.to_yaml();
        let config = match pt_config::load_str(&yaml, &self.env) {
            Ok(config) => config,
            Err(errors) => panic!("test meter config is invalid:\n{errors}\n{yaml}"),
        };
        let access_log = Arc::new(MemoryAccessLog::default());
        let identity = identity
            .or_else(|| pt_meter::identity::resolver(&config.identity))
            .expect("the test gives a resolver for identity.from: kubernetes");
        let running = pt_meter::start_with(config, access_log.clone(), identity)
            .await
            .expect("test meter starts");
        TestMeter {
            proxies: running.proxy_addresses.clone(),
            transparent: running.transparent_addresses.clone(),
            admin: running.admin_address,
            running: Some(running),
            access_log,
        }
    }
}

/// A running meter.
#[derive(Debug)]
pub struct TestMeter {
    pub proxies: Vec<SocketAddr>,
    /// Transparent listeners, when configured.
    pub transparent: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub access_log: Arc<MemoryAccessLog>,
    running: Option<RunningMeter>,
}

impl TestMeter {
    /// The first proxy listener.
    pub fn proxy(&self) -> SocketAddr {
        self.proxies[0]
    }

    /// `GET path` on the admin endpoint: status, content type and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String, String) {
        admin_get(self.admin, path).await
    }

    /// Scrapes `/metrics` over HTTP.
    pub async fn scrape(&self) -> Scrape {
        let (status, _, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "scrape failed: {body}");
        Scrape::parse(&body).expect("the meter's exposition parses")
    }

    /// The meter's own handle (for shutdown tests).
    pub fn running(&self) -> &RunningMeter {
        self.running
            .as_ref()
            .expect("invariant: present until shutdown")
    }

    /// Drains and stops the meter.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// `GET path` on an admin endpoint.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin connect");
    let mut sender = pt_load::client::http1(stream)
        .await
        .expect("admin handshake");
    let request = http::Request::get(path)
        .header(http::header::HOST, admin.to_string())
        .body(pt_load::client::empty())
        .expect("valid request");
    let response = sender.send_request(request).await.expect("admin answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
