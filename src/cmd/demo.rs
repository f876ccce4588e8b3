//! `proxy-telemetry demo`: the whole system on this machine.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pt_demo::{DemoOptions, Routing};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated crawler pods.
    #[arg(long, default_value_t = 21)]
    pods: usize,
    /// Requests per second per pod (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Requests in flight per pod at most.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// How long the fleet runs (Ctrl-C ends it early and still reports).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Vendor weights.
    #[arg(long, default_value = "vendor-a=40,vendor-b=35,vendor-c=25")]
    weights: String,
    /// How crawlers choose the vendor: the X-Proxy-Vendor header, or a meter port per vendor.
    #[arg(long, value_enum, default_value_t = RoutingArg::Header)]
    routing: RoutingArg,
    /// The meter's admin address (/metrics); a free port is used if it is taken.
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: SocketAddr,
    /// Where the meter config, ledger, access log and verdict are written.
    #[arg(long, default_value = "target/proxy-telemetry-demo")]
    out: PathBuf,
    /// Also run a real Prometheus (if installed) and check through PromQL.
    #[arg(long)]
    prometheus: bool,
    /// Live view: `auto` (when stdout is a terminal), `on` or `off`.
    #[arg(long, value_enum, default_value_t = Live::Auto)]
    live: Live,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoutingArg {
    Header,
    Port,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Live {
    Auto,
    On,
    Off,
}

pub fn run(args: Args) -> ExitCode {
    let weights = match pt_load::plan::parse_weights(&args.weights) {
        Ok(w) => w,
        Err(e) => return super::usage(e),
    };
    if let Some((name, _)) = weights
        .iter()
        .find(|(n, _)| !pt_demo::VENDORS.iter().any(|(v, _)| v == n))
    {
        return super::usage(format!(
            "the demo's vendors are vendor-a, vendor-b and vendor-c, not '{name}'"
        ));
    }
    let options = DemoOptions {
        pods: args.pods,
        rate: args.rate,
        concurrency: args.concurrency,
        duration: args.duration,
        weights,
        routing: match args.routing {
            RoutingArg::Header => Routing::Header,
            RoutingArg::Port => Routing::Port,
        },
        admin: args.admin,
        out: args.out,
        prometheus: args.prometheus,
        live: match args.live {
            Live::Auto => std::io::stdout().is_terminal(),
            Live::On => true,
            Live::Off => false,
        },
        top: 5,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stop = super::cancel_on_signal();
        pt_demo::run(options, stop).await
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
