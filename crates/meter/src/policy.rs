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
    /// Local addresses clients reached the meter at: a listener bound to `0.0.0.0` answers at
    /// each of the host's addresses, and these are the ones in use. A host has few.
    seen: RwLock<HashSet<IpAddr>>,
}

/// Most local addresses remembered: more than any host has interfaces.
const MAX_SEEN_ADDRESSES: usize = 256;

impl OwnAddresses {
    pub fn new(bound: Vec<SocketAddr>) -> OwnAddresses {
        OwnAddresses {
            bound,
            seen: RwLock::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use pt_sniff::authority::parse_host;

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
