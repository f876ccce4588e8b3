//! `proxy-telemetry`: one binary, one subcommand per role.
//!
//! This file only parses arguments, sets up logging and dispatches; each subcommand's glue is in
//! `cmd/`. Exit codes: 0 success, 1 failure at run time or a failed check, 64 bad configuration
//! or arguments (`EX_USAGE`, as linkerd2-proxy does).

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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
    let is_set = |name: &str| std::env::var_os(name).is_some();
    let matches = cmd::with_legacy_env(Cli::command(), &is_set).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    if let Some(subcommand) = matches.subcommand_name() {
        let value = |name: &str| std::env::var_os(name);
        for legacy in cmd::shadowed_legacy_env(&Cli::command(), subcommand, &value) {
            tracing::warn!(
                "{legacy} is ignored: PROXY_TELEMETRY_{legacy} is set too, to another value"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The variable `subcommand`'s argument `id` reads, with `set` the variables set.
    fn env_of(subcommand: &str, id: &str, set: &[&str]) -> String {
        let is_set = |name: &str| set.contains(&name);
        let command = cmd::with_legacy_env(Cli::command(), &is_set);
        let sub = command
            .find_subcommand(subcommand)
            .expect("the subcommand exists");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_id() == id)
            .expect("the argument exists");
        arg.get_env()
            .and_then(|e| e.to_str())
            .expect("the argument reads a variable")
            .to_owned()
    }

    #[test]
    fn every_subcommand_variable_is_prefixed_and_every_legacy_name_still_read() {
        let command = Cli::command();
        let mut read = Vec::new();
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                    assert!(
                        env.starts_with("PROXY_TELEMETRY_"),
                        "{} --{}: {env}",
                        sub.get_name(),
                        arg.get_id()
                    );
                    read.push(env.to_owned());
                }
            }
        }
        for legacy in cmd::LEGACY_ENV {
            assert!(
                read.contains(&format!("PROXY_TELEMETRY_{legacy}")),
                "{legacy} is not the old name of any variable"
            );
        }
    }

    #[test]
    fn a_legacy_variable_shadowed_by_a_different_prefixed_value_is_reported() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let command = Cli::command();
        let shadowed = |set| cmd::shadowed_legacy_env(&command, "load", &env(set));
        assert_eq!(
            shadowed(&[
                ("PROXY_TELEMETRY_REQUESTS_PER_SECOND", "100"),
                ("REQUESTS_PER_SECOND", "200")
            ]),
            ["REQUESTS_PER_SECOND"]
        );
        assert!(shadowed(&[("PROXY_TELEMETRY_PODS", "3"), ("PODS", "3")]).is_empty());
        assert!(shadowed(&[("PODS", "3")]).is_empty());
        // What another subcommand reads is not reported for this one.
        assert!(
            cmd::shadowed_legacy_env(
                &command,
                "meter",
                &env(&[("PROXY_TELEMETRY_PODS", "1"), ("PODS", "3")])
            )
            .is_empty()
        );
    }

    #[test]
    fn a_legacy_variable_is_read_only_when_its_prefixed_name_is_unset() {
        assert_eq!(env_of("load", "pods", &[]), "PROXY_TELEMETRY_PODS");
        assert_eq!(env_of("load", "pods", &["PODS"]), "PODS");
        assert_eq!(
            env_of("load", "pods", &["PODS", "PROXY_TELEMETRY_PODS"]),
            "PROXY_TELEMETRY_PODS"
        );
        assert_eq!(env_of("fake-vendor", "listen", &["LISTEN"]), "LISTEN");
        assert_eq!(env_of("inject-webhook", "listen", &["LISTEN"]), "LISTEN");
        // A name that was never a legacy one is not read for its prefixed variable.
        assert_eq!(
            env_of("load", "churn_per_minute", &["CHURN_PER_MINUTE"]),
            "PROXY_TELEMETRY_CHURN_PER_MINUTE"
        );
    }
}
