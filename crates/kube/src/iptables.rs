//! The redirect rules of transparent mode, for a pod's init container.
//!
//! All rules live in one chain of the `nat` table, [`CHAIN`], jumped to from the top of
//! `OUTPUT` (so that it sees the pod's connections before a service mesh's chain does). The
//! chain returns early for the meter's own traffic (its uid, or its socket mark) and for
//! excluded destinations, then `REDIRECT`s to the meter's transparent port what should be
//! captured: the vendor endpoints (address and port), every destination at the vendors' ports,
//! or all outbound TCP. Installing is idempotent: the chain is written whole with
//! `iptables-restore --noflush` (atomic, and a second run replaces the first), and the jump is
//! added only if missing. [`Iptables::remove`] undoes both.
//!
//! Capturing every destination at the vendors' ports is the default when the rules come from
//! the meter's configuration: it survives vendors moving their gateways to new addresses, since
//! the meter itself decides per connection whether the original destination is a vendor and
//! passes anything else through untouched.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use pt_config::{Cidr, Endpoint, MeterConfig};

/// The chain holding every rule.
pub const CHAIN: &str = "PROXY_TELEMETRY_OUTPUT";

/// What to redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Connections to addresses in a block, at one port or any.
    Address { net: Cidr, port: Option<u16> },
    /// Connections to any address at this port.
    Port(u16),
    /// Every outbound TCP connection (loopback excepted).
    All,
}

/// A complete capture: where to, what, and what never.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The meter's transparent listener port.
    pub redirect_to: u16,
    pub matches: Vec<Match>,
    /// Users whose connections are never redirected: the meter's own, and a mesh proxy's.
    pub exclude_uids: Vec<u32>,
    /// Socket marks that are never redirected (`transparent.outbound_mark`).
    pub exclude_marks: Vec<u32>,
    pub exclude_nets: Vec<Cidr>,
    pub exclude_ports: Vec<u16>,
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Why rules could not be derived or installed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("the configuration has no transparent listener (transparent.listeners)")]
    NoTransparentListener,
    #[error("nothing to capture: no vendor endpoint, port or --all")]
    NothingToCapture,
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

impl Capture {
    /// The capture the meter's configuration implies: its first transparent listener's port,
    /// its outbound mark, and every destination at the vendor endpoints' ports (or, with
    /// `by_address`, only the endpoints' literal addresses and blocks).
    pub fn from_config(config: &MeterConfig, by_address: bool) -> Result<Capture, IptablesError> {
        let listener = config
            .transparent
            .listeners
            .first()
            .ok_or(IptablesError::NoTransparentListener)?;
        let mut matches = Vec::new();
        for endpoint in config.vendors.iter().flat_map(|v| &v.endpoints) {
            let found = match endpoint {
                Endpoint::Net { net, port } if by_address => Match::Address {
                    net: *net,
                    port: Some(*port),
                },
                Endpoint::Host(authority) if by_address => match authority.host.ip() {
                    Some(ip) => Match::Address {
                        net: Cidr::from(ip),
                        port: Some(authority.port),
                    },
                    None => {
                        tracing::warn!(endpoint = %authority, "a vendor endpoint name cannot be captured by address; capture by port instead");
                        continue;
                    }
                },
                Endpoint::Net { port, .. } => Match::Port(*port),
                Endpoint::Host(authority) => Match::Port(authority.port),
            };
            if !matches.contains(&found) {
                matches.push(found);
            }
        }
        if matches.is_empty() {
            return Err(IptablesError::NothingToCapture);
        }
        Ok(Capture {
            redirect_to: listener.port(),
            matches,
            exclude_marks: config.transparent.outbound_mark.into_iter().collect(),
            ..Capture::default()
        })
    }

    /// The `iptables-restore --noflush` input for one family, or `None` when nothing of this
    /// capture concerns it.
    pub fn restore_input(&self, family: Family) -> Option<String> {
        let ours = |net: &Cidr| net.is_ipv4() == (family == Family::V4);
        let captures: Vec<&Match> = self
            .matches
            .iter()
            .filter(|m| match m {
                Match::Address { net, .. } => ours(net),
                Match::Port(_) | Match::All => true,
            })
            .collect();
        if captures.is_empty() {
            return None;
        }
        let mut out = format!("*nat\n:{CHAIN} - [0:0]\n-F {CHAIN}\n");
        // `writeln!` into a String cannot fail.
        let mut rule = |text: String| {
            let _ = writeln!(out, "-A {CHAIN} {text}");
        };
        for uid in &self.exclude_uids {
            rule(format!("-m owner --uid-owner {uid} -j RETURN"));
        }
        for mark in &self.exclude_marks {
            rule(format!("-m mark --mark {mark:#x} -j RETURN"));
        }
        let loopback = match family {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        };
        rule(format!("-d {loopback} -j RETURN"));
        for net in self.exclude_nets.iter().filter(|n| ours(n)) {
            rule(format!("-d {net} -j RETURN"));
        }
        for port in &self.exclude_ports {
            rule(format!("-p tcp --dport {port} -j RETURN"));
        }
        let to = self.redirect_to;
        for capture in captures {
            rule(match capture {
                Match::Address {
                    net,
                    port: Some(port),
                } => format!("-p tcp -d {net} --dport {port} -j REDIRECT --to-ports {to}"),
                Match::Address { net, port: None } => {
                    format!("-p tcp -d {net} -j REDIRECT --to-ports {to}")
                }
                Match::Port(port) => format!("-p tcp --dport {port} -j REDIRECT --to-ports {to}"),
                Match::All => format!("-p tcp -j REDIRECT --to-ports {to}"),
            });
        }
        out.push_str("COMMIT\n");
        Some(out)
    }
}

/// The iptables tools to drive: `iptables` (whatever the system's default backend is) or, for
/// nodes that still use it, `iptables-legacy`.
#[derive(Clone, Debug)]
pub struct Iptables {
    /// The IPv4 command; the others are derived (`ip6tables…`, `…-restore`).
    pub command: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Iptables {
            command: "iptables".into(),
        }
    }
}

/// What [`Iptables::install`] did per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The chain was written; the jump from `OUTPUT` was added (`true`) or already there.
    Rules { jump_added: bool },
    /// Nothing of the capture concerns this family.
    NotNeeded,
}

impl Iptables {
    /// `iptables` or `ip6tables` (or their `-legacy` variants).
    pub fn binary(&self, family: Family) -> String {
        match family {
            Family::V4 => self.command.clone(),
            Family::V6 => self.command.replacen("iptables", "ip6tables", 1),
        }
    }

    fn run(&self, family: Family, args: &[&str], stdin: Option<&str>) -> Result<(), IptablesError> {
        let (program, args): (String, Vec<&str>) = match stdin {
            Some(_) => (format!("{}-restore", self.binary(family)), args.to_vec()),
            None => (self.binary(family), args.to_vec()),
        };
        let shown = format!("{program} {}", args.join(" "));
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())
                .map_err(|source| IptablesError::Spawn {
                    command: shown.clone(),
                    source,
                })?;
        }
        let output = child
            .wait_with_output()
            .map_err(|source| IptablesError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(IptablesError::Failed {
                command: shown,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    const JUMP: [&'static str; 6] = ["-t", "nat", "OUTPUT", "-p", "tcp", "-j"];

    fn jump(&self, family: Family, action: &str) -> Result<(), IptablesError> {
        let [t, nat, chain, p, tcp, j] = Self::JUMP;
        let mut args = vec!["-w", t, nat, action, chain];
        if action == "-I" {
            args.push("1");
        }
        args.extend([p, tcp, j, CHAIN]);
        self.run(family, &args, None)
    }

    /// Installs `capture` for one family; see the module documentation.
    pub fn install(&self, capture: &Capture, family: Family) -> Result<Installed, IptablesError> {
        let Some(input) = capture.restore_input(family) else {
            return Ok(Installed::NotNeeded);
        };
        self.run(family, &["--noflush", "-w"], Some(&input))?;
        let jump_added = if self.jump(family, "-C").is_ok() {
            false
        } else {
            self.jump(family, "-I")?;
            true
        };
        Ok(Installed::Rules { jump_added })
    }

    /// Removes the jump and the chain of one family; removing what is not there succeeds.
    pub fn remove(&self, family: Family) -> Result<(), IptablesError> {
        while self.jump(family, "-C").is_ok() {
            self.jump(family, "-D")?;
        }
        // Absent already: nothing to do.
        if self
            .run(family, &["-w", "-t", "nat", "-F", CHAIN], None)
            .is_ok()
        {
            self.run(family, &["-w", "-t", "nat", "-X", CHAIN], None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn the_chain_returns_for_the_meter_and_exclusions_before_redirecting() {
        let capture = Capture {
            redirect_to: 15001,
            matches: vec![
                Match::Address {
                    net: cidr("203.0.113.0/24"),
                    port: Some(8000),
                },
                Match::Address {
                    net: cidr("2001:db8::/32"),
                    port: None,
                },
                Match::Port(22225),
            ],
            exclude_uids: vec![2102, 1337],
            exclude_marks: vec![0x539],
            exclude_nets: vec![cidr("10.96.0.0/12")],
            exclude_ports: vec![53],
        };
        assert_eq!(
            capture.restore_input(Family::V4).unwrap(),
            "*nat\n\
             :PROXY_TELEMETRY_OUTPUT - [0:0]\n\
             -F PROXY_TELEMETRY_OUTPUT\n\
             -A PROXY_TELEMETRY_OUTPUT -m owner --uid-owner 2102 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -m owner --uid-owner 1337 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -m mark --mark 0x539 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -d 127.0.0.0/8 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -d 10.96.0.0/12 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -p tcp --dport 53 -j RETURN\n\
             -A PROXY_TELEMETRY_OUTPUT -p tcp -d 203.0.113.0/24 --dport 8000 -j REDIRECT --to-ports 15001\n\
             -A PROXY_TELEMETRY_OUTPUT -p tcp --dport 22225 -j REDIRECT --to-ports 15001\n\
             COMMIT\n"
        );
        let v6 = capture.restore_input(Family::V6).unwrap();
        assert!(v6.contains("-d ::1/128 -j RETURN"));
        assert!(v6.contains("-p tcp -d 2001:db8::/32 -j REDIRECT --to-ports 15001"));
        assert!(!v6.contains("203.0.113.0"));
        assert!(!v6.contains("10.96.0.0"));
    }

    #[test]
    fn a_family_with_nothing_to_capture_gets_no_rules() {
        let capture = Capture {
            redirect_to: 15001,
            matches: vec![Match::Address {
                net: cidr("198.51.100.7"),
                port: Some(8000),
            }],
            ..Capture::default()
        };
        assert!(capture.restore_input(Family::V4).is_some());
        assert_eq!(capture.restore_input(Family::V6), None);
    }

    fn config(extra: &str) -> MeterConfig {
        let text = format!(
            "transparent:\n  listeners: [\"127.0.0.1:15001\"]\n  outbound_mark: 1337\nvendors:\n  - name: a\n    url: http://gate.vendor-a.example:8000\n    endpoints: [\"203.0.113.0/24:8000\", \"198.51.100.7:1080\"]\n  - name: b\n    url: http://10.1.2.3:22225\n{extra}"
        );
        pt_config::load_str(&text, &Default::default()).unwrap()
    }

    #[test]
    fn the_meter_configuration_captures_the_vendor_ports_by_default() {
        let capture = Capture::from_config(&config(""), false).unwrap();
        assert_eq!(capture.redirect_to, 15001);
        assert_eq!(capture.exclude_marks, [1337]);
        assert_eq!(
            capture.matches,
            [Match::Port(8000), Match::Port(1080), Match::Port(22225)]
        );
        let by_address = Capture::from_config(&config(""), true).unwrap();
        assert_eq!(
            by_address.matches,
            [
                Match::Address {
                    net: cidr("203.0.113.0/24"),
                    port: Some(8000)
                },
                Match::Address {
                    net: cidr("198.51.100.7/32"),
                    port: Some(1080)
                },
                Match::Address {
                    net: cidr("10.1.2.3/32"),
                    port: Some(22225)
                },
            ]
        );
    }

    #[test]
    fn a_configuration_without_a_transparent_listener_cannot_be_captured() {
        let config = pt_config::load_str(
            "vendors:\n  - name: a\n    url: http://p.example:8000\n",
            &Default::default(),
        )
        .unwrap();
        assert!(matches!(
            Capture::from_config(&config, false),
            Err(IptablesError::NoTransparentListener)
        ));
    }
}
