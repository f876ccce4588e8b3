//! `proxy-telemetry init-iptables`: the transparent-mode redirect rules, for an init container.

use std::process::ExitCode;

use pt_kube::iptables::{Capture, Family, Installed, Iptables, Match};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Derive the capture from the meter's configuration: its transparent listener's port, its
    /// outbound mark, and the ports of every vendor endpoint.
    #[command(flatten)]
    config: super::ConfigSource,
    /// With --config: capture only the vendor endpoints' literal addresses and blocks, not
    /// every destination at their ports (names cannot be captured by address).
    #[arg(long)]
    by_address: bool,
    /// The meter's transparent listener port (default: from --config).
    #[arg(long)]
    redirect_to: Option<u16>,
    /// Capture connections to this address or block, at one port or any: `203.0.113.7:8000`,
    /// `203.0.113.0/24`, `[2001:db8::/32]:8000`. Repeatable.
    #[arg(long = "destination", value_name = "ADDRESS")]
    destinations: Vec<String>,
    /// Capture connections to any address at this port. Repeatable.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Capture every outbound TCP connection (loopback and the exclusions excepted).
    #[arg(long)]
    all: bool,
    /// Never capture this user's connections: the meter's own uid (and a mesh proxy's, such as
    /// Istio's 1337). Repeatable.
    #[arg(long = "exclude-uid", value_name = "UID")]
    exclude_uids: Vec<u32>,
    /// Never capture sockets with this mark (the meter's transparent.outbound_mark). Repeatable.
    #[arg(long = "exclude-mark", value_name = "MARK", value_parser = parse_mark)]
    exclude_marks: Vec<u32>,
    /// Never capture connections to this block (the cluster's service and pod ranges in --all
    /// mode). Repeatable.
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    exclude_cidrs: Vec<String>,
    /// Never capture connections to this port. Repeatable.
    #[arg(long = "exclude-port", value_name = "PORT")]
    exclude_ports: Vec<u16>,
    /// The iptables command: `iptables` (the system's default backend) or `iptables-legacy`
    /// (nodes that still use it); ip6tables and the -restore tools are derived from it.
    #[arg(long, default_value = "iptables", env = "PROXY_TELEMETRY_IPTABLES")]
    iptables: String,
    /// IPv6 rules: `auto` installs them when the capture concerns IPv6 and tolerates a pod
    /// without IPv6; `on` requires them; `off` skips them.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules (the jump from OUTPUT and the chain) instead of installing them.
    #[arg(long, conflicts_with = "dry_run")]
    cleanup: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a mark (decimal or 0x hex)"))
}

fn parse_destination(text: &str) -> Result<Match, String> {
    if let Ok(endpoint) = text.parse::<pt_config::Endpoint>() {
        return match endpoint {
            pt_config::Endpoint::Net { net, port } => Ok(Match::Address {
                net,
                port: Some(port),
            }),
            pt_config::Endpoint::Host(authority) => match authority.host.ip() {
                Some(ip) => Ok(Match::Address {
                    net: ip.into(),
                    port: Some(authority.port),
                }),
                None => Err(format!(
                    "'{text}': a name cannot be captured by address; use --port {}",
                    authority.port
                )),
            },
        };
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse()
        .map(|net| Match::Address { net, port: None })
        .map_err(|_| format!("'{text}' is not an address, block, address:port or block:port"))
}

fn capture(args: &Args) -> Result<Capture, String> {
    let mut capture = match args.config.load()? {
        Some(config) => {
            Capture::from_config(&config, args.by_address).map_err(|e| e.to_string())?
        }
        None => Capture::default(),
    };
    if let Some(port) = args.redirect_to {
        capture.redirect_to = port;
    }
    if capture.redirect_to == 0 {
        return Err("--redirect-to (or --config with a transparent listener) is required".into());
    }
    for destination in &args.destinations {
        capture.matches.push(parse_destination(destination)?);
    }
    capture
        .matches
        .extend(args.ports.iter().map(|&p| Match::Port(p)));
    if args.all {
        capture.matches.push(Match::All);
    }
    if capture.matches.is_empty() {
        return Err("nothing to capture: give --config, --destination, --port or --all".into());
    }
    capture.exclude_uids.extend(&args.exclude_uids);
    capture.exclude_marks.extend(&args.exclude_marks);
    for cidr in &args.exclude_cidrs {
        capture.exclude_nets.push(
            cidr.parse()
                .map_err(|_| format!("'{cidr}' is not a CIDR block"))?,
        );
    }
    capture.exclude_ports.extend(&args.exclude_ports);
    if capture.exclude_uids.is_empty() && capture.exclude_marks.is_empty() {
        eprintln!(
            "warning: neither --exclude-uid nor --exclude-mark is given: the meter's own \
             connections will be redirected back to it (it refuses them as loops)"
        );
    }
    Ok(capture)
}

pub fn run(args: Args) -> ExitCode {
    let iptables = Iptables {
        command: args.iptables.clone(),
    };
    let families: Vec<Family> = match args.ipv6 {
        Ipv6::Off => vec![Family::V4],
        Ipv6::Auto | Ipv6::On => vec![Family::V4, Family::V6],
    };
    if args.cleanup {
        let mut failed = false;
        for family in families {
            match iptables.remove(family) {
                Ok(()) => println!("{family:?}: removed {}", pt_kube::iptables::CHAIN),
                Err(error) if family == Family::V6 && args.ipv6 == Ipv6::Auto => {
                    eprintln!("warning: IPv6: {error}");
                }
                Err(error) => {
                    eprintln!("error: {family:?}: {error}");
                    failed = true;
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let capture = match capture(&args) {
        Ok(capture) => capture,
        Err(error) => return super::usage(error),
    };
    let mut failed = false;
    for family in families {
        if args.dry_run {
            if let Some(input) = capture.restore_input(family) {
                println!(
                    "# {family:?}: {}-restore --noflush",
                    iptables.binary(family)
                );
                print!("{input}");
            }
            continue;
        }
        let explicit_v6 = capture
            .matches
            .iter()
            .any(|m| matches!(m, Match::Address { net, .. } if !net.is_ipv4()));
        match iptables.install(&capture, family) {
            Ok(Installed::Rules { jump_added }) => println!(
                "{family:?}: chain {} written; jump from OUTPUT {}",
                pt_kube::iptables::CHAIN,
                if jump_added {
                    "added"
                } else {
                    "already present"
                }
            ),
            Ok(Installed::NotNeeded) => println!("{family:?}: nothing to capture"),
            Err(error) if family == Family::V6 && args.ipv6 == Ipv6::Auto && !explicit_v6 => {
                eprintln!("warning: IPv6 rules not installed ({error}); IPv4 is captured");
            }
            Err(error) => {
                eprintln!("error: {family:?}: {error}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
