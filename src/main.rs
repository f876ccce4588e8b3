//! `proxy-telemetry`: one binary, one subcommand per role.
//!
//! This file only parses arguments, sets up logging and dispatches; each subcommand's glue is in
//! `cmd/`. Exit codes: 0 success, 1 failure at run time or a failed check, 64 bad configuration
//! or arguments (`EX_USAGE`, as linkerd2-proxy does).

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "proxy-telemetry",
    version,
    about = "Per-vendor proxy usage telemetry for crawler fleets"
)]
struct Cli {
    /// Diagnostic log format on standard error (the meter's access log is always JSON on stdout).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PROXY_TELEMETRY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the metering proxy.
    Meter(cmd::meter::Args),
    /// Run origins, fake vendors, the meter and a crawler fleet here, and check requirements a–d.
    Demo(cmd::demo::Args),
    /// Run a synthetic crawler fleet through a proxy and record its ground truth.
    Load(cmd::load::Args),
    /// Check requirements a–d against a meter or Prometheus, optionally against a ledger.
    Check(cmd::check::Args),
    /// Usage and cost of a billing period from Prometheus, exact to the byte; --compare puts a
    /// vendor's usage export beside it.
    Report(cmd::report::Args),
    /// A stand-in proxy vendor (Basic auth, CONNECT, absolute-form), for demos in a cluster.
    FakeVendor(cmd::fake::VendorArgs),
    /// Stand-in websites (HTTP, and HTTPS with HTTP/1.1 and HTTP/2), for demos in a cluster.
    FakeOrigin(cmd::fake::OriginArgs),
    /// Install (or remove) the iptables rules that redirect a pod's vendor traffic to the
    /// meter's transparent listener; for the sidecar's init container.
    InitIptables(cmd::iptables::Args),
    /// Serve the mutating admission webhook that adds the meter as a sidecar (with its
    /// init-iptables init container) to pods created in labelled namespaces.
    InjectWebhook(cmd::inject::WebhookArgs),
    /// Add the sidecar to a Pod or workload manifest, as the webhook would, and print it.
    Inject(cmd::inject::InjectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Meter(args) => cmd::meter::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::FakeVendor(args) => cmd::fake::vendor(args),
        Command::FakeOrigin(args) => cmd::fake::origin(args),
        Command::InitIptables(args) => cmd::iptables::run(args),
        Command::InjectWebhook(args) => cmd::inject::webhook(args),
        Command::Inject(args) => cmd::inject::inject(args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
