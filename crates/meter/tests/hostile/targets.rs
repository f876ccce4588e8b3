//! Where the meter may send traffic: private, link-local, metadata and other non-public
//! addresses in every spelling (refused before any dial, 403), the meter's own sockets (403
//! `loop`, whatever the allow-list says), and targets that are not strictly a host and a port
//! (400).

use super::harness::{Case, Expect};

const CLASS: &str = "targets";
const NOT_ALLOWED: Expect = Expect::Refused(403, "destination_not_allowed");
const MALFORMED: Expect = Expect::Refused(400, "bad_request");

/// Spellings of addresses a proxy must not reach: loopback in every IPv4 number form and
/// IPv6 embedding, RFC 1918, CGNAT, link-local and the cloud metadata addresses, unspecified,
/// multicast, broadcast and reserved space.
pub const REFUSED_HOSTS: [&str; 30] = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f.1",
    "0x7F000001",
    "0177.0.0.1",
    "017700000001",
    "127.255.255.254",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "169.254.169.254",
    "0xa9fea9fe",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "0",
    "[::]",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
];

fn get(target: &str) -> Vec<u8> {
    format!("GET http://{target}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

fn connect(target: &str) -> Vec<u8> {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes()
}

/// Every refused address as absolute-form and as CONNECT.
pub fn private_addresses() -> Vec<Case> {
    let mut cases = Vec::new();
    for host in REFUSED_HOSTS {
        cases.push(Case::new(
            CLASS,
            format!("GET {host}"),
            get(host),
            NOT_ALLOWED,
        ));
        cases.push(Case::new(
            CLASS,
            format!("CONNECT {host}:443"),
            connect(&format!("{host}:443")),
            NOT_ALLOWED,
        ));
    }
    cases
}

/// The meter's own listener and admin endpoint (both bound to 127.0.0.1), however spelled,
/// with `127.0.0.0/8` allowed.
pub fn own_sockets(listener: u16, admin: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0.0.0.0",
        "0",
        "[::ffff:127.0.0.1]",
    ] {
        for port in [listener, admin] {
            let target = format!("{host}:{port}");
            cases.push(Case::new(
                CLASS,
                format!("GET own {target}"),
                get(&target),
                Expect::Refused(403, "loop"),
            ));
            cases.push(Case::new(
                CLASS,
                format!("CONNECT own {target}"),
                connect(&target),
                Expect::Refused(403, "loop"),
            ));
        }
    }
    cases
}

/// Targets that are not strictly a host and a port.
pub fn malformed() -> Vec<Case> {
    let mut cases = Vec::new();
    for port in [
        "99999", "+80", "65536", "8x", "-1", "1e3", "0x50", "0", "", "80x", "٨٠",
    ] {
        let target = format!("shop-a.test:{port}");
        cases.push(Case::new(
            CLASS,
            format!("GET port {port:?}"),
            get(&target),
            MALFORMED,
        ));
        cases.push(Case::new(
            CLASS,
            format!("CONNECT port {port:?}"),
            connect(&target),
            MALFORMED,
        ));
    }
    for (name, bytes) in [
        (
            "CONNECT absolute-form",
            "CONNECT http://shop-a.test:443/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "CONNECT with userinfo",
            "CONNECT u:p@shop-a.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "CONNECT without port",
            "CONNECT shop-a.test HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "CONNECT injection",
            "CONNECT shop-a.test:443%0d%0aX:%20y HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "CONNECT zone id",
            "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "origin-form",
            "GET / HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "asterisk-form",
            "OPTIONS * HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "https absolute-form",
            "GET https://shop-a.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "ftp scheme",
            "GET ftp://shop-a.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo",
            "GET http://u:p@shop-a.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "fragment",
            "GET http://shop-a.test/#f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "percent in host",
            "GET http://shop%2da.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "empty host",
            "GET http:/// HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "bad IPv4 number",
            "GET http://256.0.0.1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "host label too long",
            &format!(
                "GET http://{}.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(64)
            ),
        ),
    ] {
        cases.push(Case::new(CLASS, name, bytes.as_bytes(), MALFORMED));
    }
    cases
}
