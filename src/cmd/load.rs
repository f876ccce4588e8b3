//! `proxy-telemetry load`: a synthetic crawler fleet. Every option can come from an environment
//! variable, so a Kubernetes Deployment runs it unchanged and `kubectl set env
//! deployment/crawlers PROXY_TELEMETRY_REQUESTS_PER_SECOND=200` rescales it (the names without
//! the prefix, which earlier releases read, still work: `cmd::LEGACY_ENV`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use pt_load::engine::Run;
use pt_load::plan::{LoadPlan, Stop, Target, VendorRoute, VendorShare, parse_weights};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The proxy (the meter) every vendor without a proxy of its own is reached through.
    #[arg(
        long,
        env = "PROXY_TELEMETRY_PROXY_URL",
        default_value = "http://127.0.0.1:3128"
    )]
    proxy: String,
    /// A vendor reached through a proxy of its own: NAME=http://host:port (repeatable, or
    /// comma-separated in the variable). Such requests carry no vendor header.
    #[arg(
        long = "vendor-proxy",
        env = "PROXY_TELEMETRY_VENDOR_PROXIES",
        value_delimiter = ','
    )]
    vendor_proxies: Vec<String>,
    /// Vendor weights, e.g. vendor-a=40,vendor-b=35,vendor-c=25.
    #[arg(
        long,
        env = "PROXY_TELEMETRY_VENDOR_WEIGHTS",
        default_value = "vendor-a=40,vendor-b=35,vendor-c=25"
    )]
    vendors: String,
    /// Send everything to this one vendor (overrides --vendors).
    #[arg(long, env = "PROXY_TELEMETRY_VENDOR")]
    vendor: Option<String>,
    /// The header naming the vendor on requests to the shared proxy.
    #[arg(
        long,
        env = "PROXY_TELEMETRY_VENDOR_HEADER",
        default_value = "X-Proxy-Vendor"
    )]
    vendor_header: String,
    /// Simulated pods. With 1, the pod is POD_NAMESPACE/POD_NAME (a real pod's own identity).
    #[arg(long, env = "PROXY_TELEMETRY_PODS", default_value_t = 1)]
    pods: usize,
    #[arg(
        long,
        env = "PROXY_TELEMETRY_POD_NAMESPACE",
        default_value = "crawlers"
    )]
    namespace: String,
    /// The pod name, or the prefix of simulated pods' names (NAME-00, NAME-01, ...).
    #[arg(long, env = "PROXY_TELEMETRY_POD_NAME", default_value = "crawler")]
    pod_name: String,
    /// Password sent with the pod identity as Proxy-Authorization (when the meter requires one).
    #[arg(
        long,
        env = "PROXY_TELEMETRY_PROXY_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    proxy_password: String,
    /// Percent of the simulated pods replaced by new ones (new names, new connections) every
    /// minute, as a fleet whose pods are rescheduled does; 0 keeps every pod.
    #[arg(long, env = "PROXY_TELEMETRY_CHURN_PER_MINUTE", default_value_t = 0.0)]
    churn_per_minute: f64,
    /// Each pod sends all its requests through one vendor, drawn by the weights (crawler
    /// deployments are usually configured with one), instead of one draw per request.
    #[arg(long, env = "PROXY_TELEMETRY_VENDOR_PER_POD")]
    vendor_per_pod: bool,
    /// Requests per second per pod, scheduled open-loop.
    #[arg(
        long,
        env = "PROXY_TELEMETRY_REQUESTS_PER_SECOND",
        default_value_t = 100.0
    )]
    rate: f64,
    /// Requests in flight per pod at most.
    #[arg(long, env = "PROXY_TELEMETRY_CONCURRENCY", default_value_t = 100)]
    concurrency: usize,
    /// How long to run; 0 runs until SIGTERM or Ctrl-C.
    #[arg(long, env = "PROXY_TELEMETRY_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests over all pods.
    #[arg(long, env = "PROXY_TELEMETRY_REQUESTS")]
    requests: Option<u64>,
    /// A target, `[METHOD] URL [h1|h2] [xWEIGHT] [body=SIZE|MIN-MAX] [tunnel=h1|h2]`
    /// (repeatable; `;`-separated in the variable).
    #[arg(
        long = "target",
        env = "PROXY_TELEMETRY_TARGETS",
        value_delimiter = ';',
        required = true
    )]
    targets: Vec<String>,
    /// CA certificates (PEM) trusted for https:// targets; the Mozilla roots by default.
    #[arg(long, env = "PROXY_TELEMETRY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Requests a connection or tunnel carries before a new one is opened.
    #[arg(
        long,
        env = "PROXY_TELEMETRY_REQUESTS_PER_CONNECTION",
        default_value_t = 50
    )]
    requests_per_connection: u32,
    #[arg(long, env = "PROXY_TELEMETRY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the ground-truth ledger (JSON) here.
    #[arg(long, env = "PROXY_TELEMETRY_LEDGER")]
    ledger: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn plan(args: &Args) -> Result<LoadPlan, String> {
    let proxy = super::socket_address(&args.proxy)?;
    let weights = match &args.vendor {
        Some(one) => vec![(one.clone(), 1)],
        None => parse_weights(&args.vendors).map_err(|e| e.to_string())?,
    };
    let mut own = std::collections::HashMap::new();
    for entry in &args.vendor_proxies {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| format!("--vendor-proxy '{entry}' must be NAME=http://host:port"))?;
        own.insert(name.trim().to_owned(), super::socket_address(url.trim())?);
    }
    let vendors = weights
        .into_iter()
        .map(|(name, weight)| VendorShare {
            route: own
                .get(&name)
                .map_or(VendorRoute::Header, |a| VendorRoute::Proxy(*a)),
            name,
            weight,
        })
        .collect();
    let targets = args
        .targets
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.parse::<Target>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let pods = if args.pods == 1 {
        vec![format!("{}/{}", args.namespace, args.pod_name)]
    } else {
        (0..args.pods)
            .map(|i| format!("{}/{}-{i:02}", args.namespace, args.pod_name))
            .collect()
    };
    let plan = LoadPlan {
        proxy,
        vendor_header: args.vendor_header.clone(),
        vendors,
        targets,
        pods,
        proxy_password: args.proxy_password.clone(),
        rate_per_pod: args.rate,
        concurrency_per_pod: args.concurrency,
        stop: Stop {
            duration: (!args.duration.is_zero()).then_some(args.duration),
            requests: args.requests,
        },
        requests_per_connection: args.requests_per_connection,
        request_timeout: args.timeout,
        pod_lifetime: pod_lifetime(args.churn_per_minute)?,
        vendor_per_pod: args.vendor_per_pod,
    };
    plan.validate().map_err(|e| e.to_string())?;
    Ok(plan)
}

/// How long a simulated pod lives when `churn` percent of them are replaced every minute.
fn pod_lifetime(churn: f64) -> Result<Option<Duration>, String> {
    if churn == 0.0 {
        return Ok(None);
    }
    if !(churn > 0.0 && churn <= 100.0) {
        return Err(format!(
            "--churn-per-minute {churn}: a percentage above 0 and at most 100"
        ));
    }
    Ok(Some(Duration::from_secs_f64(60.0 * 100.0 / churn)))
}

fn roots(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::RootCertStore>, String> {
    let Some(path) = ca_file else {
        return Ok(Arc::new(pt_load::client::mozilla_roots()));
    };
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pt_load::client::roots_from_pem(&pem)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: Args) -> ExitCode {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => return super::usage(e),
    };
    let roots = match roots(args.ca_file.as_ref()) {
        Ok(r) => r,
        Err(e) => return super::usage(e),
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let stop = super::cancel_on_signal();
        let run = Run::new(plan, roots).map_err(|e| e.to_string())?;
        let stats = run.stats();
        let progress = std::io::stderr().is_terminal().then(|| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (scheduled, completed, failed) = stats.totals();
                    let elapsed = stats.started.elapsed().as_secs_f64();
                    let per_vendor: Vec<String> = stats
                        .vendors
                        .iter()
                        .map(|v| format!("{} {:.0}/s", v.name, v.completed.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed))
                        .collect();
                    eprint!(
                        "\r\x1b[K{elapsed:>5.0}s  {:.0} req/s  {scheduled} scheduled  {completed} done  {failed} failed  | {}",
                        completed as f64 / elapsed,
                        per_vendor.join("  ")
                    );
                    let _ = std::io::stderr().flush();
                }
            })
        });
        let outcome = run.execute(stop).await;
        if let Some(task) = progress {
            task.abort();
            eprintln!();
        }
        Ok::<_, String>(outcome)
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return super::usage(e),
    };
    if let Some(path) = &args.ledger
        && let Err(e) = std::fs::write(path, outcome.ledger.to_json())
    {
        eprintln!("error: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    match args.output {
        Output::Text => print!("{}", outcome.report.render_text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&outcome.report).unwrap_or_default()
        ),
    }
    if outcome.report.completed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
