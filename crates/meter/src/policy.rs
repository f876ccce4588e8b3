//! Where the meter may send traffic: allowed ports and refused address classes.
//!
//! Security fails closed: a CONNECT to a port outside `security.connect_ports`, an absolute-form
//! request outside `security.http_ports`, or a destination address that is not public (loopback,
//! RFC 1918, link-local and the metadata address, CGNAT, unspecified, multicast, reserved, and
//! IPv6 forms embedding them) is refused with 403 before anything is dialled, unless the address
//! lies in `security.allowed_private_destinations`. IP literals are checked for every vendor kind;
//! `direct` vendors also check the address a name resolved to and dial exactly that address, so
//! DNS rebinding cannot slip a private address in between check and use.
//!
//! The meter never proxies to itself, whatever the allow-list says ([`OwnAddresses`]): a request
//! to one of its own listeners or its admin endpoint is refused as a `loop` (403), which keeps a
//! permissive allow-list (`127.0.0.0/8` for a local test) from exposing `/metrics` through the
//! proxy or chaining the meter through itself.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

use pt_config::{PortSet, SecurityConfig};
use pt_metrics::labels::RejectReason;
use pt_sniff::Host;
use pt_sniff::net::{AddressClass, classify};

use crate::failure::Failure;

/// Refuses ports outside `allowed`.
pub fn check_port(allowed: &PortSet, port: u16) -> Result<(), Failure> {
    if allowed.contains(port) {
        Ok(())
    } else {
        Err(Failure::Rejected(RejectReason::PortNotAllowed))
    }
}

/// Refuses non-public addresses unless allow-listed.
pub fn check_address(security: &SecurityConfig, ip: IpAddr) -> Result<(), Failure> {
    if classify(ip) == AddressClass::Public
        || security
            .allowed_private_destinations
            .iter()
            .any(|net| net.contains(ip))
    {
        Ok(())
    } else {
        Err(Failure::Rejected(RejectReason::DestinationNotAllowed))
    }
}

/// Checks a host as the client wrote it: IP literals by address; names pass (they are checked
/// after resolution when the meter resolves them itself).
pub fn check_host(security: &SecurityConfig, host: &Host) -> Result<(), Failure> {
    match host.ip() {
        Some(ip) => check_address(security, ip),
        None => Ok(()),
    }
}

/// The meter's own listening sockets, to refuse requests addressed to them.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    /// Every bound listener and the admin endpoint.
    bound: Vec<SocketAddr>,
    /// The host's addresses: a listener bound to `0.0.0.0` answers at each of them. Those the
    /// kernel listed at start, and the local addresses clients reached the meter at since. A
    /// host has few.
    seen: RwLock<HashSet<IpAddr>>,
}

/// Most local addresses remembered: more than any host has interfaces.
const MAX_SEEN_ADDRESSES: usize = 256;

impl OwnAddresses {
    pub fn new(bound: Vec<SocketAddr>) -> OwnAddresses {
        let wildcard = bound.iter().any(|own| own.ip().is_unspecified());
        let listed = if wildcard {
            local_addresses()
        } else {
            Vec::new()
        };
        OwnAddresses {
            bound,
            seen: RwLock::new(listed.into_iter().take(MAX_SEEN_ADDRESSES).collect()),
        }
    }

    /// Remembers the local address of an accepted connection.
    pub fn saw_local(&self, local: IpAddr) {
        let known = self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&local);
        if !known {
            let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
            if seen.len() < MAX_SEEN_ADDRESSES {
                seen.insert(local);
            }
        }
    }

    /// Whether `to` reaches one of the meter's own sockets.
    pub fn contains(&self, to: SocketAddr) -> bool {
        let ip = to.ip().to_canonical();
        self.bound.iter().any(|own| {
            own.port() == to.port()
                && (own.ip().to_canonical() == ip
                    || (own.ip().is_unspecified()
                        && (ip.is_loopback()
                            || ip.is_unspecified()
                            || self
                                .seen
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .contains(&ip)))
                    || (own.ip().is_loopback() && ip.is_unspecified()))
        })
    }

    /// Refuses `to` if it is the meter's own.
    pub fn check(&self, to: SocketAddr) -> Result<(), Failure> {
        if self.contains(to) {
            Err(Failure::Rejected(RejectReason::Loop))
        } else {
            Ok(())
        }
    }
}

/// The host's own addresses as the kernel lists them (`/proc/net/fib_trie`, `/proc/net/if_inet6`),
/// so that a wildcard listener's addresses are known before any client reached it there (a
/// sidecar whose proxy listener is on loopback and whose admin endpoint is on `0.0.0.0` would
/// otherwise dial its own pod IP). Best effort: what cannot be read is left to [`saw_local`].
///
/// [`saw_local`]: OwnAddresses::saw_local
fn local_addresses() -> Vec<IpAddr> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let mut addresses = local_ipv4(&read("/proc/net/fib_trie"));
    addresses.extend(local_ipv6(&read("/proc/net/if_inet6")));
    addresses
}

/// The `/32 host LOCAL` entries of a `fib_trie` listing: an address line, then its kind.
fn local_ipv4(fib_trie: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut last = None;
    for line in fib_trie.lines() {
        let entry = line.trim_start_matches([' ', '|', '+', '-']);
        if let Ok(ip) = entry.parse::<std::net::Ipv4Addr>() {
            last = Some(IpAddr::V4(ip));
        } else if line.trim() == "/32 host LOCAL"
            && let Some(ip) = last
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    addresses
}

/// The addresses of an `if_inet6` listing: 32 hex digits first on each line.
fn local_ipv6(if_inet6: &str) -> Vec<IpAddr> {
    if_inet6
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(|bits| IpAddr::V6(std::net::Ipv6Addr::from(bits)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pt_sniff::authority::parse_host;

    #[test]
    fn the_hosts_addresses_are_read_from_the_kernels_listings() {
        let fib_trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 10.1.0.0/16 2 0 2\n           |-- 10.1.0.0\n              /16 link UNICAST\n           |-- 10.1.2.3\n              /32 host LOCAL\nLocal:\n           |-- 10.1.2.3\n              /32 host LOCAL\n";
        assert_eq!(
            local_ipv4(fib_trie),
            ["127.0.0.1", "10.1.2.3"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let if_inet6 = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\nfd000000000000000000000000000002 04 40 00 82     eth0\n";
        assert_eq!(
            local_ipv6(if_inet6),
            ["fe80::fc:ff:fe00:1", "fd00::2"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert!(local_ipv4("").is_empty() && local_ipv6("garbage\n").is_empty());
    }

    #[test]
    fn a_wildcard_listener_knows_the_hosts_addresses_before_any_client_came() {
        let own = OwnAddresses::new(vec!["0.0.0.0:9464".parse().unwrap()]);
        for address in local_addresses() {
            assert!(own.contains(SocketAddr::new(address, 9464)), "{address}");
        }
        assert!(
            !local_addresses().is_empty(),
            "this host lists loopback at least"
        );
    }

    fn security(allowed: &[&str]) -> SecurityConfig {
        SecurityConfig {
            connect_ports: PortSet(vec![443..=443]),
            http_ports: PortSet(vec![80..=80]),
            allowed_private_destinations: allowed.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_catalogue_of_ssrf_targets_is_refused() {
        let s = security(&[]);
        for host in [
            "127.0.0.1",
            "[::1]",
            "169.254.169.254",
            "[fd00:ec2::254]",
            "10.1.2.3",
            "192.168.0.1",
            "100.64.1.1",
            "0.0.0.0",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0x7f.1",
        ] {
            let parsed = parse_host(host).unwrap();
            assert_eq!(
                check_host(&s, &parsed),
                Err(Failure::Rejected(RejectReason::DestinationNotAllowed)),
                "{host}"
            );
        }
        assert_eq!(
            check_host(&s, &parse_host("93.184.216.34").unwrap()),
            Ok(())
        );
        assert_eq!(check_host(&s, &parse_host("example.com").unwrap()), Ok(()));
    }

    #[test]
    fn the_allow_list_opens_exactly_its_blocks() {
        let s = security(&["127.0.0.0/8"]);
        assert_eq!(check_address(&s, "127.0.0.1".parse().unwrap()), Ok(()));
        assert!(check_address(&s, "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_meters_own_sockets_are_refused_however_addressed() {
        let own = OwnAddresses::new(vec![
            "0.0.0.0:3128".parse().unwrap(),
            "127.0.0.1:9464".parse().unwrap(),
        ]);
        own.saw_local("10.1.2.3".parse().unwrap());
        for to in [
            "127.0.0.1:3128",
            "127.9.9.9:3128",
            "0.0.0.0:3128",
            "[::ffff:127.0.0.1]:3128",
            "10.1.2.3:3128",
            "127.0.0.1:9464",
            "0.0.0.0:9464",
        ] {
            assert!(own.contains(to.parse().unwrap()), "{to}");
        }
        for to in ["10.9.9.9:3128", "127.0.0.1:8080", "127.0.0.2:9464"] {
            assert!(!own.contains(to.parse().unwrap()), "{to}");
        }
    }

    #[test]
    fn ports_outside_the_set_are_refused() {
        let s = security(&[]);
        assert_eq!(check_port(&s.connect_ports, 443), Ok(()));
        assert_eq!(
            check_port(&s.connect_ports, 22),
            Err(Failure::Rejected(RejectReason::PortNotAllowed))
        );
    }
}
