//! HTTP/2 with prior knowledge, frame by frame: requests that are malformed (RFC 9113 §8.1.1)
//! get a stream error or a 400 and nothing reaches the vendor; floods of resets, CONTINUATION,
//! PING and SETTINGS frames end the connection or are absorbed without growth; the meter keeps
//! serving.

use std::time::Duration;

use pt_testkit::meter::TestMeter;
use pt_testkit::vendor::FakeVendor;

use super::h2raw::{
    CONTINUATION, Client, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, HEADERS, Outcome, PING,
    PROTOCOL_ERROR, RST_STREAM, SETTINGS, WINDOW_UPDATE, block, frame, get_fields, headers,
};
use super::harness;

type Fields = Vec<(&'static [u8], &'static [u8])>;

/// One HTTP/2 case: frames after the preface, the stream to watch, what it must get.
pub struct H2Case {
    pub name: &'static str,
    pub frames: Vec<u8>,
    pub stream: u32,
    pub expect: Outcome,
    /// Whether the vendor may see the request (only for well-formed ones).
    pub forwarded: bool,
}

fn case(name: &'static str, frames: Vec<u8>, expect: Outcome) -> H2Case {
    H2Case {
        name,
        frames,
        stream: 1,
        expect,
        forwarded: false,
    }
}

fn with(mut fields: Fields, extra: &[(&'static [u8], &'static [u8])]) -> Fields {
    fields.extend_from_slice(extra);
    fields
}

fn without(fields: Fields, name: &[u8]) -> Fields {
    fields.into_iter().filter(|(n, _)| *n != name).collect()
}

fn replace(fields: Fields, name: &[u8], value: &'static [u8]) -> Fields {
    fields
        .into_iter()
        .map(|(n, v)| if n == name { (n, value) } else { (n, v) })
        .collect()
}

const RESET: Outcome = Outcome::Reset(PROTOCOL_ERROR);
const GOAWAY: Outcome = Outcome::GoAway(PROTOCOL_ERROR);

fn bad_request() -> Outcome {
    Outcome::Answered(400, Some("bad_request".into()))
}

pub fn malformed() -> Vec<H2Case> {
    let get = || get_fields(b"/bytes/10");
    let post = || replace(get(), b":method", b"POST");
    let mut cases = vec![
        H2Case {
            forwarded: true,
            ..case(
                "a well-formed GET",
                headers(1, &get(), true),
                Outcome::Answered(200, None),
            )
        },
        case(
            "transfer-encoding",
            headers(1, &with(get(), &[(b"transfer-encoding", b"chunked")]), true),
            RESET,
        ),
        case(
            "connection",
            headers(1, &with(get(), &[(b"connection", b"keep-alive")]), true),
            RESET,
        ),
        case(
            "keep-alive",
            headers(1, &with(get(), &[(b"keep-alive", b"5")]), true),
            RESET,
        ),
        case(
            "proxy-connection",
            headers(1, &with(get(), &[(b"proxy-connection", b"x")]), true),
            RESET,
        ),
        case(
            "upgrade",
            headers(1, &with(get(), &[(b"upgrade", b"h2c")]), true),
            RESET,
        ),
        case(
            "te other than trailers",
            headers(1, &with(get(), &[(b"te", b"gzip")]), true),
            RESET,
        ),
        // Fields the HPACK layer cannot take are a connection error.
        case(
            "CR in a value",
            headers(1, &with(get(), &[(b"x-a", b"a\rb")]), true),
            GOAWAY,
        ),
        case(
            "LF in a value",
            headers(1, &with(get(), &[(b"x-a", b"a\nb")]), true),
            GOAWAY,
        ),
        case(
            "NUL in a value",
            headers(1, &with(get(), &[(b"x-a", b"a\x00b")]), true),
            GOAWAY,
        ),
        case(
            "upper-case name",
            headers(1, &with(get(), &[(b"X-A", b"b")]), true),
            GOAWAY,
        ),
        case(
            "space in a name",
            headers(1, &with(get(), &[(b"x a", b"b")]), true),
            GOAWAY,
        ),
        case(
            "pseudo-header after a field",
            headers(
                1,
                &[
                    (b":method", b"GET"),
                    (b"x-a", b"b"),
                    (b":scheme", b"http"),
                    (b":authority", b"shop-a.test"),
                    (b":path", b"/"),
                ],
                true,
            ),
            RESET,
        ),
        case(
            "no :method",
            headers(1, &without(get(), b":method"), true),
            RESET,
        ),
        case(
            "no :scheme",
            headers(1, &without(get(), b":scheme"), true),
            RESET,
        ),
        case(
            "no :path",
            headers(1, &without(get(), b":path"), true),
            RESET,
        ),
        case(
            "unknown pseudo-header",
            headers(1, &with(get(), &[(b":foo", b"bar")]), true),
            GOAWAY,
        ),
        case(
            "two :path",
            headers(1, &with(get(), &[(b":path", b"/x")]), true),
            RESET,
        ),
        case(
            "empty :path",
            headers(1, &replace(get(), b":path", b""), true),
            RESET,
        ),
        case(
            "CONNECT without :authority",
            headers(1, &[(b":method", b"CONNECT")], true),
            bad_request(),
        ),
        case(
            "content-length longer than the data",
            {
                let mut f = headers(1, &with(post(), &[(b"content-length", b"5")]), false);
                f.extend(frame(DATA, END_STREAM, 1, b"abc"));
                f
            },
            RESET,
        ),
        case(
            "content-length shorter than the data",
            {
                let mut f = headers(1, &with(post(), &[(b"content-length", b"2")]), false);
                f.extend(frame(DATA, END_STREAM, 1, b"abc"));
                f
            },
            RESET,
        ),
        case(
            ":path *",
            headers(1, &replace(get(), b":path", b"*"), true),
            bad_request(),
        ),
        case(
            ":path without a slash",
            headers(1, &replace(get(), b":path", b"bytes/1"), true),
            RESET,
        ),
        case(
            ":scheme https",
            headers(1, &replace(get(), b":scheme", b"https"), true),
            bad_request(),
        ),
        case(
            ":authority with userinfo",
            headers(1, &replace(get(), b":authority", b"u:p@shop-a.test"), true),
            bad_request(),
        ),
        case(
            ":authority port 99999",
            headers(
                1,
                &replace(get(), b":authority", b"shop-a.test:99999"),
                true,
            ),
            bad_request(),
        ),
        case(
            ":authority port +80",
            headers(1, &replace(get(), b":authority", b"shop-a.test:+80"), true),
            bad_request(),
        ),
        case(
            ":authority private address",
            headers(1, &replace(get(), b":authority", b"169.254.169.254"), true),
            Outcome::Answered(403, Some("destination_not_allowed".into())),
        ),
        case(
            "CONNECT with :path",
            headers(
                1,
                &[
                    (b":method", b"CONNECT"),
                    (b":authority", b"shop-a.test:443"),
                    (b":path", b"/"),
                ],
                true,
            ),
            RESET,
        ),
        case(
            "CONNECT to a private address",
            headers(
                1,
                &[(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:443")],
                false,
            ),
            Outcome::Answered(403, Some("destination_not_allowed".into())),
        ),
        case(
            "CONNECT to a disallowed port",
            headers(
                1,
                &[(b":method", b"CONNECT"), (b":authority", b"shop-a.test:22")],
                false,
            ),
            Outcome::Answered(403, Some("port_not_allowed".into())),
        ),
        // A vendor that reads `_` as `-` would take these for framing (HTTP/1.1 refuses them too).
        case(
            "transfer_encoding",
            headers(
                1,
                &with(post(), &[(b"transfer_encoding", b"chunked")]),
                true,
            ),
            bad_request(),
        ),
        case(
            "content_length",
            headers(1, &with(post(), &[(b"content_length", b"5")]), true),
            bad_request(),
        ),
        case(
            "more fields than limits.max_headers",
            headers(1, &with(get(), &[(&b"x-a"[..], &b"1"[..]); 101]), true),
            Outcome::Answered(431, Some("head_too_large".into())),
        ),
        case(
            "TRACE",
            headers(1, &replace(get(), b":method", b"TRACE"), true),
            Outcome::Answered(405, Some("method_not_allowed".into())),
        ),
        case(
            "trailers with content-length",
            {
                let mut f = headers(1, &post(), false);
                f.extend(frame(DATA, 0, 1, b"abc"));
                f.extend(headers(1, &[(b"content-length", b"3")], true));
                f
            },
            bad_request(),
        ),
        case(
            "trailers with a pseudo-header",
            {
                let mut f = headers(1, &post(), false);
                f.extend(frame(DATA, 0, 1, b"abc"));
                f.extend(headers(1, &[(b":path", b"/smuggled")], true));
                f
            },
            bad_request(),
        ),
        case(
            "trailers with host",
            {
                let mut f = headers(1, &post(), false);
                f.extend(frame(DATA, 0, 1, b"abc"));
                f.extend(headers(1, &[(b"host", b"other.test")], true));
                f
            },
            bad_request(),
        ),
        case(
            "trailers without END_STREAM",
            {
                let mut f = headers(1, &post(), false);
                f.extend(frame(DATA, 0, 1, b"abc"));
                f.extend(headers(1, &[(b"x-sum", b"1")], false));
                f
            },
            RESET,
        ),
    ];
    cases.push(H2Case {
        forwarded: true,
        ..case(
            "plain trailers are dropped, the request forwarded",
            {
                let mut f = headers(1, &post(), false);
                f.extend(frame(DATA, 0, 1, b"abc"));
                f.extend(headers(1, &[(b"x-sum", b"1")], true));
                f
            },
            Outcome::Answered(200, None),
        )
    });
    cases
}

/// Floods: each must end the connection (GOAWAY) or be absorbed, never grow without bound.
pub fn floods() -> Vec<H2Case> {
    let get = get_fields(b"/bytes/10");
    let mut rapid_reset = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        rapid_reset.extend(headers(id, &get, true));
        rapid_reset.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let mut continuation = frame(HEADERS, 0, 1, &block(&get));
    for _ in 0..10_000 {
        continuation.extend(frame(CONTINUATION, 0, 1, &block(&[(b"x-a", &[b'a'; 64])])));
    }
    continuation.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
    let bomb_value: &'static [u8] = Box::leak(vec![b'a'; 16 * 1024].into_boxed_slice());
    let mut bomb_fields = get.clone();
    for _ in 0..8 {
        bomb_fields.push((b"x-bomb", bomb_value));
    }
    let mut pings = Vec::new();
    for i in 0..10_000u64 {
        pings.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    let mut settings = Vec::new();
    for _ in 0..10_000 {
        settings.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    vec![
        case(
            "rapid reset",
            rapid_reset,
            Outcome::GoAway(ENHANCE_YOUR_CALM),
        ),
        case(
            "CONTINUATION flood",
            continuation,
            Outcome::GoAway(ENHANCE_YOUR_CALM),
        ),
        case(
            "header list past the limit",
            {
                // A block whose fields alone are past the limit, split over CONTINUATION frames.
                let encoded = block(&bomb_fields);
                let mut f = frame(HEADERS, END_STREAM, 1, &encoded[..16_000]);
                for (i, piece) in encoded[16_000..].chunks(16_000).enumerate() {
                    let last = 16_000 + (i + 1) * 16_000 >= encoded.len();
                    f.extend(frame(
                        CONTINUATION,
                        if last { END_HEADERS } else { 0 },
                        1,
                        piece,
                    ));
                }
                f
            },
            Outcome::GoAway(ENHANCE_YOUR_CALM),
        ),
        H2Case {
            stream: 3,
            forwarded: true,
            ..case(
                "PING flood, then a request",
                {
                    let mut f = pings;
                    f.extend(headers(3, &get, true));
                    f
                },
                Outcome::Answered(200, None),
            )
        },
        H2Case {
            stream: 3,
            forwarded: true,
            ..case(
                "SETTINGS flood, then a request",
                {
                    let mut f = settings;
                    f.extend(headers(3, &get, true));
                    f
                },
                Outcome::Answered(200, None),
            )
        },
        case(
            "window overflow",
            frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            Outcome::GoAway(0x3),
        ),
        case(
            "DATA on stream 0",
            frame(DATA, 0, 0, b"x"),
            Outcome::GoAway(PROTOCOL_ERROR),
        ),
        case(
            "even stream id",
            headers(2, &get, true),
            Outcome::GoAway(PROTOCOL_ERROR),
        ),
    ]
}

/// Runs `cases`; returns one line per failed expectation.
pub async fn run(meter: &TestMeter, vendor: &FakeVendor, cases: &[H2Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let before = vendor.bytes_from_meter();
        let mut client = Client::connect(meter.proxy()).await;
        client.send(&case.frames).await;
        let outcome = client.outcome(case.stream, Duration::from_secs(5)).await;
        drop(client);
        let forwarded = vendor.bytes_from_meter() - before;
        if outcome != case.expect {
            failures.push(format!(
                "[h2] {}: expected {:?}, got {outcome:?}",
                case.name, case.expect
            ));
        }
        if !case.forwarded && forwarded != 0 {
            failures.push(format!(
                "[h2] {}: {forwarded} bytes reached the vendor",
                case.name
            ));
        }
        let healthy = harness::send(meter, harness::HEALTHY).await;
        if healthy.status != Some(200) {
            failures.push(format!("[h2] {}: the meter stopped serving", case.name));
        }
    }
    failures
}
