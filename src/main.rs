//! `proxy-telemetry`: one binary, one subcommand per role.
//!
//! This file only parses arguments, loads configuration, starts the runtime and maps errors to
//! exit codes: 0 success, 1 failure at run time (or a failed check), 64 bad configuration or
//! usage (`EX_USAGE`, as linkerd2-proxy does).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for a bad configuration (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "proxy-telemetry",
    version,
    about = "Per-vendor proxy usage telemetry for crawler fleets"
)]
struct Cli {
    /// Diagnostic log format on standard error (the access log is always JSON on stdout).
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
    Meter {
        /// The configuration file (YAML); see examples/meter.yaml and docs/configuration.md.
        #[arg(long, short, env = "PROXY_TELEMETRY_CONFIG")]
        config: PathBuf,
        /// Validate the configuration, print every error with its key path, and exit.
        #[arg(long)]
        check_config: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Meter {
            config,
            check_config,
        } => meter(&config, check_config),
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

fn meter(path: &std::path::Path, check_only: bool) -> ExitCode {
    let env: pt_config::Env = std::env::vars().collect();
    let config = match pt_config::load_file(path, &env) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        println!(
            "{}: valid ({} listener(s), {} vendor(s), admin on {})",
            path.display(),
            config.listeners.len(),
            config.vendors.len(),
            config.admin_address
        );
        return ExitCode::SUCCESS;
    }
    match run_meter(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_meter(config: pt_config::MeterConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let access_log: Arc<dyn pt_meter::AccessSink> = if config.access_log {
            Arc::new(pt_meter::StdoutAccessLog::start())
        } else {
            Arc::new(pt_meter::NoAccessLog)
        };
        let running = pt_meter::start(config, access_log).await?;
        tracing::info!(
            listeners = ?running.proxy_addresses,
            admin = %running.admin_address,
            "meter serving"
        );
        shutdown_signal().await?;
        tracing::info!("draining");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("installing the SIGINT handler")?,
    }
    Ok(())
}
