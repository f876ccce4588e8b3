//! One module per subcommand: its arguments (clap) and the glue from them to the library crates.

pub mod check;
pub mod demo;
pub mod fake;
pub mod inject;
pub mod iptables;
pub mod load;
pub mod meter;
pub mod report;

use std::path::PathBuf;
use std::process::ExitCode;

/// The names environment variables had before every subcommand read `PROXY_TELEMETRY_*`. Each
/// is still read as its prefixed name (`PODS` for `PROXY_TELEMETRY_PODS`) when that is unset, so
/// that Deployments written for earlier releases keep working; the prefixed name wins.
pub const LEGACY_ENV: &[&str] = &[
    // load
    "PROXY_URL",
    "VENDOR_PROXIES",
    "VENDOR_WEIGHTS",
    "VENDOR",
    "VENDOR_HEADER",
    "PODS",
    "POD_NAMESPACE",
    "POD_NAME",
    "PROXY_PASSWORD",
    "REQUESTS_PER_SECOND",
    "CONCURRENCY",
    "DURATION",
    "REQUESTS",
    "TARGETS",
    "CA_FILE",
    "REQUESTS_PER_CONNECTION",
    "REQUEST_TIMEOUT",
    "LEDGER",
    // inject-webhook, fake-vendor and fake-origin
    "LISTEN",
    "VENDOR_USERNAME",
    "VENDOR_PASSWORD",
    "ORIGIN_HTTP",
    "ORIGIN_HTTPS",
    "HTTP_LISTEN",
    "HTTPS_LISTEN",
    "TLS_CERT",
    "TLS_KEY",
];

/// The prefix of every environment variable the subcommands read.
const ENV_PREFIX: &str = "PROXY_TELEMETRY_";

/// `command` with each subcommand argument whose `PROXY_TELEMETRY_*` variable is unset, and
/// whose [`LEGACY_ENV`] name is set, reading the legacy name. `is_set` tells whether a variable
/// is set (the process environment, or a test's).
pub fn with_legacy_env(command: clap::Command, is_set: &dyn Fn(&str) -> bool) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| {
            sub.mut_args(|arg| {
                let legacy = arg
                    .get_env()
                    .and_then(|env| env.to_str())
                    .filter(|env| !is_set(env))
                    .and_then(|env| env.strip_prefix(ENV_PREFIX))
                    .and_then(|old| LEGACY_ENV.iter().find(|legacy| **legacy == old))
                    .filter(|old| is_set(old));
                match legacy {
                    Some(old) => arg.env(*old),
                    None => arg,
                }
            })
        })
    })
}

/// The legacy variables `subcommand` would read that are shadowed by a prefixed one set to
/// another value (a `kubectl set env` written for an earlier release, say): worth a warning, as
/// they are otherwise ignored without a word. `value` reads a variable.
pub fn shadowed_legacy_env(
    command: &clap::Command,
    subcommand: &str,
    value: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<&'static str> {
    let Some(sub) = command.find_subcommand(subcommand) else {
        return Vec::new();
    };
    sub.get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str()?.strip_prefix(ENV_PREFIX))
        .filter_map(|old| LEGACY_ENV.iter().copied().find(|legacy| *legacy == old))
        .filter(|old| {
            let new = value(&format!("{ENV_PREFIX}{old}"));
            new.is_some() && value(old).is_some_and(|old| Some(old) != new)
        })
        .collect()
}

/// Exit code for a bad configuration or bad arguments (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Reports a usage error and returns its exit code.
pub fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Where a meter configuration comes from: a file, or the YAML text itself in an environment
/// variable (how the sidecar injector hands it to the containers it adds).
#[derive(clap::Args, Debug)]
pub struct ConfigSource {
    /// The configuration file (YAML); see examples/meter.yaml and docs/configuration.md.
    #[arg(
        long,
        short,
        env = "PROXY_TELEMETRY_CONFIG",
        conflicts_with = "config_yaml"
    )]
    pub config: Option<PathBuf>,
    /// The configuration as YAML text rather than a file.
    #[arg(long, env = "PROXY_TELEMETRY_CONFIG_YAML", hide_env_values = true)]
    pub config_yaml: Option<String>,
}

impl ConfigSource {
    /// The configuration, `None` when neither source is given, or the errors prefixed with
    /// where the configuration came from.
    pub fn load(&self) -> Result<Option<pt_config::MeterConfig>, String> {
        let env: pt_config::Env = std::env::vars().collect();
        let loaded = match (&self.config, &self.config_yaml) {
            (Some(path), _) => pt_config::load_file(path, &env),
            (None, Some(text)) => pt_config::load_str(text, &env),
            (None, None) => return Ok(None),
        };
        loaded
            .map(Some)
            .map_err(|errors| format!("{}: {errors}", self.describe()))
    }

    /// The source, for messages.
    pub fn describe(&self) -> String {
        match &self.config {
            Some(path) => path.display().to_string(),
            None => "PROXY_TELEMETRY_CONFIG_YAML".into(),
        }
    }
}

/// A multi-threaded runtime, or the failure to build one.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => result,
    }
}

/// A cancellation token cancelled by the first SIGTERM or SIGINT.
pub fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}

/// `http://host:port` (or `host:port`) to a socket address.
pub fn socket_address(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("'{url}' is not a reachable http://host:port address"))
}
