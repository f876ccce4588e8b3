//! Running hostile cases: each one on a fresh connection, its answer read raw and checked
//! exactly, the vendor's book checked for bytes that must not have reached it, and the meter
//! checked to still serve. Failures are collected, so one broken case does not hide the rest.

use std::time::Duration;

use pt_testkit::meter::TestMeter;
use pt_testkit::vendor::FakeVendor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a case must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Refused by the meter with this status and reason; nothing reaches the vendor and the
    /// connection is closed.
    Refused(u16, &'static str),
    /// Refused with this status and reason, nothing forwarded; the connection may stay open.
    RefusedKeepingConnection(u16, &'static str),
    /// Forwarded to the vendor as one request, answered with this status.
    Forwarded(u16),
    /// The vendor leg failed: the meter's own answer with this status and reason (what
    /// crossed the vendor socket before the failure is counted, not refused).
    VendorFailed(u16, &'static str),
    /// Answered with this status, then cut short (the connection closes before the body's
    /// end, or, for a tunnel, after what the vendor sent).
    Cut(u16),
}

/// One hostile input.
#[derive(Clone, Debug)]
pub struct Case {
    pub class: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

impl Case {
    pub fn new(
        class: &'static str,
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        expect: Expect,
    ) -> Case {
        Case {
            class,
            name: name.into(),
            bytes: bytes.into(),
            expect,
        }
    }
}

/// An answer as read off the wire.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub head: String,
    /// What arrived of the body.
    pub body: Vec<u8>,
    /// The body arrived whole (by its `Content-Length`).
    pub complete: bool,
    /// The meter closed the connection after the answer.
    pub closed: bool,
}

/// How long a case may take to be answered; every expected answer is immediate.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one answer: its head, its body by `Content-Length` (none for a `HEAD` request), and
/// whether the connection then closes (within a short wait).
pub async fn read_answer(stream: &mut TcpStream, head_request: bool) -> Answer {
    read_answer_to(stream, head_request, false).await
}

/// Reads one answer; with `tunnel`, a 2xx answer is a tunnel whose bytes are read until the
/// meter closes it (for a little while).
async fn read_answer_to(stream: &mut TcpStream, head_request: bool, tunnel: bool) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut answer = Answer::default();
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end
            && answer.status.is_none()
        {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            answer.status = head.get(9..12).and_then(|s| s.parse().ok());
            answer.reason = header(&head, "x-proxy-telemetry-error");
            answer.head = head;
        }
        if let (Some(end), Some(status)) = (head_end, answer.status) {
            let length = header(&answer.head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|_| !head_request || !(200..300).contains(&status))
                .unwrap_or(0);
            if tunnel && (200..300).contains(&status) {
                answer.body = buf[end + 4..].to_vec();
                let mut rest = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest));
                answer.closed = read.await.is_ok();
                answer.body.extend(rest);
                answer.complete = true;
                return answer;
            }
            answer.body = buf[end + 4..buf.len().min(end + 4 + length)].to_vec();
            if buf.len() >= end + 4 + length {
                answer.complete = true;
                answer.closed = header(&answer.head, "connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    && closes(stream).await;
                return answer;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                answer.closed = true;
                if answer.status.is_none() {
                    answer.head = String::from_utf8_lossy(&buf).into_owned();
                }
                return answer;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                if answer.status.is_none() {
                    answer.head = String::from_utf8_lossy(&buf).into_owned();
                }
                return answer;
            }
        }
    }
}

/// Whether the peer closes the connection within a moment.
async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = [0u8; 1024];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A request the meter must answer 200 after every case: it still serves.
pub const HEALTHY: &[u8] =
    b"GET http://shop-a.test/bytes/10 HTTP/1.1\r\nHost: shop-a.test\r\nConnection: close\r\n\r\n";

/// Sends `bytes` on a new connection and reads the answer.
pub async fn send(meter: &TestMeter, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(meter.proxy()).await.expect("connect");
    if stream.write_all(bytes).await.is_err() {
        return Answer {
            closed: true,
            ..Answer::default()
        };
    }
    read_answer_to(
        &mut stream,
        bytes.starts_with(b"HEAD "),
        bytes.starts_with(b"CONNECT "),
    )
    .await
}

/// Runs `cases`; returns one line per failed expectation.
pub async fn run(meter: &TestMeter, vendor: &FakeVendor, cases: &[Case]) -> Vec<String> {
    run_with_health(meter, vendor, cases, HEALTHY).await
}

/// Runs `cases`, checking after each that `healthy` is still answered 200.
pub async fn run_with_health(
    meter: &TestMeter,
    vendor: &FakeVendor,
    cases: &[Case],
    healthy: &[u8],
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let before = vendor.bytes_from_meter();
        let answer = send(meter, &case.bytes).await;
        let forwarded = vendor.bytes_from_meter() - before;
        let mut fail = |what: String| {
            failures.push(format!("[{}] {}: {what}", case.class, case.name));
        };
        match case.expect {
            Expect::Refused(status, reason) | Expect::RefusedKeepingConnection(status, reason) => {
                if answer.status != Some(status) || answer.reason.as_deref() != Some(reason) {
                    fail(format!(
                        "expected {status} {reason}, got {:?} {:?}: {:?}",
                        answer.status, answer.reason, answer.head
                    ));
                }
                if matches!(case.expect, Expect::Refused(..)) && !answer.closed {
                    fail("the connection stayed open".into());
                }
                if forwarded != 0 {
                    fail(format!("{forwarded} bytes reached the vendor"));
                }
            }
            Expect::Forwarded(status) => {
                if answer.status != Some(status) || answer.reason.is_some() || !answer.complete {
                    fail(format!(
                        "expected the vendor's {status} whole, got {:?} {:?}: {:?}",
                        answer.status, answer.reason, answer.head
                    ));
                }
                if forwarded == 0 {
                    fail("nothing reached the vendor".into());
                }
            }
            Expect::VendorFailed(status, reason) => {
                if answer.status != Some(status) || answer.reason.as_deref() != Some(reason) {
                    fail(format!(
                        "expected {status} {reason}, got {:?} {:?}: {:?}",
                        answer.status, answer.reason, answer.head
                    ));
                }
            }
            Expect::Cut(status) => {
                if answer.status != Some(status) || answer.reason.is_some() || !answer.closed {
                    fail(format!(
                        "expected {status} cut short, got {:?} {:?} closed {}: {:?}",
                        answer.status, answer.reason, answer.closed, answer.head
                    ));
                }
            }
        }
        let healthy = send(meter, healthy).await;
        if healthy.status != Some(200) {
            failures.push(format!(
                "[{}] {}: the meter stopped serving: {:?}",
                case.class, case.name, healthy.head
            ));
        }
    }
    failures
}

/// Fails the test with every failure listed.
#[track_caller]
pub fn assert_none(failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
