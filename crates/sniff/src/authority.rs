//! CONNECT authorities (`host:port`) and URI hosts, parsed strictly.
//!
//! The grammar accepted is deliberately narrower than RFC 3986's `reg-name`: letters, digits,
//! `-`, `_` and `.` in labels of at most 63 bytes, 253 bytes in all, or a bracketed IPv6 literal.
//! Anything else (userinfo, percent-encoding, spaces, CR/LF, zone identifiers) is refused, so a
//! value that passes can be written into a request line or a header without escaping.
//!
//! Hosts that end in a numeric label are parsed as IPv4 the way browsers and curl do (WHATWG URL
//! "IPv4 parser"): `2130706433`, `0x7f.1` and `0177.0.0.1` are all 127.0.0.1. Classifying them as
//! names would let them past an address policy while the vendor (or libc) dials loopback.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name accepted: the DNS limit for a name in presentation form (RFC 1035 §2.3.4).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Longest authority accepted: a maximal bracketed IPv6 literal or host name plus `:65535`.
pub const MAX_AUTHORITY_LEN: usize = MAX_HOST_LEN + 1 + 5;

/// A destination host: a lower-cased DNS name without trailing dot, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(Box<str>),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// The IP address when the host is a literal.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::V4(a) => Some((*a).into()),
            Host::V6(a) => Some((*a).into()),
        }
    }

    /// The DNS name when the host is not a literal.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Host {
    /// Formats the host as it appears in an authority (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => f.write_str(Dotted::new(*a).as_str()),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// An IPv4 address in dotted decimal, written digit by digit. `Ipv4Addr`'s `Display` runs the
/// formatting machinery once per octet (about 1,200 instructions an address), and the meter
/// writes an address for every request to an IP literal and every access-log line.
#[derive(Clone, Copy, Debug)]
pub struct Dotted {
    /// `255.255.255.255` is 15 bytes.
    text: [u8; 15],
    len: usize,
}

impl Dotted {
    pub fn new(address: Ipv4Addr) -> Dotted {
        let mut dotted = Dotted {
            text: [0; 15],
            len: 0,
        };
        for (i, octet) in address.octets().into_iter().enumerate() {
            if i > 0 {
                dotted.push(b'.');
            }
            if octet >= 100 {
                dotted.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                dotted.push(b'0' + octet / 10 % 10);
            }
            dotted.push(b'0' + octet % 10);
        }
        dotted
    }

    fn push(&mut self, byte: u8) {
        self.text[self.len] = byte;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        // Digits and dots only: always ASCII.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

/// A `host:port` pair with a non-zero port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why an authority or host was refused. The messages never echo the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("empty host")]
    Empty,
    #[error("authority or host is longer than {MAX_AUTHORITY_LEN} bytes")]
    TooLong,
    #[error("a port is required")]
    MissingPort,
    #[error("port must be a decimal number from 1 to 65535")]
    BadPort,
    #[error("host contains characters outside letters, digits, '-', '_' and '.'")]
    BadCharacter,
    #[error("host has an empty label or a label longer than 63 bytes")]
    BadLabel,
    #[error("host ends in a number but is not a valid IPv4 address")]
    BadIpv4,
    #[error("malformed IPv6 literal")]
    BadIpv6,
}

/// Parses a CONNECT request target (RFC 9110 §9.3.6: `authority-form`, port required).
pub fn parse_authority(input: &str) -> Result<Authority, AuthorityError> {
    if input.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if input.len() > MAX_AUTHORITY_LEN {
        return Err(AuthorityError::TooLong);
    }
    let (host, port) = if input.starts_with('[') {
        let close = input.find(']').ok_or(AuthorityError::BadIpv6)?;
        let rest = &input[close + 1..];
        let port = rest.strip_prefix(':').ok_or(AuthorityError::MissingPort)?;
        (&input[..=close], port)
    } else {
        let colon = input.rfind(':').ok_or(AuthorityError::MissingPort)?;
        (&input[..colon], &input[colon + 1..])
    };
    Ok(Authority {
        host: parse_host(host)?,
        port: parse_port(port)?,
    })
}

/// Parses a decimal port from 1 to 65535 (no sign, no spaces, at most five digits).
pub fn parse_port(input: &str) -> Result<u16, AuthorityError> {
    if input.is_empty() || input.len() > 5 || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    match input.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::BadPort),
        Ok(p) => Ok(p),
    }
}

/// Parses a host as found in a URI, a `Host` header, a CONNECT target or an SNI extension.
///
/// Bracketed input must be an IPv6 literal. A single trailing dot is dropped and names are
/// lower-cased, so `Example.COM.` and `example.com` are the same host.
pub fn parse_host(input: &str) -> Result<Host, AuthorityError> {
    if input.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if input.len() > MAX_AUTHORITY_LEN {
        return Err(AuthorityError::TooLong);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(AuthorityError::BadIpv6)?;
        // Zone identifiers (`%eth0`) and anything else `Ipv6Addr` rejects are refused.
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::V6)
            .map_err(|_| AuthorityError::BadIpv6);
    }
    let name = input.strip_suffix('.').unwrap_or(input);
    if name.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(AuthorityError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthorityError::BadCharacter);
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > MAX_LABEL_LEN)
    {
        return Err(AuthorityError::BadLabel);
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if ends_in_number(last) {
        return parse_ipv4_number_forms(name).map(Host::V4);
    }
    Ok(Host::Name(name.to_ascii_lowercase().into_boxed_str()))
}

/// WHATWG "ends in a number checker": the last label is all digits or a `0x` hex number.
fn ends_in_number(label: &str) -> bool {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// WHATWG IPv4 parser: one to four parts, each decimal, octal (leading `0`) or hex (`0x`);
/// the last part fills all remaining bytes.
fn parse_ipv4_number_forms(name: &str) -> Result<Ipv4Addr, AuthorityError> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 4 {
        return Err(AuthorityError::BadIpv4);
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(parse_ipv4_part(part).ok_or(AuthorityError::BadIpv4)?);
    }
    let (last, leading) = numbers.split_last().ok_or(AuthorityError::BadIpv4)?;
    if leading.iter().any(|&n| n > 255) {
        return Err(AuthorityError::BadIpv4);
    }
    let remaining_bytes = 4 - leading.len() as u32;
    if *last >= 1u64 << (8 * remaining_bytes) {
        return Err(AuthorityError::BadIpv4);
    }
    let mut value = *last;
    for (i, &n) in leading.iter().enumerate() {
        value += n << (8 * (3 - i as u32));
    }
    u32::try_from(value)
        .map(Ipv4Addr::from)
        .map_err(|_| AuthorityError::BadIpv4)
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    // Ten digits (or eight hex / eleven octal) cover 2^32; more would overflow u64 eventually,
    // so any longer part is rejected before parsing.
    const MAX_PART_LEN: usize = 12;
    if part.is_empty() || part.len() > MAX_PART_LEN {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is zero in the WHATWG parser.
        return Some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Host {
        Host::V4(s.parse().expect("test literal"))
    }

    #[test]
    fn dotted_addresses_have_no_leading_zeros() {
        for text in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.3.199"] {
            let address: Ipv4Addr = text.parse().expect("test literal");
            assert_eq!(Dotted::new(address).as_str(), text);
        }
    }

    #[test]
    fn names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(
            parse_host("Shop.Example.COM.").unwrap(),
            Host::Name("shop.example.com".into())
        );
        assert_eq!(parse_host("a..b"), Err(AuthorityError::BadLabel));
        assert_eq!(parse_host("."), Err(AuthorityError::Empty));
    }

    #[test]
    fn numeric_hosts_are_the_addresses_browsers_dial() {
        for spelled in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "0x7F000001",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
        ] {
            assert_eq!(parse_host(spelled).unwrap(), v4("127.0.0.1"), "{spelled}");
        }
        assert_eq!(
            parse_host("169.254.169.254").unwrap(),
            v4("169.254.169.254")
        );
        assert_eq!(parse_host("256.0.0.1"), Err(AuthorityError::BadIpv4));
        assert_eq!(parse_host("1.2.3.4.5"), Err(AuthorityError::BadIpv4));
        assert_eq!(parse_host("4294967296"), Err(AuthorityError::BadIpv4));
        assert_eq!(parse_host("09.1.1.1"), Err(AuthorityError::BadIpv4));
        // A name whose last label is not numeric stays a name.
        assert_eq!(
            parse_host("1.2.3.example").unwrap(),
            Host::Name("1.2.3.example".into())
        );
    }

    #[test]
    fn ipv6_literals_need_brackets_and_no_zone() {
        assert_eq!(
            parse_authority("[::1]:443").unwrap(),
            Authority {
                host: Host::V6(Ipv6Addr::LOCALHOST),
                port: 443
            }
        );
        assert_eq!(
            parse_authority("[fe80::1%eth0]:443"),
            Err(AuthorityError::BadIpv6)
        );
        assert_eq!(
            parse_authority("::1:443"),
            Err(AuthorityError::BadCharacter)
        );
        assert_eq!(parse_authority("[::1]"), Err(AuthorityError::MissingPort));
    }

    #[test]
    fn authorities_refuse_injection_and_odd_ports() {
        assert_eq!(
            parse_authority("example.com:443").unwrap().to_string(),
            "example.com:443"
        );
        for bad in [
            "example.com:443\r\nX: y",
            "user@example.com:443",
            "example.com:+443",
            "example.com:0",
            "example.com:65536",
            "example.com:",
            "example.com",
            "exa mple.com:443",
            "%65xample.com:443",
            "",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn over_long_names_are_refused() {
        let label = "a".repeat(64);
        assert_eq!(
            parse_host(&format!("{label}.com")),
            Err(AuthorityError::BadLabel)
        );
        let long = ["abcdefghi"; 30].join(".");
        assert_eq!(parse_host(&long), Err(AuthorityError::TooLong));
    }

    proptest::proptest! {
        #[test]
        fn a_dotted_address_reads_as_the_standard_library_writes_it(bits: u32) {
            let address = Ipv4Addr::from(bits);
            let dotted = Dotted::new(address);
            proptest::prop_assert_eq!(dotted.as_str(), address.to_string());
        }

        #[test]
        fn parsing_never_panics_and_round_trips(input in "\\PC{0,300}") {
            if let Ok(authority) = parse_authority(&input) {
                let again = parse_authority(&authority.to_string()).expect("display re-parses");
                proptest::prop_assert_eq!(again, authority);
            }
        }
    }
}
