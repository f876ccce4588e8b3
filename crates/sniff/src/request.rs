//! HTTP/1.1 forward-proxy request heads, parsed strictly: the requests the meter answers itself.
//!
//! The meter sits in front of vendor connections that many pods share. A request whose framing
//! two parsers could read differently (RFC 9112 §6.3, §11.2) is how one client's bytes end up in
//! another client's request, so everything that is not plainly one message is refused with 400
//! before a byte is forwarded, as Squid and HAProxy do: bare LF or bare CR line ends,
//! `Content-Length` together with `Transfer-Encoding`, a transfer coding other than exactly
//! `chunked`, repeated or listed `Content-Length`, a header name that differs from a framing or
//! hop-by-hop name only by `_` (a vendor that maps `_` to `-` would read a different message),
//! control bytes in values, two `Host` fields. Targets are strict too: absolute-form `http://`
//! (any other form is not a forward-proxy request), a port from 1 to 65535 written as plain
//! digits, no userinfo, no fragment; CONNECT takes authority-form only.
//!
//! [`parse_request`] returns `Ok(None)` while the head is incomplete and within limits; a complete
//! head comes back as a [`RequestHead`] of byte ranges into the caller's buffer, so the meter
//! rewrites it without copying field by field.

use std::ops::Range;

use crate::authority::{Authority, AuthorityError, parse_host, parse_port};
use crate::http1::{Framing, names_framing};

/// Limits of a request head, from the meter's configuration.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// The request line and the header fields, including the blank line.
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Why a request head was refused. Each has one status (see [`RequestError::status`]); none
/// carries request bytes, so a message built from it never echoes client input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request line is longer than the head limit")]
    LineTooLong,
    #[error("the request head is larger than the limit")]
    HeadTooLarge,
    #[error("the request has more header fields than the limit")]
    TooManyHeaders,
    #[error("a line ends in a bare LF or contains a bare CR")]
    BareLineEnd,
    #[error("the request line or a header field is malformed")]
    Malformed,
    #[error("only HTTP/1.0 and HTTP/1.1 are served on this port")]
    Version,
    #[error("a header field value contains a control byte")]
    ControlByte,
    #[error("a header name differs from a framing or hop-by-hop header only by '_'")]
    LookalikeHeaderName,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndCoding,
    #[error("Content-Length is not one plain decimal number")]
    BadContentLength,
    #[error("Transfer-Encoding is not exactly one 'chunked'")]
    BadTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    CodingInHttp10,
    #[error("an HTTP/1.1 request needs exactly one Host field")]
    Host,
    #[error("Connection names Content-Length or Transfer-Encoding")]
    ConnectionNamesFraming,
    #[error("the request target is not absolute-form http:// (or authority-form for CONNECT)")]
    TargetForm,
    #[error("the request target has userinfo or a fragment")]
    TargetPart,
    #[error("the target's host or port is malformed: {0}")]
    TargetAuthority(AuthorityError),
    #[error("only 100-continue can be expected")]
    Expectation,
}

impl RequestError {
    /// The status answered (RFC 9110 §15.5, RFC 6585 §5).
    pub fn status(self) -> u16 {
        match self {
            RequestError::LineTooLong => 414,
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::Version => 505,
            RequestError::Expectation => 417,
            _ => 400,
        }
    }
}

/// HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The header fields the meter acts on; everything else is [`FieldKind::Other`] and forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    ProxyConnection,
    KeepAlive,
    Te,
    Trailer,
    Upgrade,
    ProxyAuthorization,
    Expect,
    Other,
}

/// Names of the fields with a kind, lower case. A name equal to one of these once `_` is
/// read as `-` is refused unless it is the name itself.
const KINDS: [(&str, FieldKind); 11] = [
    ("content-length", FieldKind::ContentLength),
    ("transfer-encoding", FieldKind::TransferEncoding),
    ("host", FieldKind::Host),
    ("connection", FieldKind::Connection),
    ("proxy-connection", FieldKind::ProxyConnection),
    ("keep-alive", FieldKind::KeepAlive),
    ("te", FieldKind::Te),
    ("trailer", FieldKind::Trailer),
    ("upgrade", FieldKind::Upgrade),
    ("proxy-authorization", FieldKind::ProxyAuthorization),
    ("expect", FieldKind::Expect),
];

/// The kind of a field name; a name that equals a known one once `_` is read as `-` is refused
/// (a hop that maps `_` to `-` would read framing or credentials the meter did not).
pub fn kind_of(name: &[u8]) -> Result<FieldKind, RequestError> {
    for (known, kind) in KINDS {
        if name.len() != known.len() {
            continue;
        }
        if name.eq_ignore_ascii_case(known.as_bytes()) {
            return Ok(kind);
        }
        let lookalike = name
            .iter()
            .zip(known.bytes())
            .all(|(&a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'));
        if lookalike {
            return Err(RequestError::LookalikeHeaderName);
        }
    }
    Ok(FieldKind::Other)
}

/// One header field: byte ranges into the buffer the head was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: FieldKind,
}

/// What the request asks the proxy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestTarget {
    /// `METHOD http://authority/path`.
    Absolute {
        authority: Authority,
        /// Whether the port was written (a default port stays implicit when forwarded).
        explicit_port: bool,
        /// The path and query (never empty: `/` when the target had none).
        path: PathRange,
    },
    /// `CONNECT host:port`.
    Connect(Authority),
}

/// The path and query of an absolute target, as a range into the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRange {
    /// No path: forwarded as `/`.
    Root,
    /// A path starting with `/`.
    In(Range<usize>),
    /// A query without a path (`http://h?q`): forwarded as `/` and then this `?q`.
    Query(Range<usize>),
}

/// A complete, valid request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub target: RequestTarget,
    /// The request target exactly as sent (for logs, redacted by the caller).
    pub raw_target: Range<usize>,
    pub version: Version,
    pub fields: Vec<Field>,
    /// [`Framing::Empty`], [`Framing::Length`] or [`Framing::Chunked`].
    pub framing: Framing,
    /// Whether the client keeps the connection open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
}

impl RequestHead {
    pub fn is_connect(&self, buf: &[u8]) -> bool {
        &buf[self.method.clone()] == b"CONNECT"
    }
}

/// Parses the request head at the start of `buf`; see the module documentation.
pub fn parse_request(buf: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, RequestError> {
    parse_request_from(buf, limits, &mut 0)
}

/// [`parse_request`] for a head that arrives in pieces: `scanned` (zero for a new head) is how
/// much of `buf` earlier calls found incomplete, and is not scanned again. Without it a head sent
/// a byte at a time would cost time quadratic in its length.
pub fn parse_request_from(
    buf: &[u8],
    limits: HeadLimits,
    scanned: &mut usize,
) -> Result<Option<RequestHead>, RequestError> {
    let window = &buf[..buf.len().min(limits.max_bytes)];
    // The last byte scanned is looked at again: a CR whose next byte had not arrived.
    check_line_ends(window, scanned.saturating_sub(1))?;
    let Some(end) = find_head_end(window, *scanned) else {
        if buf.len() < limits.max_bytes {
            *scanned = window.len();
            return Ok(None);
        }
        return Err(if window.contains(&b'\n') {
            RequestError::HeadTooLarge
        } else {
            RequestError::LineTooLong
        });
    };
    let head = &buf[..end];
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut storage);
    match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == end => {}
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        _ => return Err(RequestError::Malformed),
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(RequestError::Malformed);
    };
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(RequestError::Version),
    };
    let range_of = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let method_range = range_of(method.as_bytes());
    let raw_target = range_of(target.as_bytes());
    let connect = method == "CONNECT";
    let target = if connect {
        RequestTarget::Connect(parse_connect_target(target)?)
    } else {
        parse_absolute_target(target, raw_target.start)?
    };

    let mut fields = Vec::with_capacity(request.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let kind = kind_of(header.name.as_bytes())?;
        if header
            .value
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(RequestError::ControlByte);
        }
        let value = header.value.trim_ascii();
        match kind {
            FieldKind::ContentLength => {
                if length.is_some() {
                    return Err(RequestError::BadContentLength);
                }
                length = Some(parse_length(value).ok_or(RequestError::BadContentLength)?);
            }
            FieldKind::TransferEncoding => {
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(RequestError::BadTransferEncoding);
                }
                chunked = true;
            }
            FieldKind::Host => hosts += 1,
            FieldKind::Connection | FieldKind::ProxyConnection => {
                for token in list(value) {
                    // A hop must drop the fields its Connection names: dropping the framing
                    // would hand the next hop a body it reads as a request of its own.
                    if names_framing(token) {
                        return Err(RequestError::ConnectionNamesFraming);
                    }
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            FieldKind::Expect => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(RequestError::Expectation);
                }
                expect_continue = version == Version::Http11;
            }
            _ => {}
        }
        fields.push(Field {
            name: range_of(header.name.as_bytes()),
            value: range_of(header.value),
            kind,
        });
    }
    if chunked && length.is_some() {
        return Err(RequestError::LengthAndCoding);
    }
    if chunked && version == Version::Http10 {
        return Err(RequestError::CodingInHttp10);
    }
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(RequestError::Host);
    }
    let framing = match (connect, chunked, length) {
        // A CONNECT request has no content (RFC 9110 §9.3.6); what follows is the tunnel.
        (true, _, _) | (false, false, None | Some(0)) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(Some(RequestHead {
        method: method_range,
        target,
        raw_target,
        version,
        fields,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Empty,
        len: end,
    }))
}

/// Refuses a LF not preceded by CR, and a CR not followed by LF (where the next byte is known),
/// from `from` on.
fn check_line_ends(buf: &[u8], from: usize) -> Result<(), RequestError> {
    for (i, &b) in buf.iter().enumerate().skip(from) {
        let bare = match b {
            b'\n' => i == 0 || buf[i - 1] != b'\r',
            b'\r' => buf.get(i + 1).is_some_and(|&next| next != b'\n'),
            _ => false,
        };
        if bare {
            return Err(RequestError::BareLineEnd);
        }
        // The head ends at the first blank line; what follows is body or the next request.
        if b == b'\n' && i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
            return Ok(());
        }
    }
    Ok(())
}

/// The length of the head: up to and including the first `\r\n\r\n`, which ends past `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// The trimmed, non-empty elements of a comma-separated list.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

/// `1*DIGIT`, at most 19 digits (so it fits a `u64`): no sign, no spaces, no list.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

/// `CONNECT host:port`: authority-form only.
fn parse_connect_target(target: &str) -> Result<Authority, RequestError> {
    if target.contains(['/', '@', '?', '#']) {
        return Err(RequestError::TargetForm);
    }
    crate::authority::parse_authority(target).map_err(RequestError::TargetAuthority)
}

/// `http://authority[/path][?query]`, the scheme in any case. `offset` is where `target` starts
/// in the buffer.
fn parse_absolute_target(target: &str, offset: usize) -> Result<RequestTarget, RequestError> {
    const SCHEME: &str = "http://";
    let scheme = target.get(..SCHEME.len()).ok_or(RequestError::TargetForm)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(RequestError::TargetForm);
    }
    let rest = &target[SCHEME.len()..];
    if rest.contains('#') {
        return Err(RequestError::TargetPart);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, explicit_port) = parse_http_authority(&rest[..end])?;
    let path = if end == rest.len() {
        PathRange::Root
    } else {
        let range = offset + SCHEME.len() + end..offset + target.len();
        if rest.as_bytes()[end] == b'?' {
            PathRange::Query(range)
        } else {
            PathRange::In(range)
        }
    };
    Ok(RequestTarget::Absolute {
        authority,
        explicit_port,
        path,
    })
}

/// The authority of an `http://` URI (or an HTTP/2 `:authority`): a host, and a port that,
/// when written, is plain digits from 1 to 65535. Userinfo is refused (RFC 9110 §4.2.4, RFC 9113
/// §8.3.1). Returns whether the port was written; without one it is 80.
pub fn parse_http_authority(authority: &str) -> Result<(Authority, bool), RequestError> {
    if authority.contains('@') {
        return Err(RequestError::TargetPart);
    }
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or(RequestError::TargetAuthority(AuthorityError::BadIpv6))?;
        match &authority[close + 1..] {
            "" => (&authority[..=close], None),
            rest => (
                &authority[..=close],
                Some(
                    rest.strip_prefix(':')
                        .ok_or(RequestError::TargetAuthority(AuthorityError::BadPort))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host = parse_host(host).map_err(RequestError::TargetAuthority)?;
    let port = match port {
        Some(port) => Some(parse_port(port).map_err(RequestError::TargetAuthority)?),
        None => None,
    };
    Ok((
        Authority {
            host,
            port: port.unwrap_or(80),
        },
        port.is_some(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Host;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 32,
    };

    fn parse(text: &str) -> Result<Option<RequestHead>, RequestError> {
        parse_request(text.as_bytes(), LIMITS)
    }

    fn head(text: &str) -> RequestHead {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .expect("complete")
    }

    fn refused(text: &str) -> RequestError {
        match parse(text) {
            Err(e) => e,
            Ok(other) => panic!("{text:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn an_absolute_get_names_its_destination_and_path() {
        let text = "GET http://Shop.Test:8080/a?b=1 HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\nNEXT";
        let parsed = head(text);
        let RequestTarget::Absolute {
            authority,
            explicit_port,
            path: PathRange::In(path),
        } = &parsed.target
        else {
            panic!("{parsed:?}")
        };
        assert_eq!(authority.to_string(), "shop.test:8080");
        assert!(explicit_port);
        assert_eq!(&text[path.clone()], "/a?b=1");
        assert_eq!(&text[parsed.method.clone()], "GET");
        assert_eq!(parsed.len, text.len() - 4);
        assert_eq!(parsed.framing, Framing::Empty);
        assert!(parsed.keep_alive);
        assert_eq!(parsed.fields.len(), 2);
        assert_eq!(parsed.fields[0].kind, FieldKind::Host);
        assert_eq!(&text[parsed.fields[1].value.clone()], "*/*");
    }

    #[test]
    fn a_connect_takes_authority_form_only() {
        let parsed = head("CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n");
        assert_eq!(
            parsed.target,
            RequestTarget::Connect(Authority {
                host: Host::Name("shop.test".into()),
                port: 443
            })
        );
        for bad in [
            "CONNECT http://shop.test:443/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT user@shop.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(refused(bad), RequestError::TargetForm, "{bad:?}");
        }
        assert!(matches!(
            refused("CONNECT shop.test HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::TargetAuthority(_)
        ));
    }

    #[test]
    fn ports_are_plain_digits_from_1_to_65535() {
        for port in ["99999", "+80", "65536", "8x", "-1", "1e3", "0x50", "0", ""] {
            let text = format!("GET http://h.test:{port}/ HTTP/1.1\r\nHost: h.test\r\n\r\n");
            assert!(
                matches!(
                    refused(&text),
                    RequestError::TargetAuthority(AuthorityError::BadPort)
                ),
                "{port:?}"
            );
        }
        let parsed = head("GET http://h.test/ HTTP/1.1\r\nHost: h.test\r\n\r\n");
        assert!(matches!(
            parsed.target,
            RequestTarget::Absolute { ref authority, explicit_port: false, .. } if authority.port == 80
        ));
    }

    #[test]
    fn only_absolute_http_targets_are_forwarded() {
        for (bad, error) in [
            (
                "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                RequestError::TargetForm,
            ),
            (
                "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
                RequestError::TargetForm,
            ),
            (
                "GET https://h.test/ HTTP/1.1\r\nHost: h\r\n\r\n",
                RequestError::TargetForm,
            ),
            (
                "GET http://u:p@h.test/ HTTP/1.1\r\nHost: h\r\n\r\n",
                RequestError::TargetPart,
            ),
            (
                "GET http://h.test/#x HTTP/1.1\r\nHost: h\r\n\r\n",
                RequestError::TargetPart,
            ),
        ] {
            assert_eq!(refused(bad), error, "{bad:?}");
        }
    }

    #[test]
    fn framing_is_one_plain_length_or_exactly_chunked() {
        let post =
            |fields: &str| format!("POST http://h.test/ HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
        assert_eq!(
            head(&post("Content-Length: 12\r\n")).framing,
            Framing::Length(12)
        );
        assert_eq!(
            head(&post("Transfer-Encoding: Chunked\r\n")).framing,
            Framing::Chunked
        );
        assert_eq!(head(&post("Content-Length: 0\r\n")).framing, Framing::Empty);
        for (fields, error) in [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                RequestError::LengthAndCoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                RequestError::LengthAndCoding,
            ),
            (
                "Transfer-Encoding: identity, chunked\r\n",
                RequestError::BadTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked,chunked\r\n",
                RequestError::BadTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                RequestError::BadTransferEncoding,
            ),
            (
                "Transfer-Encoding: gzip\r\n",
                RequestError::BadTransferEncoding,
            ),
            ("Content-Length: +3\r\n", RequestError::BadContentLength),
            ("Content-Length: 3, 3\r\n", RequestError::BadContentLength),
            (
                "Content-Length: 3\r\nContent-Length: 3\r\n",
                RequestError::BadContentLength,
            ),
            (
                "Content-Length: 99999999999999999999\r\n",
                RequestError::BadContentLength,
            ),
            (
                "Transfer_Encoding: chunked\r\nContent-Length: 3\r\n",
                RequestError::LookalikeHeaderName,
            ),
            ("Content_Length: 3\r\n", RequestError::LookalikeHeaderName),
            ("Expect: 200-ok\r\n", RequestError::Expectation),
            // The meter would frame the body by the length and then drop the field: the
            // vendor would read the body as a request of its own.
            (
                "Connection: Content-Length\r\nContent-Length: 3\r\n",
                RequestError::ConnectionNamesFraming,
            ),
            (
                "Connection: keep-alive, transfer-encoding\r\nTransfer-Encoding: chunked\r\n",
                RequestError::ConnectionNamesFraming,
            ),
            (
                "Proxy-Connection: content-length\r\nContent-Length: 3\r\n",
                RequestError::ConnectionNamesFraming,
            ),
        ] {
            assert_eq!(refused(&post(fields)), error, "{fields:?}");
        }
        let http10 = "POST http://h.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(http10), RequestError::CodingInHttp10);
    }

    #[test]
    fn line_ends_are_crlf_only() {
        assert_eq!(
            refused("GET http://h.test/ HTTP/1.1\nHost: h\r\n\r\n"),
            RequestError::BareLineEnd
        );
        assert_eq!(
            refused("GET http://h.test/ HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"),
            RequestError::BareLineEnd
        );
        assert_eq!(
            refused("GET http://h.test/ HTTP/1.1\r\nHost: h\r\n\n"),
            RequestError::BareLineEnd
        );
        // What follows the head is not the head's business.
        assert_eq!(
            head("GET http://h.test/ HTTP/1.1\r\nHost: h\r\n\r\n\nX").len,
            40
        );
    }

    #[test]
    fn hosts_values_and_versions_are_checked() {
        assert_eq!(
            refused("GET http://h.test/ HTTP/1.1\r\nAccept: */*\r\n\r\n"),
            RequestError::Host
        );
        assert_eq!(
            refused("GET http://h.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            RequestError::Host
        );
        assert!(!head("GET http://h.test/ HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET http://h.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            !head("GET http://h.test/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive
        );
        for control in ["\x00", "\x7f", "\x1b"] {
            let text = format!("GET http://h.test/ HTTP/1.1\r\nHost: h\r\nX: a{control}b\r\n\r\n");
            assert_eq!(refused(&text).status(), 400, "{control:?}");
        }
        assert_eq!(
            refused("GET http://h.test/ HTTP/2.0\r\nHost: h\r\n\r\n").status(),
            505
        );
    }

    #[test]
    fn heads_are_bounded_with_the_right_status() {
        let small = HeadLimits {
            max_bytes: 64,
            max_headers: 2,
        };
        let line = format!("GET http://h.test/{} HTTP/1.1\r\n", "a".repeat(80));
        assert_eq!(
            parse_request(line.as_bytes(), small).map(|_| ()),
            Err(RequestError::LineTooLong)
        );
        let fields = format!(
            "GET http://h.test/ HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(60)
        );
        assert_eq!(
            parse_request(fields.as_bytes(), small).map(|_| ()),
            Err(RequestError::HeadTooLarge)
        );
        let many = "GET http://h.test/ HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_request(many.as_bytes(), small).map(|_| ()),
            Err(RequestError::TooManyHeaders)
        );
        assert_eq!(parse("GET http://h.test/ HTT"), Ok(None));
    }

    #[test]
    fn http2_authorities_follow_the_same_rules() {
        assert_eq!(
            parse_http_authority("h.test:8443").map(|(a, e)| (a.to_string(), e)),
            Ok(("h.test:8443".to_owned(), true))
        );
        assert_eq!(
            parse_http_authority("[::1]").map(|(a, e)| (a.to_string(), e)),
            Ok(("[::1]:80".to_owned(), false))
        );
        assert_eq!(
            parse_http_authority("u@h.test"),
            Err(RequestError::TargetPart)
        );
        assert!(parse_http_authority("h.test:99999").is_err());
    }

    /// Feeds `head` in pieces of `piece` bytes, resuming the scan, until it parses or fails.
    fn in_pieces(head: &[u8], piece: usize) -> Result<Option<RequestHead>, RequestError> {
        let mut scanned = 0;
        let mut result = Ok(None);
        for end in (piece..head.len()).step_by(piece).chain([head.len()]) {
            result = parse_request_from(&head[..end], LIMITS, &mut scanned);
            if !matches!(result, Ok(None)) {
                break;
            }
        }
        result
    }

    #[test]
    fn a_head_in_pieces_parses_as_it_does_whole() {
        for head in [
            "GET http://h.test/a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nGET http://next/",
            "POST http://h.test/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            // A CR that ends one piece and a LF-less byte that begins the next.
            "GET http://h.test/ HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            "GET http://h.test/ HTTP/1.1\nHost: h\r\n\r\n",
            "GET http://h.test/ HTTP/1.1\r\nHost: h\r\n\n",
            "GET http://h.test/ HTTP/1.1\r\nHost: h\r\n",
        ] {
            let whole = parse_request(head.as_bytes(), LIMITS);
            for piece in 1..=head.len() {
                assert_eq!(
                    in_pieces(head.as_bytes(), piece),
                    whole,
                    "{head:?} by {piece}"
                );
            }
        }
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_costs_time_linear_in_its_length() {
        // 32 KiB of fields, one read per byte: rescanning from the start each time walked
        // half a billion bytes (seconds, in a test build); resuming walks each about once.
        let mut head = b"GET http://h.test/ HTTP/1.1\r\nHost: h\r\n".to_vec();
        while head.len() < 32 * 1024 {
            head.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let limits = HeadLimits {
            max_bytes: 64 * 1024,
            max_headers: 1024,
        };
        let started = std::time::Instant::now();
        let mut scanned = 0;
        let mut parsed = None;
        for end in 1..=head.len() {
            if let Some(done) = parse_request_from(&head[..end], limits, &mut scanned).unwrap() {
                parsed = Some(done);
            }
        }
        assert_eq!(parsed.map(|h| h.len), Some(head.len()));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    proptest::proptest! {
        #[test]
        fn resuming_the_scan_never_changes_the_result(
            head in "(GET|POST) http://h\\.test/[a-z]{0,8} HTTP/1\\.1(\r\n|\n|\r|\r\r\n)(Host: h|X-A: [a-z\r]{0,4})(\r\n|\n)(\r\n|\n|)[a-z]{0,3}",
            piece in 1usize..16,
        ) {
            let whole = parse_request(head.as_bytes(), LIMITS);
            proptest::prop_assert_eq!(in_pieces(head.as_bytes(), piece), whole);
        }
    }
}
