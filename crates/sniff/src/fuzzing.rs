//! Entry points of the fuzz targets in `fuzz/`, with the invariants they check. `cargo test`
//! runs them over the stored corpus (`tests/fuzz_corpus.rs`), so every input a fuzzer ever
//! found interesting stays a regression test.

use crate::Host;
use crate::authority::{parse_authority, parse_host};
use crate::client_hello::{Sniff, sniff};

/// CONNECT authorities and hosts: never panic; what parses displays without whitespace or
/// control bytes (it is written into request lines) and re-parses to itself.
pub fn connect_authority(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(authority) = parse_authority(text) {
        let shown = authority.to_string();
        assert!(
            !shown
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
            "{shown:?}"
        );
        assert_eq!(parse_authority(&shown), Ok(authority));
    }
    if let Ok(host) = parse_host(text) {
        assert_eq!(parse_host(&host.to_string()), Ok(host));
    }
}

/// ClientHello sniffing: never panics, bounded output, and a verdict on a prefix is final: a
/// prefix that is already a ClientHello (or already not TLS) gives the same answer with more
/// bytes appended, which is what lets the proxy stop reading early.
pub fn client_hello(data: &[u8]) {
    let whole = sniff(data);
    if let Sniff::ClientHello(hello) = &whole {
        assert!(hello.alpn.len() <= 8);
        assert!(matches!(hello.sni, None | Some(Host::Name(_))));
    }
    for cut in [
        1,
        data.len() / 3,
        data.len() / 2,
        data.len().saturating_sub(1),
    ] {
        let prefix = sniff(&data[..cut.min(data.len())]);
        match prefix {
            Sniff::ClientHello(_) | Sniff::NotTls => assert_eq!(prefix, whole, "cut at {cut}"),
            Sniff::NeedMore | Sniff::Malformed => {}
        }
    }
}

/// HTTP/1.1 observation: heads never panic and report lengths within the input; a body
/// followed in pieces ends at the same byte, or fails the same way, as in one piece (the
/// meter sees whatever segmentation the network produced). The first byte picks the framing
/// and the split points, the rest is the message.
pub fn http1_framing(data: &[u8]) {
    use crate::http1::{Body, Framing, RequestKind, parse_request_head, parse_response_head};
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    if let Ok(Some(head)) = parse_request_head(input, 8192) {
        assert!(head.len <= input.len());
    }
    if let Ok(Some(head)) = parse_response_head(input, 8192, RequestKind::Other) {
        assert!(head.len <= input.len());
    }
    let framing = match selector % 3 {
        0 => Framing::Chunked,
        1 => Framing::Length(u64::from(selector)),
        _ => Framing::UntilClose,
    };
    let whole = Body::new(framing).advance(input);
    let piece = usize::from(selector / 3).max(1);
    let mut body = Body::new(framing);
    let mut consumed = 0;
    let mut pieces = Ok(false);
    for chunk in input.chunks(piece) {
        match body.advance(chunk) {
            Ok(progress) => {
                consumed += progress.consumed;
                if progress.done {
                    pieces = Ok(true);
                    break;
                }
            }
            Err(e) => {
                pieces = Err(e);
                break;
            }
        }
    }
    match (whole, pieces) {
        (Ok(w), Ok(done)) => {
            assert!(w.consumed <= input.len());
            assert_eq!((w.consumed, w.done), (consumed, done));
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (w, p) => panic!("whole {w:?} but in pieces {p:?}"),
    }
}

/// SOCKS5 messages: never panic, a parsed length lies within the input, and every proper prefix
/// of a complete message is incomplete (so reading until complete never over-reads).
pub fn socks5(data: &[u8]) {
    use crate::socks5::{credentials, greeting, reply, request};
    fn check<T: std::fmt::Debug>(data: &[u8], parse: impl Fn(&[u8]) -> crate::socks5::Parsed<T>) {
        if let Ok(Some((_, len))) = parse(data) {
            assert!(len <= data.len());
            for cut in 0..len {
                assert!(matches!(parse(&data[..cut]), Ok(None)), "cut at {cut}");
            }
        }
    }
    check(data, greeting);
    check(data, credentials);
    check(data, request);
    check(data, reply);
}
