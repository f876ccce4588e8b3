//! An incremental reader of the TLS ClientHello at the start of a tunnel: SNI and offered ALPN.
//!
//! The proxy never terminates TLS. It buffers the first bytes the client sends inside a tunnel,
//! calls [`sniff`] after every read until the answer is not [`Sniff::NeedMore`], then forwards the
//! buffer unchanged. A ClientHello may be split across TCP segments and across TLS records
//! (RFC 8446 §5.1 allows handshake messages to be fragmented); both are handled. Memory is bounded
//! by [`MAX_SNIFF_BYTES`]: a longer hello is reported as [`Sniff::Malformed`] and the tunnel is
//! then metered without SNI rather than refused (metering fails open).

use crate::authority::{Host, parse_host};

/// Largest ClientHello handshake message inspected. Real ones are 200 bytes to about 2 KiB
/// (larger with post-quantum key shares); 16 KiB is one full TLS record and ample headroom.
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Most bytes buffered while sniffing: the hello plus the 5-byte headers of up to 64 records it
/// may be fragmented into. Past this the sniffer gives up ([`Sniff::Malformed`]).
pub const MAX_SNIFF_BYTES: usize = MAX_HELLO_LEN + 64 * RECORD_HEADER_LEN;
/// Most ALPN protocol names kept; browsers offer two or three.
const MAX_ALPN_ENTRIES: usize = 8;

const RECORD_HEADER_LEN: usize = 5;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// TLSPlaintext.length may not exceed 2^14 (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// The verdict on the bytes seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// Could still be a ClientHello: read more (unless a size or time limit is reached).
    NeedMore,
    /// The stream does not start with a TLS handshake record.
    NotTls,
    /// Starts like TLS but is not a well-formed ClientHello within the limits.
    Malformed,
    /// A complete ClientHello.
    ClientHello(ClientHello),
}

/// What a ClientHello offers, for metering and access logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` (RFC 6066 §3), when present and a valid DNS name.
    pub sni: Option<Host>,
    /// The offered application protocols (RFC 7301), in the client's order.
    pub alpn: Vec<String>,
}

/// Inspects the first bytes of a client stream.
pub fn sniff(buf: &[u8]) -> Sniff {
    let Some(&first) = buf.first() else {
        return Sniff::NeedMore;
    };
    if first != CONTENT_TYPE_HANDSHAKE {
        return Sniff::NotTls;
    }
    // Record layer version: 0x0301 to 0x0304 in practice; the major byte is always 3.
    if let Some(&major) = buf.get(1)
        && major != 3
    {
        return Sniff::NotTls;
    }
    match reassemble(buf) {
        Reassembly::NeedMore if buf.len() >= MAX_SNIFF_BYTES => Sniff::Malformed,
        Reassembly::NeedMore => Sniff::NeedMore,
        Reassembly::Malformed => Sniff::Malformed,
        Reassembly::Hello(body) => match parse_client_hello(&body) {
            Some(hello) => Sniff::ClientHello(hello),
            None => Sniff::Malformed,
        },
    }
}

enum Reassembly {
    NeedMore,
    Malformed,
    Hello(Vec<u8>),
}

/// Concatenates handshake-record payloads until one whole ClientHello message is present.
fn reassemble(buf: &[u8]) -> Reassembly {
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if let Some(needed) = hello_len(&handshake)
            && handshake.len() >= needed
        {
            handshake.truncate(needed);
            return Reassembly::Hello(handshake.split_off(4));
        }
        if handshake
            .first()
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Reassembly::Malformed;
        }
        if rest.len() < RECORD_HEADER_LEN {
            return Reassembly::NeedMore;
        }
        if rest[0] != CONTENT_TYPE_HANDSHAKE || rest[1] != 3 {
            return Reassembly::Malformed;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Reassembly::Malformed;
        }
        let Some(fragment) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            return Reassembly::NeedMore;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[RECORD_HEADER_LEN + len..];
        if let Some(needed) = hello_len(&handshake)
            && needed > MAX_HELLO_LEN + 4
        {
            return Reassembly::Malformed;
        }
    }
}

/// Total length (header included) of the handshake message at the start of `handshake`.
fn hello_len(handshake: &[u8]) -> Option<usize> {
    let header = handshake.get(..4)?;
    let len =
        (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
    Some(4 + len)
}

/// A cursor over big-endian TLS vectors; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2; the TLS 1.2 layout is the same).
fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello); // No extensions (SSL 3 / early TLS 1.0 style).
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            EXT_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

/// `ServerNameList`: the first `host_name` entry that is a valid DNS name. `Ok(None)` when none.
fn parse_server_name(data: &[u8]) -> Option<Option<Host>> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type == 0 {
            // RFC 6066: a literal IP address is not permitted in SNI; ignore rather than trust it.
            let host = std::str::from_utf8(name)
                .ok()
                .and_then(|s| parse_host(s).ok());
            return Some(host.filter(|h| matches!(h, Host::Name(_))));
        }
    }
    Some(None)
}

/// `ProtocolNameList`: printable ASCII names, at most [`MAX_ALPN_ENTRIES`].
fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut list = Reader(Reader(data).vec16()?);
    let mut names = Vec::new();
    while !list.0.is_empty() {
        let name = list.vec8()?;
        if name.is_empty() {
            return None;
        }
        if names.len() < MAX_ALPN_ENTRIES && name.iter().all(|b| b.is_ascii_graphic()) {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Some(names)
}

/// Builds a syntactically valid ClientHello record, for tests and fuzz seeds.
#[doc(hidden)]
pub fn build_client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    fn vec16(inner: &[u8]) -> Vec<u8> {
        let mut v = (inner.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(inner);
        v
    }
    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend(vec16(name.as_bytes()));
        extensions.extend(EXT_SERVER_NAME.to_be_bytes());
        extensions.extend(vec16(&vec16(&entry)));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        extensions.extend(EXT_ALPN.to_be_bytes());
        extensions.extend(vec16(&vec16(&list)));
    }
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0); // empty session id
    body.extend(vec16(&[0x13, 0x01])); // TLS_AES_128_GCM_SHA256
    body.extend([1, 0]); // null compression
    body.extend(vec16(&extensions));
    let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
    record.extend(vec16(&handshake));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: &str, alpn: &[&str]) -> ClientHello {
        ClientHello {
            sni: Some(Host::Name(sni.into())),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_whole_hello_yields_sni_and_alpn() {
        let bytes = build_client_hello(Some("Shop.Example.com"), &["h2", "http/1.1"]);
        assert_eq!(
            sniff(&bytes),
            Sniff::ClientHello(hello("shop.example.com", &["h2", "http/1.1"]))
        );
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let bytes = build_client_hello(Some("example.com"), &["h2"]);
        for cut in 0..bytes.len() {
            assert_eq!(
                sniff(&bytes[..cut]),
                Sniff::NeedMore,
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn a_hello_fragmented_across_records_is_reassembled() {
        let whole = build_client_hello(Some("example.org"), &["http/1.1"]);
        let handshake = &whole[5..];
        let mut fragmented = Vec::new();
        for chunk in handshake.chunks(7) {
            fragmented.extend([22, 3, 1]);
            fragmented.extend((chunk.len() as u16).to_be_bytes());
            fragmented.extend(chunk);
        }
        assert_eq!(
            sniff(&fragmented),
            Sniff::ClientHello(hello("example.org", &["http/1.1"]))
        );
    }

    #[test]
    fn plain_protocols_are_not_tls() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotTls);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH"), Sniff::NotTls);
        assert_eq!(sniff(&[22, 2, 0]), Sniff::NotTls);
    }

    #[test]
    fn ip_literal_sni_and_missing_extensions_give_no_host() {
        let bytes = build_client_hello(Some("10.0.0.1"), &[]);
        assert_eq!(sniff(&bytes), Sniff::ClientHello(ClientHello::default()));
        let bytes = build_client_hello(None, &[]);
        assert_eq!(sniff(&bytes), Sniff::ClientHello(ClientHello::default()));
    }

    #[test]
    fn oversized_and_inconsistent_hellos_are_malformed() {
        // A handshake header announcing 1 MiB.
        assert_eq!(sniff(&[22, 3, 1, 0, 4, 1, 0x10, 0, 0]), Sniff::Malformed);
        // A record of length zero.
        assert_eq!(sniff(&[22, 3, 1, 0, 0]), Sniff::Malformed);
        // A handshake that is not a ClientHello (ServerHello = 2).
        assert_eq!(sniff(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), Sniff::Malformed);
        // An extensions vector claiming more bytes than the hello holds: its length field sits
        // after the record (5) and handshake (4) headers, version, random, session id, one
        // cipher suite and the compression methods (2 + 32 + 1 + 4 + 2).
        let mut bytes = build_client_hello(Some("example.com"), &[]);
        bytes[5 + 4 + 2 + 32 + 1 + 4 + 2] = 0xff;
        assert_eq!(sniff(&bytes), Sniff::Malformed);
    }

    #[test]
    fn endless_tiny_records_stop_at_the_limit() {
        let mut bytes = vec![22, 3, 1, 0, 4, 1, 0, 0x3f, 0xff];
        while bytes.len() < MAX_SNIFF_BYTES {
            bytes.extend([22, 3, 1, 0, 1, 0]);
        }
        assert_eq!(sniff(&bytes), Sniff::Malformed);
    }

    proptest::proptest! {
        #[test]
        fn sniffing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = sniff(&bytes);
        }

        #[test]
        fn a_hello_with_appended_data_still_parses(extra in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut bytes = build_client_hello(Some("example.net"), &["h2"]);
            bytes.extend(extra);
            proptest::prop_assert_eq!(sniff(&bytes), Sniff::ClientHello(hello("example.net", &["h2"])));
        }
    }
}
