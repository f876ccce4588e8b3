//! `proxy-telemetry check`: requirements a–d against a meter or Prometheus.

use std::path::PathBuf;
use std::process::ExitCode;

use pt_check::checks::Options;
use pt_check::source::{Figures, Source};
use pt_sniff::destination::DestinationKey;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["metrics_url", "prometheus"])))]
pub struct Args {
    /// A meter's /metrics URL, e.g. http://127.0.0.1:9464/metrics.
    #[arg(long)]
    metrics_url: Option<String>,
    /// A Prometheus server URL, e.g. http://prometheus:9090 (every meter it scrapes, summed).
    #[arg(long)]
    prometheus: Option<String>,
    /// With --prometheus: evaluate at this time (RFC 3339 or Unix seconds) instead of now.
    #[arg(long, requires = "prometheus")]
    time: Option<String>,
    /// With --prometheus: the increase over this window (e.g. 1h; rounded, not exact) instead of
    /// the counter totals.
    #[arg(long, requires = "prometheus")]
    range: Option<String>,
    /// A ledger written by `load --ledger`: reconcile the meter with it, key by key.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// A vendor that must have traffic (repeatable).
    #[arg(long = "vendor")]
    vendors: Vec<String>,
    /// Destinations and pods listed per vendor.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// How the meter folds hosts into destinations (its metrics.destination_label).
    #[arg(long, value_enum, default_value_t = DestinationArg::RegistrableDomain)]
    destination_label: DestinationArg,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Keep checking (every 5 s) until every check passes or this time is up, e.g. 2m: for a
    /// post-install validation while Prometheus has not scraped everything yet.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
}

/// Pause between attempts of `--wait`.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DestinationArg {
    RegistrableDomain,
    Host,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn run(args: Args) -> ExitCode {
    let source = match (args.metrics_url, args.prometheus) {
        (Some(url), _) => Source::MetricsUrl(url),
        (None, Some(url)) => Source::Prometheus {
            url,
            time: args.time,
            range: args.range,
        },
        (None, None) => return super::usage("give --metrics-url or --prometheus"),
    };
    let ledger = match &args.expect {
        None => None,
        Some(path) => match std::fs::read_to_string(path)
            .map(|t| pt_load::ledger::Ledger::from_json(&t))
        {
            Ok(Ok(ledger)) => Some(ledger),
            Ok(Err(e)) => return super::usage(format!("{}: not a ledger: {e}", path.display())),
            Err(e) => return super::usage(format!("{}: {e}", path.display())),
        },
    };
    let options = Options {
        expected_vendors: args.vendors,
        top: args.top,
        ledger,
        destination_key: match args.destination_label {
            DestinationArg::RegistrableDomain => DestinationKey::RegistrableDomain,
            DestinationArg::Host => DestinationKey::Host,
        },
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = std::time::Instant::now() + args.wait;
    let verdict = loop {
        let attempt = runtime
            .block_on(Figures::fetch(&source))
            .map(|f| pt_check::evaluate(&f, &options));
        let again = std::time::Instant::now() + RETRY_PAUSE <= deadline;
        match attempt {
            Ok(verdict) if verdict.pass || !again => break verdict,
            Err(e) if !again => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            Ok(_) => eprintln!("not every check passes yet; trying again in {RETRY_PAUSE:?}"),
            Err(e) => eprintln!("{e}; trying again in {RETRY_PAUSE:?}"),
        }
        std::thread::sleep(RETRY_PAUSE);
    };
    match args.format {
        Format::Text => print!("{}", pt_check::render::text(&verdict)),
        Format::Json => println!("{}", pt_check::render::json(&verdict)),
    }
    if verdict.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
