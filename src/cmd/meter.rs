//! `proxy-telemetry meter`: the metering proxy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The configuration file (YAML); see examples/meter.yaml and docs/configuration.md.
    #[arg(long, short, env = "PROXY_TELEMETRY_CONFIG")]
    config: PathBuf,
    /// Validate the configuration, print every error with its key path, and exit.
    #[arg(long)]
    check_config: bool,
}

pub fn run(args: Args) -> ExitCode {
    let env: pt_config::Env = std::env::vars().collect();
    let config = match pt_config::load_file(&args.config, &env) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{}: {errors}", args.config.display());
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if args.check_config {
        println!(
            "{}: valid ({} listener(s), {} vendor(s), admin on {})",
            args.config.display(),
            config.listeners.len(),
            config.vendors.len(),
            config.admin_address
        );
        return ExitCode::SUCCESS;
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: pt_config::MeterConfig) -> anyhow::Result<()> {
    super::runtime()
        .context("starting the runtime")?
        .block_on(async {
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
            super::shutdown_signal()
                .await
                .context("installing signal handlers")?;
            tracing::info!("draining");
            running.shutdown().await;
            tracing::info!("stopped");
            Ok(())
        })
}
