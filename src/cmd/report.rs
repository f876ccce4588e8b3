//! `proxy-telemetry report`: usage and cost of a billing period from Prometheus, exact.

use std::path::PathBuf;
use std::process::ExitCode;

use pt_report::compare::{self, Columns};
use pt_report::time::{Date, parse_time};
use pt_report::{By, Options, render};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Prometheus' URL, e.g. http://prometheus:9090 (the one scraping the meters).
    #[arg(long, env = "PROXY_TELEMETRY_PROMETHEUS")]
    prometheus: String,
    /// Start of the period: a date (00:00 UTC) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    from: i64,
    /// End of the period (excluded): a date (00:00 UTC) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    to: i64,
    /// Row grouping, comma-separated: vendor, namespace, workload, pod, destination (always
    /// per vendor too; destination only with vendor).
    #[arg(long, default_value = "vendor")]
    by: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Further label matchers every series must match, e.g. 'cluster="eu-1"'.
    #[arg(long, default_value = "")]
    selector: String,
    /// Time read per query; shorter chunks mean smaller answers on large fleets.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    chunk: std::time::Duration,
    /// How far before --from a series' last sample is looked for (older: the series is new).
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    lookback: std::time::Duration,
    /// A vendor's usage export (CSV) to compare with the meters, day by day.
    #[arg(long, requires = "columns")]
    compare: Option<PathBuf>,
    /// The export's columns: date=NAME,bytes=NAME,unit=GB|GiB|MB|…[,vendor=NAME].
    #[arg(long)]
    columns: Option<Columns>,
    /// The export's vendor, when it has no vendor column.
    #[arg(long)]
    vendor: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn progress(day: Date, done: usize, days: usize) {
    eprint!("\rreading {day} ({done}/{days} days)");
    if done == days {
        eprintln!();
    }
}

pub fn run(args: Args) -> ExitCode {
    if args.to <= args.from {
        return super::usage("--to must be after --from");
    }
    let by = match By::parse_list(&args.by) {
        Ok(by) => by,
        Err(e) => return super::usage(format!("--by: {e}")),
    };
    let seconds = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
    let options = Options {
        prometheus: args.prometheus,
        from: args.from,
        to: args.to,
        by,
        selector: args.selector,
        chunk: seconds(args.chunk),
        lookback: seconds(args.lookback),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()).then_some(progress as _),
    };
    let export = match &args.compare {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => return super::usage(format!("{}: {e}", path.display())),
        },
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(pt_report::run(&options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match (export, &args.columns) {
        (Some(export), Some(columns)) => {
            match compare::compare(&report, &export, columns, args.vendor.as_deref()) {
                Ok(lines) => match args.format {
                    Format::Json => compare::json(&lines),
                    Format::Table | Format::Csv => compare::table(&lines, columns),
                },
                Err(e) => return super::usage(e),
            }
        }
        _ => match args.format {
            Format::Table => render::table(&report),
            Format::Csv => render::csv(&report),
            Format::Json => render::json(&report),
        },
    };
    print!("{text}");
    ExitCode::SUCCESS
}
