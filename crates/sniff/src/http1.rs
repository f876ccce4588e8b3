//! HTTP/1.1 proxy traffic as a transparent meter observes it: request and response heads, and
//! where each message ends.
//!
//! In transparent mode the meter sits between a crawler and its vendor without being either
//! side's peer: it forwards every byte unchanged and only needs to know, in each direction,
//! where one message ends and the next begins, what each request asks for (method, absolute
//! target or CONNECT authority) and what status each response carries. [`parse_request_head`]
//! and [`parse_response_head`] read complete heads (bounded); [`Body`] follows a message body
//! through any split of its bytes (RFC 9112 §6 and §7.1) without copying or changing them.
//!
//! Parsing here never decides what is forwarded: when a head is malformed, larger than the
//! limit, or frames its body ambiguously (RFC 9112 §6.3: both `Content-Length` and
//! `Transfer-Encoding`, differing lengths, an unknown request transfer coding), the caller stops
//! interpreting the connection and meters the rest as opaque bytes. Metering fails open; the
//! crawler and its vendor settle between themselves what the bytes mean.

use crate::authority::{Authority, parse_authority, parse_host};

/// Most header fields parsed in one head. Browsers send about 20, vendors answer with fewer;
/// a head with more is treated as not understood (opaque), never refused.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (size, extensions) followed through. Real ones are a few bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes after the last chunk. Trailers are rare and small.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// Hex digits of a chunk size: 16 cover every `u64`.
const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes (responses only).
    UntilClose,
    /// The connection stops being HTTP: a CONNECT tunnel or a protocol switch.
    Tunnel,
}

/// What a request asks the proxy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `GET http://host[:port]/…` (or `https://`, which some vendors accept).
    Absolute(Authority),
    /// `CONNECT host:port`.
    Connect(Authority),
    /// Origin-form, asterisk-form, or a target whose host does not parse.
    Other,
}

/// What kind of request a response answers; it decides the response's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Head,
    Connect,
    Other,
}

/// A complete request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, at most 32 bytes (longer ones make the head malformed).
    pub method: String,
    /// The request-target as sent.
    pub path: String,
    pub target: Target,
    pub framing: Framing,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
}

impl RequestHead {
    pub fn kind(&self) -> RequestKind {
        match self.method.as_str() {
            "HEAD" => RequestKind::Head,
            "CONNECT" => RequestKind::Connect,
            _ => RequestKind::Other,
        }
    }
}

/// A complete response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// A 1xx answer other than 101: the final response is still to come.
    pub interim: bool,
    pub framing: Framing,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
    /// HTTP/1.1 without `Connection: close`: the connection may carry another request.
    pub keep_alive: bool,
}

/// Why a head or body could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the head is larger than the limit")]
    TooLarge,
    #[error("the head is not valid HTTP/1.x")]
    Malformed,
    #[error("the body's length is ambiguous")]
    Ambiguous,
    #[error("the chunked body is malformed")]
    BadChunk,
}

/// Longest method accepted; real ones are at most 7 bytes (`OPTIONS`, `CONNECT`).
const MAX_METHOD_LEN: usize = 32;

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete and still
/// within `max_len` bytes.
pub fn parse_request_head(buf: &[u8], max_len: usize) -> Result<Option<RequestHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_len => len,
        Ok(httparse::Status::Partial) if buf.len() < max_len => return Ok(None),
        Ok(_) => return Err(FramingError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooLarge),
        Err(_) => return Err(FramingError::Malformed),
    };
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err(FramingError::Malformed);
    };
    if method.len() > MAX_METHOD_LEN {
        return Err(FramingError::Malformed);
    }
    let target = if method == "CONNECT" {
        parse_authority(path).map_or(Target::Other, Target::Connect)
    } else {
        absolute_target(path).map_or(Target::Other, Target::Absolute)
    };
    let framing = if method == "CONNECT" {
        // A CONNECT request has no content (RFC 9110 §9.3.6); what follows a 2xx is the tunnel.
        Framing::Empty
    } else {
        match body_length(request.headers)? {
            BodyLength::Chunked => Framing::Chunked,
            BodyLength::Length(n) => Framing::Length(n),
            // A request without either header has no body (RFC 9112 §6.3 item 7); one with a
            // transfer coding that is not chunked cannot be delimited (item 4).
            BodyLength::Unspecified => Framing::Empty,
            BodyLength::OtherCoding => return Err(FramingError::Ambiguous),
        }
    };
    Ok(Some(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        target,
        framing: if framing == Framing::Length(0) {
            Framing::Empty
        } else {
            framing
        },
        len,
    }))
}

/// Parses the response head at the start of `buf`, answering a request of `kind`.
pub fn parse_response_head(
    buf: &[u8],
    max_len: usize,
    kind: RequestKind,
) -> Result<Option<ResponseHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_len => len,
        Ok(httparse::Status::Partial) if buf.len() < max_len => return Ok(None),
        Ok(_) => return Err(FramingError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooLarge),
        Err(_) => return Err(FramingError::Malformed),
    };
    let status = response.code.ok_or(FramingError::Malformed)?;
    let interim = (100..200).contains(&status) && status != 101;
    // RFC 9112 §6.3, items 1 and 2, in order.
    let framing = if status == 101 || (kind == RequestKind::Connect && (200..300).contains(&status))
    {
        Framing::Tunnel
    } else if interim || kind == RequestKind::Head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match body_length(response.headers)? {
            BodyLength::Chunked => Framing::Chunked,
            BodyLength::Length(0) => Framing::Empty,
            BodyLength::Length(n) => Framing::Length(n),
            BodyLength::Unspecified | BodyLength::OtherCoding => Framing::UntilClose,
        }
    };
    // HTTP/1.1 without `Connection: close`; a `Connection` naming the framing fields is
    // ambiguous (see `names_framing`).
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        let connection = header.name.eq_ignore_ascii_case("connection");
        if !connection && !header.name.eq_ignore_ascii_case("proxy-connection") {
            continue;
        }
        for token in split_list(header.value) {
            if names_framing(token) {
                return Err(FramingError::Ambiguous);
            }
            keep_alive &= !(connection && token.eq_ignore_ascii_case(b"close"));
        }
    }
    Ok(Some(ResponseHead {
        status,
        interim,
        framing,
        len,
        keep_alive,
    }))
}

enum BodyLength {
    Chunked,
    OtherCoding,
    Length(u64),
    Unspecified,
}

/// The body length the headers announce. Both `Transfer-Encoding` and `Content-Length`, or
/// differing `Content-Length` values, are ambiguous: a smuggling attempt or a broken peer.
fn body_length(headers: &[httparse::Header<'_>]) -> Result<BodyLength, FramingError> {
    let mut length: Option<u64> = None;
    let mut codings: Option<bool> = None; // Some(last coding is chunked)
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            for value in split_list(header.value) {
                let n = parse_decimal(value).ok_or(FramingError::Ambiguous)?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(FramingError::Ambiguous);
                }
                length = Some(n);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in split_list(header.value) {
                codings = Some(coding.eq_ignore_ascii_case(b"chunked"));
            }
        }
    }
    match (codings, length) {
        (Some(_), Some(_)) => Err(FramingError::Ambiguous),
        (Some(true), None) => Ok(BodyLength::Chunked),
        (Some(false), None) => Ok(BodyLength::OtherCoding),
        (None, Some(n)) => Ok(BodyLength::Length(n)),
        (None, None) => Ok(BodyLength::Unspecified),
    }
}

/// Whether a `Connection` token names a field that frames the message. A hop removes the
/// fields its `Connection` names (RFC 9110 §7.6.1); removing these would leave the next hop
/// framing the body differently from the meter (request smuggling), so such a message is
/// refused instead.
pub fn names_framing(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"content-length")
        || token.eq_ignore_ascii_case(b"transfer-encoding")
}

/// The non-empty, trimmed elements of a comma-separated header value.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

/// The authority of an absolute `http://` or `https://` request target.
fn absolute_target(path: &str) -> Option<Authority> {
    let (scheme, rest) = path.split_once("://")?;
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if let Ok(parsed) = parse_authority(authority) {
        return Some(parsed);
    }
    parse_host(authority).ok().map(|host| Authority {
        host,
        port: default_port,
    })
}

/// Follows one message body through its bytes, in whatever pieces they arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Done,
    Remaining(u64),
    UntilClose,
    /// Chunked: reading the hex size (digits so far, value so far, line bytes so far).
    Size {
        digits: usize,
        size: u64,
        line: usize,
    },
    /// Chunked: after the size, skipping extensions until CR (line bytes so far).
    Extension {
        size: u64,
        line: usize,
    },
    /// Chunked: the LF ending the size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line or the final CRLF.
    TrailerStart {
        total: usize,
    },
    /// Inside a trailer field line.
    Trailer {
        total: usize,
    },
    /// The LF ending a trailer field line.
    TrailerLf {
        total: usize,
    },
    /// The final LF.
    EndLf,
}

/// How far a call to [`Body::advance`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to this body.
    pub consumed: usize,
    /// The body is complete; bytes after `consumed` belong to the next message.
    pub done: bool,
}

impl Body {
    /// A body delimited by `framing`. [`Framing::Tunnel`] never ends, like `UntilClose`.
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Remaining(n),
            Framing::Chunked => State::Size {
                digits: 0,
                size: 0,
                line: 0,
            },
            Framing::UntilClose | Framing::Tunnel => State::UntilClose,
        };
        Body { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many of the next bytes belong to the body whatever they are: the rest of a
    /// length-delimited body or of the current chunk's data, or everything until the close.
    /// A reader may consume that many without looking at them first; 0 where the framing itself
    /// comes next (chunk sizes, line ends, trailers) or the body is done.
    pub fn opaque_run(&self) -> u64 {
        match self.state {
            State::Remaining(n) | State::Data(n) => n,
            State::UntilClose => u64::MAX,
            _ => 0,
        }
    }

    /// Consumes framing bytes (chunk sizes, line ends, trailers) up to the next byte of data or
    /// the end of the body, and returns how many: a decoder takes the data itself, by
    /// [`Body::opaque_run`], and gets the framing out of its way with this.
    pub fn advance_framing(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut at = 0;
        while at < input.len() && self.opaque_run() == 0 && !self.is_done() {
            self.step(input[at])?;
            at += 1;
        }
        Ok(at)
    }

    /// Consumes the part of `input` that belongs to the body.
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress, FramingError> {
        let mut at = 0;
        while at < input.len() {
            match &mut self.state {
                State::Done => break,
                State::UntilClose => at = input.len(),
                State::Remaining(n) | State::Data(n) => {
                    let take = usize::try_from(*n)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    at += take;
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = match self.state {
                            State::Data(_) => State::DataCr,
                            _ => State::Done,
                        };
                    }
                }
                _ => {
                    self.step(input[at])?;
                    at += 1;
                }
            }
        }
        Ok(Progress {
            consumed: at,
            done: self.is_done(),
        })
    }

    /// One byte of the chunked framing (sizes, line ends, trailers).
    fn step(&mut self, byte: u8) -> Result<(), FramingError> {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Size { digits, size, line } => {
                if line >= MAX_CHUNK_LINE {
                    return Err(FramingError::BadChunk);
                }
                match (byte as char).to_digit(16) {
                    Some(d) if digits < MAX_CHUNK_SIZE_DIGITS => State::Size {
                        digits: digits + 1,
                        size: size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(FramingError::BadChunk)?,
                        line: line + 1,
                    },
                    None if digits > 0 && byte == b'\r' => State::SizeLf { size },
                    // Extensions start right after the size: whitespace there (`3 \r\n`) is
                    // read differently by different parsers, so it is an error (as in Squid).
                    None if digits > 0 && byte == b';' => State::Extension {
                        size,
                        line: line + 1,
                    },
                    _ => return Err(FramingError::BadChunk),
                }
            }
            State::Extension { size, line } => match byte {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(FramingError::BadChunk),
                _ if line >= MAX_CHUNK_LINE => return Err(FramingError::BadChunk),
                _ => State::Extension {
                    size,
                    line: line + 1,
                },
            },
            State::SizeLf { size } => match (byte, size) {
                (b'\n', 0) => State::TrailerStart { total: 0 },
                (b'\n', n) => State::Data(n),
                _ => return Err(FramingError::BadChunk),
            },
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size {
                digits: 0,
                size: 0,
                line: 0,
            },
            State::TrailerStart { .. } if byte == b'\r' => State::EndLf,
            State::TrailerStart { total } | State::Trailer { total } => {
                if total >= MAX_TRAILER_BYTES || byte == b'\n' {
                    return Err(FramingError::BadChunk);
                }
                if byte == b'\r' {
                    State::TrailerLf { total: total + 1 }
                } else {
                    State::Trailer { total: total + 1 }
                }
            }
            State::TrailerLf { total } if byte == b'\n' => State::TrailerStart { total: total + 1 },
            State::EndLf if byte == b'\n' => State::Done,
            _ => return Err(FramingError::BadChunk),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opaque_run_is_the_data_a_reader_may_take_unseen() {
        let mut body = Body::new(Framing::Chunked);
        assert_eq!(body.opaque_run(), 0, "a chunk size comes first");
        body.advance(b"1a\r\n").unwrap();
        assert_eq!(body.opaque_run(), 26);
        body.advance(&[b'x'; 20]).unwrap();
        assert_eq!(body.opaque_run(), 6);
        body.advance(&[b'x'; 6]).unwrap();
        assert_eq!(body.opaque_run(), 0, "the CRLF after the data is framing");
        assert_eq!(Body::new(Framing::Length(9)).opaque_run(), 9);
        assert_eq!(Body::new(Framing::UntilClose).opaque_run(), u64::MAX);
        assert_eq!(Body::new(Framing::Empty).opaque_run(), 0);
    }
    use crate::Host;

    fn request(text: &str) -> RequestHead {
        parse_request_head(text.as_bytes(), 64 * 1024)
            .unwrap()
            .unwrap()
    }

    fn response(text: &str, kind: RequestKind) -> ResponseHead {
        parse_response_head(text.as_bytes(), 64 * 1024, kind)
            .unwrap()
            .unwrap()
    }

    fn name(host: &str, port: u16) -> Authority {
        Authority {
            host: Host::Name(host.into()),
            port,
        }
    }

    #[test]
    fn absolute_form_requests_name_their_destination() {
        let head = request("GET http://shop-a.test/x?y HTTP/1.1\r\nHost: shop-a.test\r\n\r\n");
        assert_eq!(head.target, Target::Absolute(name("shop-a.test", 80)));
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.len, 58);
        let head = request("GET https://Shop-A.test:8443 HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, Target::Absolute(name("shop-a.test", 8443)));
        let head = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.target, Target::Other);
        let head = request("GET http://user:pw@shop-a.test/ HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, Target::Other);
    }

    #[test]
    fn connect_requests_name_their_authority_and_have_no_body() {
        let head = request("CONNECT shop-a.test:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(head.target, Target::Connect(name("shop-a.test", 443)));
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.kind(), RequestKind::Connect);
    }

    #[test]
    fn request_bodies_are_framed_by_length_or_chunking() {
        let head = request("POST http://a.test/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(12));
        let head = request("POST http://a.test/ HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(12));
        let head =
            request("POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(head.framing, Framing::Chunked);
    }

    #[test]
    fn ambiguous_request_framing_is_refused_for_interpretation() {
        for head in [
            "POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST http://a.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST http://a.test/ HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(
                parse_request_head(head.as_bytes(), 1024),
                Err(FramingError::Ambiguous),
                "{head}"
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let head = "GET http://a.test/ HTTP/1.1\r\nX: y\r\n\r\n";
        assert_eq!(
            parse_request_head(head.as_bytes(), 20),
            Err(FramingError::TooLarge)
        );
        assert_eq!(parse_request_head(&head.as_bytes()[..10], 20), Ok(None));
        assert_eq!(
            parse_request_head(&head.as_bytes()[..25], 20),
            Err(FramingError::TooLarge)
        );
        assert_eq!(
            parse_request_head(b"\x16\x03\x01\x02\x00", 20),
            Err(FramingError::Malformed)
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let other = RequestKind::Other;
        let ok = |headers: &str| response(&format!("HTTP/1.1 200 OK\r\n{headers}\r\n"), other);
        assert_eq!(ok("Content-Length: 7\r\n").framing, Framing::Length(7));
        assert_eq!(
            ok("Transfer-Encoding: chunked\r\n").framing,
            Framing::Chunked
        );
        assert_eq!(ok("").framing, Framing::UntilClose);
        assert_eq!(ok("Content-Length: 0\r\n").framing, Framing::Empty);
        let head = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            RequestKind::Head,
        );
        assert_eq!(head.framing, Framing::Empty);
        let head = response(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
            other,
        );
        assert_eq!(head.framing, Framing::Empty);
        let head = response("HTTP/1.1 100 Continue\r\n\r\n", other);
        assert!(head.interim && head.framing == Framing::Empty);
        let head = response(
            "HTTP/1.1 200 Connection established\r\n\r\n",
            RequestKind::Connect,
        );
        assert_eq!((head.status, head.framing), (200, Framing::Tunnel));
        let head = response(
            "HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n",
            RequestKind::Connect,
        );
        assert_eq!((head.status, head.framing), (407, Framing::Length(3)));
        let head = response(
            "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n",
            other,
        );
        assert!(!head.interim && head.framing == Framing::Tunnel);
    }

    #[test]
    fn a_response_whose_connection_names_its_framing_is_ambiguous() {
        for head in [
            "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close, transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                parse_response_head(head.as_bytes(), 64 * 1024, RequestKind::Other),
                Err(FramingError::Ambiguous),
                "{head:?}"
            );
        }
    }

    #[test]
    fn only_http_1_1_without_connection_close_keeps_the_connection() {
        let other = RequestKind::Other;
        let keeps = |text: &str| response(text, other).keep_alive;
        assert!(keeps("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keeps(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keeps("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"));
        assert!(!keeps(
            "HTTP/1.1 200 OK\r\nConnection: X-Hop ,close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keeps("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    }

    /// Feeds `input` in pieces of `piece` bytes; returns the bytes consumed and whether done.
    fn follow(framing: Framing, input: &[u8], piece: usize) -> Result<(usize, bool), FramingError> {
        let mut body = Body::new(framing);
        let mut consumed = 0;
        for chunk in input.chunks(piece.max(1)) {
            let progress = body.advance(chunk)?;
            consumed += progress.consumed;
            if progress.done {
                return Ok((consumed, true));
            }
            assert_eq!(progress.consumed, chunk.len());
        }
        Ok((consumed, body.is_done()))
    }

    #[test]
    fn chunked_bodies_end_exactly_after_their_last_chunk_and_trailers() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in [1, 2, 3, 7, 100] {
            assert_eq!(
                follow(Framing::Chunked, body, piece),
                Ok((end, true)),
                "{piece}"
            );
        }
        assert_eq!(follow(Framing::Chunked, b"0\r\n\r\n", 1), Ok((5, true)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"3\t;x\r\nabc\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                follow(Framing::Chunked, bad, 1),
                Err(FramingError::BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_bodies_end_after_their_length() {
        assert_eq!(follow(Framing::Length(5), b"helloNEXT", 2), Ok((5, true)));
        assert_eq!(follow(Framing::Length(5), b"hel", 2), Ok((3, false)));
        assert_eq!(follow(Framing::UntilClose, b"abc", 2), Ok((3, false)));
        assert_eq!(follow(Framing::Empty, b"abc", 2), Ok((0, true)));
    }
}
