//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), as a transparent meter
//! observes it between a crawler and its vendor.
//!
//! Each function reads one message at the start of a buffer and returns it with its length, or
//! `Ok(None)` while it is incomplete. The messages are small and bounded by the protocol (at
//! most 513 bytes for the authentication message, 262 for a request), so the caller never buffers
//! more than that. The credentials in the authentication message are skipped, never returned:
//! they are the crawler's own vendor credentials and must not reach logs or labels.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::authority::{Authority, Host, parse_host};

pub const VERSION: u8 = 5;
/// Version byte of the username/password sub-negotiation (RFC 1929).
pub const AUTH_VERSION: u8 = 1;
/// Method number of username/password authentication.
pub const METHOD_USERNAME_PASSWORD: u8 = 2;

const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

/// A malformed message: the connection is then metered as opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed SOCKS5 message")]
pub struct Socks5Error;

/// `Ok(Some((value, length)))`, `Ok(None)` while incomplete, or the error.
pub type Parsed<T> = Result<Option<(T, usize)>, Socks5Error>;

/// What a request asks for (RFC 1928 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

/// A request: the command and its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// `None` when the destination is a name that is not a valid host, or the port is 0.
    pub target: Option<Authority>,
}

/// The client greeting: `VER NMETHODS METHODS…`. Returns the offered methods' count.
pub fn greeting(buf: &[u8]) -> Parsed<u8> {
    match buf {
        [] | [VERSION] => Ok(None),
        [VERSION, 0, ..] => Err(Socks5Error),
        [VERSION, n, rest @ ..] => {
            Ok((rest.len() >= usize::from(*n)).then_some((*n, 2 + usize::from(*n))))
        }
        _ => Err(Socks5Error),
    }
}

/// The server's method choice: `VER METHOD`.
pub fn method_choice(buf: &[u8]) -> Parsed<u8> {
    match buf {
        [] | [VERSION] => Ok(None),
        [VERSION, method, ..] => Ok(Some((*method, 2))),
        _ => Err(Socks5Error),
    }
}

/// The username/password message: `VER ULEN UNAME PLEN PASSWD`. Returns only its length.
pub fn credentials(buf: &[u8]) -> Parsed<()> {
    let Some((&version, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(Socks5Error);
    }
    let Some(&ulen) = rest.first() else {
        return Ok(None);
    };
    let plen_at = 2 + usize::from(ulen);
    let Some(&plen) = buf.get(plen_at) else {
        return Ok(None);
    };
    let len = plen_at + 1 + usize::from(plen);
    Ok((buf.len() >= len).then_some(((), len)))
}

/// The server's answer to the credentials: `VER STATUS`; true when accepted.
pub fn credentials_status(buf: &[u8]) -> Parsed<bool> {
    match buf {
        [] | [AUTH_VERSION] => Ok(None),
        [AUTH_VERSION, status, ..] => Ok(Some((*status == 0, 2))),
        _ => Err(Socks5Error),
    }
}

/// A request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
pub fn request(buf: &[u8]) -> Parsed<Request> {
    let Some(command) = head(buf)? else {
        return Ok(None);
    };
    let command = match command {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        _ => return Err(Socks5Error),
    };
    Ok(address(&buf[3..])?.map(|(target, len)| (Request { command, target }, 3 + len)))
}

/// The server's reply: `VER REP RSV ATYP BND.ADDR BND.PORT`. Returns the reply code (0: success).
pub fn reply(buf: &[u8]) -> Parsed<u8> {
    let Some(code) = head(buf)? else {
        return Ok(None);
    };
    Ok(address(&buf[3..])?.map(|(_, len)| (code, 3 + len)))
}

/// `VER X RSV`, the head of requests (X: the command) and replies (X: the reply code): X once
/// the three bytes are in; a wrong version is an error as soon as its byte is.
fn head(buf: &[u8]) -> Result<Option<u8>, Socks5Error> {
    match buf {
        [VERSION, x, _, ..] => Ok(Some(*x)),
        [] | [VERSION] | [VERSION, _] => Ok(None),
        _ => Err(Socks5Error),
    }
}

/// `ATYP ADDR PORT`; the authority, or `None` for an invalid name or port 0.
fn address(buf: &[u8]) -> Parsed<Option<Authority>> {
    let Some((&atyp, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let (host, addr_len) = match atyp {
        ATYP_V4 => match rest.first_chunk::<4>() {
            Some(octets) => (Some(Host::V4(Ipv4Addr::from(*octets))), 4),
            None => return Ok(None),
        },
        ATYP_V6 => match rest.first_chunk::<16>() {
            Some(octets) => (Some(Host::V6(Ipv6Addr::from(*octets))), 16),
            None => return Ok(None),
        },
        ATYP_NAME => {
            let Some((&n, name)) = rest.split_first() else {
                return Ok(None);
            };
            let n = usize::from(n);
            let Some(name) = name.get(..n) else {
                return Ok(None);
            };
            let host = std::str::from_utf8(name)
                .ok()
                .and_then(|s| parse_host(s).ok());
            (host, 1 + n)
        }
        _ => return Err(Socks5Error),
    };
    let Some(&[hi, lo]) = rest.get(addr_len..).and_then(|r| r.first_chunk::<2>()) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([hi, lo]);
    let target = host
        .filter(|_| port != 0)
        .map(|host| Authority { host, port });
    Ok(Some((target, 1 + addr_len + 2)))
}

/// The HTTP status a SOCKS5 outcome corresponds to, for the `status_class` label: success is
/// 200; refusals by rule, unsupported commands and rejected credentials are the client's
/// problem (403, 405, 407); unreachable networks, hosts and refused connections are the
/// vendor's (502), as for an HTTP proxy.
pub fn reply_status(code: u8) -> u16 {
    match code {
        0 => 200,
        2 => 403,
        7 | 8 => 405,
        _ => 502,
    }
}

/// The status of a refused authentication (the vendor then closes the connection).
pub const AUTH_REFUSED_STATUS: u16 = 407;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_handshake_parses_message_by_message() {
        assert_eq!(greeting(&[5, 2, 0, 2, 0xAA]), Ok(Some((2, 4))));
        assert_eq!(greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(method_choice(&[5, 2]), Ok(Some((2, 2))));
        let auth = [1, 3, b'b', b'o', b'b', 2, b'p', b'w'];
        assert_eq!(credentials(&auth), Ok(Some(((), 8))));
        assert_eq!(credentials(&auth[..7]), Ok(None));
        assert_eq!(credentials_status(&[1, 0]), Ok(Some((true, 2))));
        assert_eq!(credentials_status(&[1, 1]), Ok(Some((false, 2))));

        let mut connect = vec![5, 1, 0, 3, 11];
        connect.extend_from_slice(b"Shop-A.test");
        connect.extend_from_slice(&443u16.to_be_bytes());
        let parsed = request(&connect).unwrap().unwrap();
        assert_eq!(parsed.1, connect.len());
        assert_eq!(parsed.0.command, Command::Connect);
        assert_eq!(parsed.0.target.unwrap().to_string(), "shop-a.test:443");
        for cut in 0..connect.len() {
            assert_eq!(request(&connect[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            reply(&[5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90]),
            Ok(Some((0, 10)))
        );
    }

    #[test]
    fn addresses_of_every_type_parse() {
        let v4 = request(&[5, 1, 0, 1, 93, 184, 216, 34, 0, 80])
            .unwrap()
            .unwrap();
        assert_eq!(v4.0.target.unwrap().to_string(), "93.184.216.34:80");
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[1, 187]);
        let v6 = request(&v6).unwrap().unwrap();
        assert_eq!(v6.0.target.unwrap().to_string(), "[2001:db8::1]:443");
        let bad_name = request(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80])
            .unwrap()
            .unwrap();
        assert_eq!((bad_name.0.target, bad_name.1), (None, 10));
        let port_zero = request(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 0]).unwrap().unwrap();
        assert_eq!(port_zero.0.target, None);
    }

    #[test]
    fn other_protocols_are_not_socks5() {
        assert_eq!(greeting(b"GET / HTTP/1.1"), Err(Socks5Error));
        assert_eq!(greeting(&[5, 0]), Err(Socks5Error));
        assert_eq!(request(&[4, 1, 0]), Err(Socks5Error));
        assert_eq!(request(&[5, 9, 0, 1]), Err(Socks5Error));
        assert_eq!(request(&[5, 1, 0, 7]), Err(Socks5Error));
        assert_eq!(credentials(&[5, 1]), Err(Socks5Error));
    }

    #[test]
    fn reply_codes_map_to_http_status_classes() {
        assert_eq!(reply_status(0), 200);
        assert_eq!(reply_status(2), 403);
        assert_eq!(reply_status(5), 502);
        assert_eq!(reply_status(7), 405);
    }
}
