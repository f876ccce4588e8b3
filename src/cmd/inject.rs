//! `proxy-telemetry inject-webhook` (the mutating admission webhook) and `proxy-telemetry
//! inject` (the same injection applied to a manifest, for clusters without the webhook).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use pt_kube::inject::Injector;

#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    /// The injector's configuration (YAML); see examples/injector.yaml and docs/transparent.md.
    #[arg(long, short, env = "PROXY_TELEMETRY_INJECTOR_CONFIG")]
    config: PathBuf,
    #[arg(long, env = "PROXY_TELEMETRY_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The serving certificate (PEM chain), re-read when it changes.
    #[arg(long, default_value = "/etc/proxy-telemetry/tls/tls.crt")]
    tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long, default_value = "/etc/proxy-telemetry/tls/tls.key")]
    tls_key: PathBuf,
    /// Validate the configuration and the certificate, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The injector's configuration (YAML), as for inject-webhook.
    #[arg(long, short, env = "PROXY_TELEMETRY_INJECTOR_CONFIG")]
    config: PathBuf,
    /// A Pod or a workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) in
    /// YAML or JSON; `-` reads standard input.
    #[arg(long, short, default_value = "-")]
    file: PathBuf,
}

fn injector(path: &Path) -> Result<Injector, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let env: pt_config::Env = std::env::vars().collect();
    Injector::from_yaml(&text, &env).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn webhook(args: WebhookArgs) -> ExitCode {
    let injector = match injector(&args.config) {
        Ok(injector) => injector,
        Err(error) => return super::usage(error),
    };
    let tls = match pt_kube::webhook::tls_config(&args.tls_cert, &args.tls_key) {
        Ok(tls) => tls,
        Err(error) => return super::usage(error),
    };
    if args.check_config {
        println!("{}: valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let served = super::runtime()
        .context("starting the runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("binding {}", args.listen))?;
                tracing::info!(address = %listener.local_addr()?, "injector serving");
                let stop = super::cancel_on_signal();
                pt_kube::webhook::serve(listener, tls, Arc::new(injector), stop).await;
                tracing::info!("stopped");
                Ok(())
            })
        });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn inject(args: InjectArgs) -> ExitCode {
    let injector = match injector(&args.config) {
        Ok(injector) => injector,
        Err(error) => return super::usage(error),
    };
    let mut text = String::new();
    let read = if args.file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&args.file).map(|t| text = t)
    };
    if let Err(error) = read {
        return super::usage(format!("{}: {error}", args.file.display()));
    }
    // JSON is YAML, so one parser reads both.
    let manifest: serde_json::Value = match serde_saphyr::from_str(&text) {
        Ok(manifest) => manifest,
        Err(error) => return super::usage(format!("{}: {error}", args.file.display())),
    };
    match injector.inject_manifest(manifest) {
        Ok((manifest, skipped)) => {
            if let Some(reason) = skipped {
                eprintln!("not injected: {reason}");
            }
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer_pretty(&mut out, &manifest)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out));
            match written {
                Ok(()) => ExitCode::SUCCESS,
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => super::usage(format!("{}: {error}", args.file.display())),
    }
}
