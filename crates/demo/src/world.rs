//! The demo's world: origin sites under several host names, three fake vendors, and the meter
//! configured as a real deployment would be.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pt_fakes::origin::Origin;
use pt_fakes::pki::TestPki;
use pt_fakes::vendor::FakeVendor;
use pt_load::plan::{LoadPlan, Stop, Target, VendorRoute, VendorShare};
use pt_meter::{MemoryAccessLog, RunningMeter};

use crate::{DemoError, DemoOptions, Routing};

/// Destination hosts: five registrable domains, some with several host names.
pub const HOSTS: [&str; 8] = [
    "shop-a.test",
    "www.shop-a.test",
    "news-b.test",
    "img.news-b.test",
    "api.data-c.test",
    "store-d.test",
    "forum-e.test",
    "www.forum-e.test",
];

/// The crawlers' target mix: plain HTTP/1.1 and h2c, HTTPS with HTTP/1.1 and HTTP/2 inside
/// CONNECT tunnels (one through HTTP/2 CONNECT streams), GETs of fixed and varied sizes, POSTs.
pub const TARGETS: [&str; 9] = [
    "GET http://shop-a.test/bytes/2048 h1 x4",
    "GET https://www.shop-a.test/bytes/16384 h2 x4",
    "GET https://news-b.test/random/1024-65536 h1 x3",
    "GET http://img.news-b.test/bytes/65536 h2 x1",
    "POST https://api.data-c.test/upload body=512-8k h2 x2",
    "POST http://api.data-c.test/upload body=1k-32k h1 x1",
    "GET https://store-d.test/random/2048-200000 h1 tunnel=h2 x1",
    "GET https://forum-e.test/bytes/4096 h2 x2",
    "GET http://www.forum-e.test/random/100-20000 h1 x2",
];

/// Vendor names, with the fleet's default weights.
pub const VENDORS: [(&str, u32); 3] = [("vendor-a", 40), ("vendor-b", 35), ("vendor-c", 25)];

/// Example prices of the three fakes (docs/demo.md), in the shapes vendors sell: residential
/// traffic per decimal GB both ways with a budget; an ISP plan with a monthly fee, a little
/// traffic included (a demo moves megabytes) and GiB overage on received bytes; an unlocker
/// priced per 1,000 requests.
pub const PRICES: [(&str, &str); 3] = [
    (
        "vendor-a",
        "currency: USD\n      per_gb: 8.4\n      monthly_budget: 500",
    ),
    (
        "vendor-b",
        "currency: USD\n      per_gb: 3\n      unit: GiB\n      billed_bytes: received\n      monthly_fee: 50\n      included_gb: 0.01\n      monthly_budget: 100",
    ),
    ("vendor-c", "currency: USD\n      per_1k_requests: 1.5"),
];

/// The username the meter uses toward the fake vendors.
const METER_USERNAME: &str = "meter-demo";

/// A running demo world.
pub struct World {
    pub pki: TestPki,
    pub vendors: Vec<(String, FakeVendor)>,
    pub meter: RunningMeter,
    pub access_log: Arc<MemoryAccessLog>,
    pub config_path: std::path::PathBuf,
    /// Each vendor's prices, from the configuration.
    pub prices: Vec<(String, Option<pt_config::Pricing>)>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("config", &self.config_path)
            .finish_non_exhaustive()
    }
}

/// A password for a fake vendor: random per run, never printed (it is in `demo.env`).
fn fake_password() -> String {
    format!("demo-{:016x}", rand::random::<u64>())
}

/// Starts origins, vendors and the meter; writes the meter's configuration to `out`.
pub async fn start(options: &DemoOptions, out: &Path) -> Result<World, DemoError> {
    let pki = TestPki::new(&HOSTS);
    let origin = Origin::start(&pki)
        .await
        .map_err(|e| DemoError::Fake("stand-in websites", e))?;
    let mut vendors = Vec::new();
    let mut env = pt_config::Env::new();
    let mut yaml = String::from(
        "# The meter of `proxy-telemetry demo`, configured as a shared (gateway) meter would be.\n\
         # Reuse it with: set -a; . ./demo.env; proxy-telemetry meter --config meter.yaml\n\
         # (the vendors are the demo's fakes, so it only works while a demo runs).\n",
    );
    yaml.push_str("listeners:\n  - address: \"127.0.0.1:0\"\n");
    for (name, _) in VENDORS {
        yaml.push_str(&format!(
            "  - address: \"127.0.0.1:0\"\n    vendor: {name}\n"
        ));
    }
    yaml.push_str(&format!("admin:\n  address: \"{}\"\n", options.admin));
    yaml.push_str("vendors:\n");
    let mut env_file = String::from("# Passwords of the demo's fake vendors (random per run).\n");
    for (name, _) in VENDORS {
        let password = fake_password();
        let mut builder = FakeVendor::builder().credentials(METER_USERNAME, &password);
        for host in HOSTS {
            builder = builder.route(host, &origin);
        }
        let vendor = builder
            .start()
            .await
            .map_err(|e| DemoError::Fake("stand-in vendors", e))?;
        let var = format!(
            "DEMO_{}_PASSWORD",
            name.to_ascii_uppercase().replace('-', "_")
        );
        yaml.push_str(&format!(
            "  - name: {name}\n    url: http://{}\n    username: {METER_USERNAME}\n    password_env: {var}\n",
            vendor.address
        ));
        if let Some((_, pricing)) = PRICES.iter().find(|(vendor, _)| *vendor == name) {
            yaml.push_str(&format!("    pricing:\n      {pricing}\n"));
        }
        env_file.push_str(&format!("{var}={password}\n"));
        env.insert(var, password);
        vendors.push((name.to_owned(), vendor));
    }
    yaml.push_str(
        "routing:\n  vendor_header: X-Proxy-Vendor\n  default_vendor: vendor-a\n\
         identity:\n  from: proxy_username\n  default_namespace: crawlers\n\
         metrics:\n  destination_label: registrable_domain\n  max_destinations_per_vendor: 100\n  max_pods: 1000\n\
         shutdown:\n  grace_period: 5s\n",
    );
    let config_path = out.join("meter.yaml");
    std::fs::write(&config_path, &yaml).map_err(|e| DemoError::Write(config_path.clone(), e))?;
    let env_path = out.join("demo.env");
    std::fs::write(&env_path, env_file).map_err(|e| DemoError::Write(env_path.clone(), e))?;
    let config = pt_config::load_str(&yaml, &env).map_err(|e| DemoError::Config(e.to_string()))?;
    let access_log = Arc::new(MemoryAccessLog::default());
    let prices = config
        .vendors
        .iter()
        .map(|v| (v.name.clone(), v.pricing.clone()))
        .collect();
    let meter = match pt_meter::start(config.clone(), access_log.clone()).await {
        Ok(meter) => meter,
        // The well-known admin port is taken (another demo, a real meter): use any free port.
        Err(pt_meter::StartError::Bind { address, .. }) if address == options.admin => {
            let mut config = config;
            config.admin_address = SocketAddr::from(([127, 0, 0, 1], 0));
            pt_meter::start(config, access_log.clone())
                .await
                .map_err(DemoError::Meter)?
        }
        Err(e) => return Err(DemoError::Meter(e)),
    };
    Ok(World {
        pki,
        vendors,
        meter,
        access_log,
        config_path,
        prices,
    })
}

impl World {
    /// The fleet: pods, rate, weights, routing as the options say, through this world's meter.
    pub fn plan(&self, options: &DemoOptions) -> Result<LoadPlan, DemoError> {
        let targets = TARGETS
            .iter()
            .map(|t| t.parse::<Target>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DemoError::Config(e.to_string()))?;
        let vendors = options
            .weights
            .iter()
            .map(|(name, weight)| {
                let index = VENDORS.iter().position(|(v, _)| v == name);
                let route = match (options.routing, index) {
                    (Routing::Port, Some(i)) => {
                        VendorRoute::Proxy(self.meter.proxy_addresses[i + 1])
                    }
                    _ => VendorRoute::Header,
                };
                VendorShare {
                    name: name.clone(),
                    weight: *weight,
                    route,
                }
            })
            .collect();
        Ok(LoadPlan {
            proxy: self.meter.proxy_addresses[0],
            vendor_header: "X-Proxy-Vendor".into(),
            vendors,
            targets,
            pods: (0..options.pods)
                .map(|i| format!("crawlers/crawler-{i:02}"))
                .collect(),
            proxy_password: "unused-by-the-demo-meter".into(),
            rate_per_pod: options.rate,
            concurrency_per_pod: options.concurrency,
            stop: Stop {
                duration: Some(options.duration),
                requests: None,
            },
            requests_per_connection: 50,
            request_timeout: std::time::Duration::from_secs(30),
            pod_lifetime: None,
            vendor_per_pod: false,
        })
    }
}
