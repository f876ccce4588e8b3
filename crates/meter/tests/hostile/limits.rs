//! Oversized requests: a request line or head past `limits.max_header_bytes` (414, 431), more
//! fields than `limits.max_headers` (431). Refused, nothing forwarded, the meter unaffected.

use super::harness::{Case, Expect};

const CLASS: &str = "limits";

/// Cases for a meter with `max_header_bytes: 16384` and `max_headers: 20`.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let too_large = Expect::Refused(431, "head_too_large");
    for size in [16_384, 20_000, 100_000, 1_000_000] {
        cases.push(Case::new(
            CLASS,
            format!("request line of {size} bytes"),
            format!(
                "GET http://shop-a.test/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "u".repeat(size)
            ),
            Expect::Refused(414, "head_too_large"),
        ));
        cases.push(Case::new(
            CLASS,
            format!("one field of {size} bytes"),
            format!(
                "GET http://shop-a.test/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(size)
            ),
            too_large,
        ));
    }
    for count in [20, 21, 100, 1000] {
        let fields: String = (0..count).map(|i| format!("X-H{i}: v\r\n")).collect();
        cases.push(Case::new(
            CLASS,
            format!("{count} fields besides Host"),
            format!("GET http://shop-a.test/ HTTP/1.1\r\nHost: x\r\n{fields}\r\n"),
            too_large,
        ));
    }
    // Host, Connection and 18 more: 20.
    let fields: String = (0..18).map(|i| format!("X-H{i}: v\r\n")).collect();
    cases.push(Case::new(
        CLASS,
        "exactly the field limit",
        format!("GET http://shop-a.test/bytes/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fields}\r\n"),
        Expect::Forwarded(200),
    ));
    let line = format!(
        "GET http://shop-a.test/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "u".repeat(16_000)
    );
    cases.push(Case::new(
        CLASS,
        "a long path within the limit",
        line,
        Expect::Forwarded(200),
    ));
    cases
}
