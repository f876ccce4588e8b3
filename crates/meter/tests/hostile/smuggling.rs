//! HTTP/1.1 request smuggling: every way of framing a body that two parsers could read
//! differently is refused with 400 before a byte reaches the vendor; the plain spellings of one
//! framing are forwarded as one request.

use super::harness::{Case, Expect};

const CLASS: &str = "smuggling";
const REFUSED: Expect = Expect::Refused(400, "bad_request");
const BAD_BODY: Expect = Expect::Refused(400, "bad_framing");

fn post(fields: &str, body: &str) -> Vec<u8> {
    format!(
        "POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n{fields}\r\n{body}"
    )
    .into_bytes()
}

/// Spellings of `Transfer-Encoding: chunked` that are exactly one `chunked` (forwarded) and
/// those that are not (refused).
const CODINGS_ACCEPTED: [&str; 5] = ["chunked", "Chunked", "CHUNKED", " chunked", "chunked\t"];
const CODINGS_REFUSED: [&str; 14] = [
    "identity, chunked",
    "chunked, identity",
    "chunked,chunked",
    "gzip, chunked",
    "xchunked",
    "chunkedx",
    "chunk",
    "chunked;q=1",
    "\"chunked\"",
    "chunked, ",
    ", chunked",
    "gzip",
    "identity",
    "",
];

/// `Content-Length` values that are not one plain decimal number.
const LENGTHS_REFUSED: [&str; 12] = [
    "+3",
    "-3",
    "3 3",
    "3,3",
    "3, 3",
    "0x3",
    "3.0",
    "3e0",
    "",
    "99999999999999999999",
    "１",
    "3a",
];

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let chunked_body = "3\r\nabc\r\n0\r\n\r\n";
    for coding in CODINGS_ACCEPTED {
        cases.push(Case::new(
            CLASS,
            format!("TE {coding:?}"),
            post(&format!("Transfer-Encoding: {coding}\r\n"), chunked_body),
            Expect::Forwarded(200),
        ));
    }
    for coding in CODINGS_REFUSED {
        cases.push(Case::new(
            CLASS,
            format!("TE {coding:?}"),
            post(&format!("Transfer-Encoding: {coding}\r\n"), chunked_body),
            REFUSED,
        ));
    }
    for length in LENGTHS_REFUSED {
        cases.push(Case::new(
            CLASS,
            format!("CL {length:?}"),
            post(&format!("Content-Length: {length}\r\n"), "abc"),
            REFUSED,
        ));
    }
    cases.push(Case::new(
        CLASS,
        "CL with leading zeros is a number",
        post("Content-Length: 0003\r\n", "abc"),
        Expect::Forwarded(200),
    ));
    // Both framings, in either order and with every spelling of each.
    for coding in CODINGS_ACCEPTED.iter().chain(&CODINGS_REFUSED[..4]) {
        for (name, fields) in [
            (
                "CL.TE",
                format!("Content-Length: 5\r\nTransfer-Encoding: {coding}\r\n"),
            ),
            (
                "TE.CL",
                format!("Transfer-Encoding: {coding}\r\nContent-Length: 5\r\n"),
            ),
        ] {
            cases.push(Case::new(
                CLASS,
                format!("{name} {coding:?}"),
                post(&fields, "0\r\n\r\n"),
                REFUSED,
            ));
        }
    }
    for (name, fields) in [
        (
            "two TE",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("two CL equal", "Content-Length: 3\r\nContent-Length: 3\r\n"),
        (
            "two CL differing",
            "Content-Length: 3\r\nContent-Length: 4\r\n",
        ),
        ("TE obs-fold", "Transfer-Encoding:\r\n chunked\r\n"),
        ("CL obs-fold", "Content-Length: 3\r\n 4\r\n"),
        ("space before colon", "Transfer-Encoding : chunked\r\n"),
        ("tab before colon", "Content-Length\t: 3\r\n"),
        ("leading space name", " Transfer-Encoding: chunked\r\n"),
        (
            "Transfer_Encoding",
            "Transfer_Encoding: chunked\r\nContent-Length: 3\r\n",
        ),
        ("Content_Length", "Content_Length: 3\r\n"),
        // A hop drops what its Connection names: the vendor would get the body without its
        // length and read it as a request the meter never admitted.
        (
            "Connection names CL",
            "Connection: Content-Length\r\nContent-Length: 3\r\n",
        ),
        (
            "Connection names TE",
            "Connection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("TRANSFER_ENCODING", "TRANSFER_ENCODING: chunked\r\n"),
        ("Keep_Alive", "Keep_Alive: 5\r\nContent-Length: 3\r\n"),
        (
            "Proxy_Connection",
            "Proxy_Connection: keep-alive\r\nContent-Length: 3\r\n",
        ),
        (
            "Proxy_Authorization",
            "Proxy_Authorization: Basic eDp5\r\nContent-Length: 3\r\n",
        ),
        ("control byte in TE", "Transfer-Encoding: chunked\x0b\r\n"),
        ("NUL in value", "Content-Length: 3\r\nX-A: a\x00b\r\n"),
        ("DEL in value", "Content-Length: 3\r\nX-A: a\x7fb\r\n"),
        ("bare CR in value", "Content-Length: 3\r\nX-A: a\rb\r\n"),
        ("bare LF in fields", "Content-Length: 3\nX-A: b\r\n"),
        ("non-token name", "Content-Length: 3\r\nX(A): b\r\n"),
    ] {
        cases.push(Case::new(CLASS, name, post(fields, "abc"), REFUSED));
    }
    for (name, bytes) in [
        (
            "bare LF request line",
            "POST http://shop-a.test/upload HTTP/1.1\nHost: shop-a.test\r\n\r\n",
        ),
        (
            "bare LF terminator",
            "POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\n\n",
        ),
        (
            "bare LF end of head",
            "POST http://shop-a.test/upload HTTP/1.1\r\nHost: shop-a.test\r\n\n",
        ),
        (
            "TE in HTTP/1.0",
            "POST http://shop-a.test/upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            "GET http://shop-a.test/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host",
            "GET http://shop-a.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "double space",
            "GET  http://shop-a.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "tab separator",
            "GET\thttp://shop-a.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ] {
        cases.push(Case::new(CLASS, name, bytes.as_bytes(), REFUSED));
    }
    for version in ["http/1.1", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/1"] {
        cases.push(Case::new(
            CLASS,
            format!("version {version}"),
            format!("GET http://shop-a.test/ {version}\r\nHost: a\r\n\r\n").into_bytes(),
            Expect::Refused(505, "bad_request"),
        ));
    }
    // Chunked bodies that break their framing in the bytes that came with the head: refused
    // before the head leaves.
    for (name, body) in [
        ("chunk size with a trailing space", "3 \r\nabc\r\n0\r\n\r\n"),
        ("chunk size with a tab", "3\t\r\nabc\r\n0\r\n\r\n"),
        ("hex prefix", "0x3\r\nabc\r\n0\r\n\r\n"),
        ("negative size", "-3\r\nabc\r\n0\r\n\r\n"),
        ("overflowing size", "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ("bare LF after size", "3\nabc\r\n0\r\n\r\n"),
        ("data longer than size", "3\r\nabcd\r\n0\r\n\r\n"),
        ("bare LF after data", "3\r\nabc\n0\r\n\r\n"),
        ("bare LF in trailers", "3\r\nabc\r\n0\r\nX: 1\n\r\n"),
        ("empty size", "\r\nabc\r\n0\r\n\r\n"),
    ] {
        cases.push(Case::new(
            CLASS,
            name,
            post("Transfer-Encoding: chunked\r\n", body),
            BAD_BODY,
        ));
    }
    for (name, body) in [
        ("chunk extension", "3;name=value\r\nabc\r\n0\r\n\r\n"),
        ("trailers", "3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"),
        ("upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n"),
    ] {
        cases.push(Case::new(
            CLASS,
            name,
            post("Transfer-Encoding: chunked\r\n", body),
            Expect::Forwarded(200),
        ));
    }
    cases
}
