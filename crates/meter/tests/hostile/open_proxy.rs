//! Open-proxy abuse: no or wrong client credentials (407), ports the meter does not carry (403),
//! vendors that do not exist (400). Nothing is forwarded.

use base64::Engine;

use super::harness::{Case, Expect};

const CLASS: &str = "open-proxy";

pub const PASSWORD: &str = "client-secret-4f1a";

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn both_forms(cases: &mut Vec<Case>, name: &str, fields: &str, expect: Expect) {
    cases.push(Case::new(
        CLASS,
        format!("GET {name}"),
        format!("GET http://shop-a.test/ HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n{fields}\r\n"),
        expect,
    ));
    cases.push(Case::new(
        CLASS,
        format!("CONNECT {name}"),
        format!("CONNECT shop-a.test:443 HTTP/1.1\r\nHost: shop-a.test:443\r\n{fields}\r\n"),
        expect,
    ));
}

/// A request with the right credentials, to check the meter still serves.
pub fn healthy() -> Vec<u8> {
    let right = basic(&format!("crawlers/pod-1:{PASSWORD}"));
    format!("GET http://shop-a.test/bytes/10 HTTP/1.1\r\nHost: shop-a.test\r\nProxy-Authorization: {right}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Against a meter that requires [`PASSWORD`].
pub fn credentials() -> Vec<Case> {
    let mut cases = Vec::new();
    let required = Expect::Refused(407, "auth_required");
    let failed = Expect::Refused(407, "auth_failed");
    both_forms(&mut cases, "without credentials", "", required);
    let wrong = basic("crawlers/pod-1:wrong");
    let right = basic(&format!("crawlers/pod-1:{PASSWORD}"));
    for (name, value) in [
        ("wrong password", wrong.as_str()),
        ("bearer token", "Bearer abc"),
        ("digest", "Digest username=\"x\""),
        ("bad base64", "Basic !!!"),
        ("no colon", "Basic Y3Jhd2xlcnM="),
        ("empty", ""),
        ("prefix of the password", &basic("p:client-secret")),
        ("password with a suffix", &basic(&format!("p:{PASSWORD}x"))),
    ] {
        both_forms(
            &mut cases,
            name,
            &format!("Proxy-Authorization: {value}\r\n"),
            failed,
        );
    }
    both_forms(
        &mut cases,
        "two credentials",
        &format!("Proxy-Authorization: {right}\r\nProxy-Authorization: {right}\r\n"),
        failed,
    );
    both_forms(
        &mut cases,
        "right password",
        &format!("Proxy-Authorization: {right}\r\n"),
        Expect::Forwarded(200),
    );
    // CONNECT forwarded answers 200 and then is a tunnel: the harness reads the answer only.
    cases
}

/// Ports and vendors, against a meter without client credentials.
pub fn ports_and_vendors() -> Vec<Case> {
    let mut cases = Vec::new();
    let not_allowed = Expect::Refused(403, "port_not_allowed");
    for port in [22, 25, 80, 8080, 3306, 6379] {
        cases.push(Case::new(
            CLASS,
            format!("CONNECT port {port}"),
            format!("CONNECT shop-a.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            not_allowed,
        ));
    }
    for port in [22, 25, 443, 1023] {
        cases.push(Case::new(
            CLASS,
            format!("GET port {port}"),
            format!(
                "GET http://shop-a.test:{port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
            not_allowed,
        ));
    }
    // A vendor answers TRACE with the request it received: the credentials the meter adds for
    // it would come back to the client.
    for method in ["TRACE", "trace"] {
        cases.push(Case::new(
            CLASS,
            format!("{method} with Max-Forwards: 0"),
            format!("{method} http://shop-a.test/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n"),
            Expect::RefusedKeepingConnection(405, "method_not_allowed"),
        ));
    }
    // A refused request without a body leaves the connection in step: it stays open.
    cases.push(Case::new(
        CLASS,
        "GET port 22, keep-alive",
        "GET http://shop-a.test:22/ HTTP/1.1\r\nHost: x\r\n\r\n",
        Expect::RefusedKeepingConnection(403, "port_not_allowed"),
    ));
    for (name, fields, expect) in [
        (
            "unknown vendor",
            "X-Proxy-Vendor: vendor-z\r\n",
            Expect::Refused(400, "unknown_vendor"),
        ),
        (
            "two vendor headers",
            "X-Proxy-Vendor: vendor-a\r\nX-Proxy-Vendor: vendor-a\r\n",
            Expect::Refused(400, "bad_request"),
        ),
        (
            "vendor header with control byte",
            "X-Proxy-Vendor: vendor\x01a\r\n",
            Expect::Refused(400, "bad_request"),
        ),
    ] {
        both_forms(&mut cases, name, fields, expect);
    }
    cases
}
