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
