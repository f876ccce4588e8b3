//! HTTP/1.1 messages on their way through the meter: heads rewritten for the next hop, bodies
//! forwarded in their own framing to their last byte and not one byte further.
//!
//! Bodies are not re-framed: a chunked request goes to the vendor chunked, chunk for chunk, so
//! the bytes the vendor bills are the bytes the crawler sent (plus the head the meter rewrote).
//! The framing is still followed byte by byte ([`Body`]) to know where the message ends; a
//! framing error stops the copy there. The one exception is an HTTP/1.0 client, which cannot
//! read chunked encoding: it gets the data de-chunked, delimited by the connection's close.

use std::io::{self, IoSlice};

use bytes::{Buf, BytesMut};
use pt_sniff::http1::{Body, FramingError};
use pt_sniff::request::{FieldKind, RequestHead};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Smallest and largest read while forwarding a body: a small response in one read; sixteen
/// TLS-record-sized pieces at a time for bulk transfers. The read size doubles while reads
/// fill it.
const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

/// How forwarding a body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The source failed or ended before the body did.
    Source(Option<io::Error>),
    /// Writing to the sink failed.
    Sink(io::Error),
    /// The source's framing is malformed.
    Framing,
}

/// How to pass a body on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In its own framing, byte for byte.
    AsIs,
    /// Data only (a chunked body to an HTTP/1.0 client).
    Dechunked,
}

/// Forwards the rest of `body` from `buf` (bytes already read) and then `from`, to `to`. On
/// success the body's bytes are gone from `buf`, and what followed them (the next message) is
/// still there. With `last`, the piece that completes the body is not written but moved there
/// (split off `buf`, not copied), for the caller to write once it has put the source connection
/// back in its pool (so that the client's next request finds it there).
pub async fn forward_body<R, W>(
    body: &mut Body,
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    mode: Mode,
    mut last: Option<&mut BytesMut>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut read_size = MIN_READ;
    loop {
        if !buf.is_empty() {
            match mode {
                Mode::AsIs => {
                    let progress = body
                        .advance(buf)
                        .map_err(|_: FramingError| BodyError::Framing)?;
                    match last.as_deref_mut() {
                        Some(held) if progress.done => *held = buf.split_to(progress.consumed),
                        _ => {
                            to.write_all(&buf[..progress.consumed])
                                .await
                                .map_err(BodyError::Sink)?;
                            buf.advance(progress.consumed);
                        }
                    }
                }
                Mode::Dechunked => dechunk(body, buf, to).await?,
            }
        }
        if body.is_done() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < read_size / 2 {
            buf.reserve(read_size);
        }
        let n = from
            .read_buf(buf)
            .await
            .map_err(|e| BodyError::Source(Some(e)))?;
        if n == 0 {
            // A body delimited by the close ends here; any other was cut short.
            return if body.opaque_run() == u64::MAX {
                Ok(())
            } else {
                Err(BodyError::Source(None))
            };
        }
        if n >= read_size && read_size < MAX_READ {
            read_size *= 2;
        }
    }
}

/// Writes the data of the buffered part of a chunked body and consumes it from `buf`.
async fn dechunk<W: AsyncWrite + Unpin + ?Sized>(
    body: &mut Body,
    buf: &mut BytesMut,
    to: &mut W,
) -> Result<(), BodyError> {
    while !buf.is_empty() && !body.is_done() {
        let run = usize::try_from(body.opaque_run()).unwrap_or(usize::MAX);
        if run > 0 {
            let take = run.min(buf.len());
            to.write_all(&buf[..take]).await.map_err(BodyError::Sink)?;
            body.advance(&buf[..take])
                .map_err(|_: FramingError| BodyError::Framing)?;
            buf.advance(take);
        } else {
            let framing = body
                .advance_framing(buf)
                .map_err(|_: FramingError| BodyError::Framing)?;
            buf.advance(framing);
        }
    }
    Ok(())
}

/// Methods whose request can be sent twice with the effect of once (RFC 9110 §9.2.2).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Writes `a` then `b` in as few syscalls as the socket allows (a head and the start of its
/// body leave in one segment).
pub async fn write_two<W: AsyncWrite + Unpin + ?Sized>(
    to: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = to
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Header fields never forwarded, in either direction: hop-by-hop (RFC 9110 §7.6.1) and the
/// proxy-specific ones. `Transfer-Encoding` and `Content-Length` stay: bodies keep their framing.
fn hop_by_hop(kind: FieldKind) -> bool {
    matches!(
        kind,
        FieldKind::Connection
            | FieldKind::ProxyConnection
            | FieldKind::KeepAlive
            | FieldKind::Te
            | FieldKind::Upgrade
            | FieldKind::ProxyAuthorization
            | FieldKind::Expect
            | FieldKind::Host
    )
}

/// The names the `Connection` fields list (to be removed with them).
fn connection_options<'b>(
    fields: impl Iterator<Item = (&'b [u8], &'b [u8], FieldKind)>,
) -> Vec<&'b [u8]> {
    fields
        .filter(|(_, _, kind)| matches!(kind, FieldKind::Connection | FieldKind::ProxyConnection))
        .flat_map(|(_, value, _)| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
        .collect()
}

/// What the meter sends a vendor for a forward request.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The request line's target: `http://authority/path` for a proxy, `/path` for `direct`.
    pub target: &'a [&'a [u8]],
    /// The `Host` value.
    pub host: &'a [u8],
    /// A field name (lower case) to leave out besides the hop-by-hop ones: the vendor header.
    pub drop: Option<&'a str>,
    /// `Proxy-Authorization` toward the vendor.
    pub authorization: Option<&'a [u8]>,
}

/// The request head sent to the vendor: the same method and fields, the target and `Host`
/// rewritten, hop-by-hop fields and the client's credentials removed, HTTP/1.1.
pub fn request_head(buf: &[u8], head: &RequestHead, out: &Outgoing<'_>) -> Vec<u8> {
    let fields = || {
        head.fields
            .iter()
            .map(|f| (&buf[f.name.clone()], &buf[f.value.clone()], f.kind))
    };
    let options = connection_options(fields());
    let mut line = Vec::with_capacity(head.len + 64);
    line.extend_from_slice(&buf[head.method.clone()]);
    line.push(b' ');
    for part in out.target {
        line.extend_from_slice(part);
    }
    line.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    line.extend_from_slice(out.host);
    line.extend_from_slice(b"\r\n");
    for (name, value, kind) in fields() {
        let dropped = hop_by_hop(kind)
            || out
                .drop
                .is_some_and(|d| name.eq_ignore_ascii_case(d.as_bytes()))
            || options.iter().any(|o| o.eq_ignore_ascii_case(name));
        if !dropped {
            push_field(&mut line, name, value);
        }
    }
    if let Some(value) = out.authorization {
        push_field(&mut line, b"Proxy-Authorization", value);
    }
    line.extend_from_slice(b"\r\n");
    line
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.trim_ascii());
    out.extend_from_slice(b"\r\n");
}

/// Most fields of a vendor's response head that are looked at.
const MAX_RESPONSE_FIELDS: usize = 256;

/// The response head sent to the client: the vendor's status line and fields, without the
/// hop-by-hop ones and the vendor's `Proxy-Authenticate`; `Connection: close` when the meter
/// closes the client connection after it; without `Transfer-Encoding` when de-chunked.
pub fn response_head(raw: &[u8], close: bool, dechunked: bool) -> Option<Vec<u8>> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut storage);
    let httparse::Status::Complete(_) = response.parse(raw).ok()? else {
        return None;
    };
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let mut out = Vec::with_capacity(raw.len() + 24);
    out.extend_from_slice(&raw[..line_end + 2]);
    for (name, value, kind) in forwarded_response_fields(response.headers) {
        if !(dechunked && kind == FieldKind::TransferEncoding) {
            push_field(&mut out, name, value);
        }
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// The fields of a vendor's response head passed on to the client: all but the hop-by-hop ones
/// (RFC 9110 §7.6.1: the fixed ones and those its `Connection` fields name) and the vendor's
/// `Proxy-Authenticate`. `Transfer-Encoding` stays: the body keeps its framing.
pub fn forwarded_response_fields<'h, 'b>(
    headers: &'h [httparse::Header<'b>],
) -> impl Iterator<Item = (&'b [u8], &'b [u8], FieldKind)> + 'h {
    let fields = move || {
        headers
            .iter()
            .map(|h| (h.name.as_bytes(), h.value, response_kind(h.name)))
    };
    let options = connection_options(fields());
    fields().filter(move |&(name, _, kind)| {
        let dropped = matches!(
            kind,
            FieldKind::Connection
                | FieldKind::ProxyConnection
                | FieldKind::KeepAlive
                | FieldKind::Te
                | FieldKind::Upgrade
        ) || name.eq_ignore_ascii_case(b"proxy-authenticate")
            || options.iter().any(|o| o.eq_ignore_ascii_case(name));
        !dropped
    })
}

fn response_kind(name: &str) -> FieldKind {
    const KINDS: [(&str, FieldKind); 6] = [
        ("connection", FieldKind::Connection),
        ("proxy-connection", FieldKind::ProxyConnection),
        ("keep-alive", FieldKind::KeepAlive),
        ("te", FieldKind::Te),
        ("upgrade", FieldKind::Upgrade),
        ("transfer-encoding", FieldKind::TransferEncoding),
    ];
    KINDS
        .iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map_or(FieldKind::Other, |(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pt_sniff::http1::Framing;
    use pt_sniff::request::{HeadLimits, parse_request};

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 64,
    };

    #[test]
    fn a_request_head_loses_hop_by_hop_fields_and_client_credentials() {
        let raw = b"POST http://Shop.Test/a?b HTTP/1.1\r\nHost: evil.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic Y2xpZW50\r\nX-Proxy-Vendor: vendor-a\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nExpect: 100-continue\r\nContent-Length: 3\r\nAccept: */*\r\n\r\n";
        let head = parse_request(raw, LIMITS).unwrap().unwrap();
        let out = request_head(
            raw,
            &head,
            &Outgoing {
                target: &[b"http://shop.test", b"/a?b"],
                host: b"shop.test",
                drop: Some("x-proxy-vendor"),
                authorization: Some(b"Basic dmVuZG9y"),
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST http://shop.test/a?b HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nAccept: */*\r\nProxy-Authorization: Basic dmVuZG9y\r\n\r\n"
        );
    }

    #[test]
    fn a_response_head_loses_hop_by_hop_fields_and_the_vendors_challenge() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=vendor\r\nTransfer-Encoding: chunked\r\nServer: x\r\n\r\n";
        let out = response_head(raw, true, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: x\r\nConnection: close\r\n\r\n"
        );
        let out = response_head(raw, true, true).unwrap();
        assert!(
            !String::from_utf8(out)
                .unwrap()
                .contains("Transfer-Encoding")
        );
    }

    #[test]
    fn the_fields_a_response_passes_on_are_the_same_for_every_client_protocol() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=vendor\r\nTransfer-Encoding: chunked\r\nServer: x\r\nx-hop: 2\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut storage);
        response.parse(raw).unwrap();
        let names: Vec<&[u8]> = forwarded_response_fields(response.headers)
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(names, [&b"Transfer-Encoding"[..], b"Server"]);
    }

    #[tokio::test]
    async fn a_body_is_forwarded_to_its_last_byte_and_the_next_message_stays() {
        let mut body = Body::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n"[..]);
        let (mut client, mut from) = tokio::io::duplex(1024);
        client
            .write_all(b"2\r\nde\r\n0\r\n\r\nGET http://next/ HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut to = Vec::new();
        forward_body(&mut body, &mut buf, &mut from, &mut to, Mode::AsIs, None)
            .await
            .unwrap();
        assert_eq!(to, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(&buf[..], b"GET http://next/ HTTP/1.1\r\n");

        let mut body = Body::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"[..]);
        let mut to = Vec::new();
        forward_body(
            &mut body,
            &mut buf,
            &mut tokio::io::empty(),
            &mut to,
            Mode::Dechunked,
            None,
        )
        .await
        .unwrap();
        assert_eq!(to, b"abcde");
    }

    #[tokio::test]
    async fn a_body_cut_short_or_malformed_is_an_error() {
        let mut body = Body::new(Framing::Length(10));
        let mut buf = BytesMut::from(&b"12345"[..]);
        let result = forward_body(
            &mut body,
            &mut buf,
            &mut tokio::io::empty(),
            &mut Vec::new(),
            Mode::AsIs,
            None,
        )
        .await;
        assert!(matches!(result, Err(BodyError::Source(None))));
        let mut body = Body::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3 \r\nabc\r\n"[..]);
        let result = forward_body(
            &mut body,
            &mut buf,
            &mut tokio::io::empty(),
            &mut Vec::new(),
            Mode::AsIs,
            None,
        )
        .await;
        assert!(matches!(result, Err(BodyError::Framing)));
    }
}
