//! Broken vendors: refused, silent, 407, 5xx, reset or cut mid-body, closing kept-alive
//! connections. The client gets a fast 502/504 (or the vendor's own status) with a reason; the
//! bytes that crossed the vendor socket are counted exactly; no task hangs.

use pt_testkit::vendor::Fault;

use super::harness::{Case, Expect};

const CLASS: &str = "vendor-faults";

const GET: &str =
    "GET http://shop-a.test/bytes/100 HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n";
const CONNECT: &str = "CONNECT shop-a.test:443 HTTP/1.1\r\nHost: shop-a.test:443\r\n\r\n";

/// The faults, each with what a GET and a CONNECT through it get.
pub fn faults() -> Vec<(Option<Fault>, Expect, Expect)> {
    vec![
        (
            None,
            Expect::VendorFailed(502, "connect_refused"),
            Expect::VendorFailed(502, "connect_refused"),
        ),
        (
            Some(Fault::AlwaysDenyAuth),
            Expect::VendorFailed(502, "vendor_auth"),
            Expect::VendorFailed(502, "vendor_auth"),
        ),
        (
            Some(Fault::Blackhole),
            Expect::VendorFailed(504, "timeout"),
            Expect::VendorFailed(504, "timeout"),
        ),
        (
            Some(Fault::ResetMidBody),
            Expect::Cut(200),
            Expect::Cut(200),
        ),
        (Some(Fault::Truncated), Expect::Cut(200), Expect::Cut(200)),
        (
            Some(Fault::Status(503)),
            Expect::Forwarded(503),
            Expect::VendorFailed(503, "tunnel_refused"),
        ),
        (
            Some(Fault::Status(429)),
            Expect::Forwarded(429),
            Expect::VendorFailed(429, "tunnel_refused"),
        ),
        (
            Some(Fault::CloseAfterResponse),
            Expect::Forwarded(200),
            Expect::Cut(200),
        ),
        // Its CONNECT answer opens a tunnel the vendor keeps open.
        (
            Some(Fault::DropSecondRequest),
            Expect::Forwarded(200),
            Expect::Forwarded(200),
        ),
    ]
}

pub fn cases(fault: Option<Fault>, get: Expect, connect: Expect) -> Vec<Case> {
    let name = format!("{fault:?}");
    vec![
        Case::new(CLASS, format!("GET, vendor {name}"), GET, get),
        Case::new(CLASS, format!("GET again, vendor {name}"), GET, get),
        Case::new(CLASS, format!("CONNECT, vendor {name}"), CONNECT, connect),
    ]
}
