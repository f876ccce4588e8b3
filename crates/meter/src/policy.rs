//! Where the meter may send traffic: allowed ports and refused address classes.
//!
//! Security fails closed: a CONNECT to a port outside `security.connect_ports`, an absolute-form
//! request outside `security.http_ports`, or a destination address that is not public (loopback,
//! RFC 1918, link-local and the metadata address, CGNAT, unspecified, multicast, reserved, and
//! IPv6 forms embedding them) is refused with 403 before anything is dialled, unless the address
//! lies in `security.allowed_private_destinations`. IP literals are checked for every vendor kind;
//! `direct` vendors also check the address a name resolved to and dial exactly that address, so
//! DNS rebinding cannot slip a private address in between check and use.

use std::net::IpAddr;

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
    fn ports_outside_the_set_are_refused() {
        let s = security(&[]);
        assert_eq!(check_port(&s.connect_ports, 443), Ok(()));
        assert_eq!(
            check_port(&s.connect_ports, 22),
            Err(Failure::Rejected(RejectReason::PortNotAllowed))
        );
    }
}
