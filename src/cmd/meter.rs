//! `proxy-telemetry meter`: the metering proxy.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigSource,
    /// Validate the configuration, print every error with its key path, and exit.
    #[arg(long)]
    check_config: bool,
}

pub fn run(args: Args) -> ExitCode {
    let config = match args.config.load() {
        Ok(Some(config)) => config,
        Ok(None) => return super::usage("--config (or PROXY_TELEMETRY_CONFIG_YAML) is required"),
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if args.check_config {
        println!(
            "{}: valid ({} listener(s), {} vendor(s), admin on {})",
            args.config.describe(),
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
            let stop_watch = tokio_util::sync::CancellationToken::new();
            let identity = match &config.identity {
                pt_config::IdentityConfig::Kubernetes { node, max_pods } => {
                    pod_watch(node.as_deref(), *max_pods, stop_watch.clone()).await?
                }
                other => pt_meter::identity::resolver(other)
                    .context("the configured identity has no resolver")?,
            };
            let running = pt_meter::start_with(config, access_log, identity).await?;
            let (max_connections, max_vendor_connections) = running.connection_limits;
            tracing::info!(
                listeners = ?running.proxy_addresses,
                admin = %running.admin_address,
                max_connections,
                max_vendor_connections,
                "meter serving"
            );
            super::shutdown_signal()
                .await
                .context("installing signal handlers")?;
            tracing::info!("draining");
            running.shutdown().await;
            stop_watch.cancel();
            tracing::info!("stopped");
            Ok(())
        })
}

/// How long a shared meter waits for the first list of pods before serving anyway (its
/// connections are attributed as `unknown` until the list arrives).
const POD_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Pod attribution by source IP: a watch of pods (of one node, when given) feeding an index.
async fn pod_watch(
    node: Option<&str>,
    max_pods: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Arc<dyn pt_meter::identity::PodResolver>> {
    let client = pt_kube::kube::Client::try_default().await.context(
        "identity.from: kubernetes: no Kubernetes API (in-cluster service account or kubeconfig)",
    )?;
    let index = Arc::new(pt_kube::pods::PodIndex::new(max_pods));
    let config = pt_kube::pods::watcher_config(node);
    tokio::spawn(pt_kube::pods::watch(client, config, index.clone(), stop));
    if tokio::time::timeout(POD_SYNC_TIMEOUT, index.synced())
        .await
        .is_err()
    {
        tracing::warn!(
            "no pod list after {POD_SYNC_TIMEOUT:?}; serving, attributing as unknown until it arrives"
        );
    } else {
        tracing::info!(pods = index.len(), node, "pod index synced");
    }
    Ok(index)
}
