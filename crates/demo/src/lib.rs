//! `proxy-telemetry demo`: the whole system on one machine, no cluster, no root.
//!
//! Origin sites on loopback under several host names (HTTP and HTTPS, HTTP/1.1 and HTTP/2);
//! three fake vendors that behave like real ones (Basic auth, CONNECT and absolute-form, a name
//! map to the local origins) and book every byte they carry; the meter, configured as a real
//! deployment would be (its configuration is written out for reuse); and a fleet like the
//! original design's (21 pods × 100 requests/s, vendors 40/35/25). While it runs, a live view
//! shows what the meter measures. At the end: the a–d checks of `check` against the meter's
//! `/metrics`, and the exact reconciliations only a demo can do, because it owns the vendors and
//! the ground truth.

mod live;
mod prometheus;
mod reconcile;
mod world;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pt_check::checks::Options;
use pt_check::source::{Figures, Source};
use pt_load::engine::Run;
use pt_metrics::exposition::Scrape;
use pt_metrics::spec;
use pt_sniff::destination::DestinationKey;
use tokio_util::sync::CancellationToken;

pub use world::{TARGETS, VENDORS};

/// How crawlers pick their vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The `X-Proxy-Vendor` header on one shared listener (the original design).
    Header,
    /// One meter listener per vendor: the crawler changes only its proxy port.
    Port,
}

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub pods: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub duration: Duration,
    pub weights: Vec<(String, u32)>,
    pub routing: Routing,
    /// The meter's admin address (a free port is used if this one is taken).
    pub admin: SocketAddr,
    /// Where the meter config, ledger, access log and reports are written.
    pub out: PathBuf,
    /// Also start a real Prometheus (if on the PATH) and check through PromQL.
    pub prometheus: bool,
    /// Full-screen live view (default: when standard output is a terminal).
    pub live: bool,
    pub top: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            pods: 21,
            rate: 100.0,
            concurrency: 100,
            duration: Duration::from_secs(30),
            weights: VENDORS.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            routing: Routing::Header,
            admin: SocketAddr::from(([127, 0, 0, 1], 9464)),
            out: PathBuf::from("target/proxy-telemetry-demo"),
            prometheus: false,
            live: std::io::stdout().is_terminal(),
            top: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("demo configuration: {0}")]
    Config(String),
    #[error("starting the meter: {0}")]
    Meter(pt_meter::StartError),
    #[error("starting the {0}: {1}")]
    Fake(&'static str, std::io::Error),
    #[error("reading the meter's metrics: {0}")]
    Check(#[from] pt_check::SourceError),
    #[error("prometheus: {0}")]
    Prometheus(String),
}

/// How long the meter may take, after the fleet stops, to see every tunnel closed and every
/// byte the vendors sent.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the demo until its duration ends or `stop` is cancelled (Ctrl-C); returns whether every
/// check passed.
pub async fn run(options: DemoOptions, stop: CancellationToken) -> Result<bool, DemoError> {
    std::fs::create_dir_all(&options.out).map_err(|e| DemoError::Write(options.out.clone(), e))?;
    let world = world::start(&options, &options.out).await?;
    let admin = world.meter.admin_address;
    let metrics_url = format!("http://{admin}/metrics");
    let prometheus = match (options.prometheus, prometheus::find()) {
        (false, _) => None,
        (true, None) => {
            println!(
                "--prometheus: no `prometheus` binary on the PATH (Debian: apt install prometheus); skipping the PromQL checks"
            );
            None
        }
        (true, Some(binary)) => {
            Some(prometheus::Prometheus::start(&binary, admin, &options.out).await?)
        }
    };

    let title = format!(
        "proxy-telemetry demo — {} pods × {} req/s, vendors {}",
        options.pods,
        options.rate,
        options
            .weights
            .iter()
            .map(|(n, w)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!("{title}");
    println!(
        "meter config: {} (reusable; passwords of the fake vendors in demo.env)",
        world.config_path.display()
    );
    println!("meter metrics: {metrics_url}");
    println!(
        "point a Prometheus at it with:\n{}",
        live::scrape_snippet(&admin.to_string())
    );
    if let Some(p) = &prometheus {
        println!("Prometheus (started by the demo): {}", p.url);
    }

    let plan = world.plan(&options)?;
    let run =
        Run::new(plan, world.pki.roots.clone()).map_err(|e| DemoError::Config(e.to_string()))?;
    let stats = run.stats();
    let mut load = tokio::spawn(run.execute(stop.clone()));
    let started = tokio::time::Instant::now();
    let refresh = if options.live {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut before = live::Totals::default();
    let mut last = started;
    let outcome = loop {
        tokio::select! {
            outcome = &mut load => break outcome,
            () = tokio::time::sleep(refresh) => {
                let scrape = Scrape::parse(&world.meter.metrics_text()).unwrap_or_default();
                let now = live::Totals::of(&scrape);
                let seconds = last.elapsed().as_secs_f64();
                last = tokio::time::Instant::now();
                let frame = live::Frame {
                    title: &title,
                    elapsed: started.elapsed(),
                    duration: options.duration,
                    metrics_url: &metrics_url,
                    stats: &stats,
                };
                let screen = live::render(&frame, &scrape, &now, &before, seconds);
                if options.live {
                    print!("\x1b[H\x1b[2J{screen}");
                } else {
                    let (scheduled, completed, failed) = stats.totals();
                    println!("{:>4.0}s  {scheduled} scheduled, {completed} completed, {failed} failed", started.elapsed().as_secs_f64());
                }
                let _ = std::io::stdout().flush();
                before = now;
            }
        }
    };
    let outcome = outcome.map_err(|e| DemoError::Config(format!("the load task failed: {e}")))?;
    let scrape = settle(&world).await;
    if options.live {
        print!("\x1b[H\x1b[2J");
    }

    write(&options.out.join("ledger.json"), &outcome.ledger.to_json())?;
    write(
        &options.out.join("load-report.json"),
        &serde_json::to_string_pretty(&outcome.report).unwrap_or_default(),
    )?;
    write(
        &options.out.join("access.log"),
        &(world.access_log.lines().join("\n") + "\n"),
    )?;
    println!(
        "\n== the fleet (ground truth: {}) ==",
        options.out.join("ledger.json").display()
    );
    print!("{}", outcome.report.render_text());

    let check_options = Options {
        expected_vendors: options
            .weights
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(n, _)| n.clone())
            .collect(),
        top: options.top,
        ledger: Some(outcome.ledger.clone()),
        destination_key: DestinationKey::RegistrableDomain,
    };
    let figures = Figures::fetch(&Source::MetricsUrl(metrics_url.clone())).await?;
    let mut verdict = pt_check::evaluate(&figures, &check_options);
    verdict
        .checks
        .push(reconcile::vendor_bytes(&scrape, &world.vendors));
    verdict.checks.push(reconcile::access_log_triples(
        &world.access_log.lines(),
        &outcome.ledger,
        DestinationKey::RegistrableDomain,
    ));
    verdict.checks.push(reconcile::spend(
        &scrape,
        &world.vendors,
        &world.prices,
        &outcome.ledger,
    ));
    verdict.pass = verdict.checks.iter().all(|c| c.pass);
    println!("\n== requirements a–d from {metrics_url}, and reconciliation ==");
    print!("{}", pt_check::render::text(&verdict));
    println!("\n== spend (example prices: docs/demo.md) ==");
    print!(
        "{}",
        reconcile::top_spenders(&scrape, &world.prices, options.top)
    );
    let mut pass = verdict.pass;

    if let Some(prometheus) = &prometheus {
        // Two more scrapes, so Prometheus holds the final counts.
        tokio::time::sleep(prometheus::SCRAPE_INTERVAL * 3).await;
        let source = Source::Prometheus {
            url: prometheus.url.clone(),
            time: None,
            range: None,
        };
        let figures = Figures::fetch(&source).await?;
        let through_promql = pt_check::evaluate(&figures, &check_options);
        println!(
            "\n== the same checks through PromQL ({}) ==",
            prometheus.url
        );
        print!("{}", pt_check::render::text(&through_promql));
        pass &= through_promql.pass;
    }
    write(
        &options.out.join("verdict.json"),
        &pt_check::render::json(&verdict),
    )?;
    world.meter.shutdown().await;
    drop(prometheus);
    Ok(pass)
}

fn write(path: &std::path::Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|e| DemoError::Write(path.to_owned(), e))
}

/// Waits until no tunnel is open and the meter's bytes equal the vendors' books (or the timeout),
/// and returns the final scrape.
async fn settle(world: &world::World) -> Scrape {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let scrape = Scrape::parse(&world.meter.metrics_text()).unwrap_or_default();
        let sent: u64 = world
            .vendors
            .iter()
            .map(|(_, v)| v.bytes_from_meter())
            .sum();
        let received: u64 = world.vendors.iter().map(|(_, v)| v.bytes_to_meter()).sum();
        let settled = scrape.sum(&spec::ACTIVE_TUNNELS.series(), &[]) == 0
            && scrape.sum(&spec::SENT_BYTES.series(), &[]) == sent
            && scrape.sum(&spec::RECEIVED_BYTES.series(), &[]) == received;
        if settled || tokio::time::Instant::now() >= deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
