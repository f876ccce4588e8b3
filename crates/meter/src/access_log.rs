//! The access log: one JSON line per request and tunnel, the full-detail companion of the
//! bounded metrics (full destination host, bytes each way, status, duration).
//!
//! Lines go to a [`AccessSink`]. The production sink hands them to a writer thread through a
//! bounded queue and drops lines when the queue is full: a slow log consumer must never slow
//! crawler traffic (metering and logging fail open; the metrics stay exact). URLs are logged
//! without userinfo and query; credentials are never part of a record.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pt_sniff::authority::Dotted;

/// One access-log line.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub client: std::net::SocketAddr,
    pub vendor: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub protocol: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub url: Option<&'a str>,
    pub status: Option<u16>,
    /// How the exchange ended (see `Outcome`), with the rejection or vendor-error label and the
    /// cause, when there was one.
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub error: Option<&'a str>,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub duration: std::time::Duration,
    pub sni: Option<&'a str>,
    pub alpn: &'a [String],
    pub tunnel_inner: Option<&'a str>,
    /// For tunnels: which side ended first (`client` or `vendor`).
    pub closed_by: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// The record as one line of JSON, stamped with the current time.
    ///
    /// Written by hand rather than through serde: a line per request is on the hot path, and
    /// this costs a fraction of a generic serializer with per-line timestamp formatting.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(384);
        out.push_str("{\"ts\":\"");
        timestamp(&mut out);
        out.push_str("\",\"client\":\"");
        match self.client {
            std::net::SocketAddr::V4(client) => {
                out.push_str(Dotted::new(*client.ip()).as_str());
                out.push(':');
                out.push_str(itoa::Buffer::new().format(client.port()));
            }
            client => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{client}"));
            }
        }
        out.push('"');
        field(&mut out, "vendor", self.vendor);
        field(&mut out, "namespace", self.namespace);
        field(&mut out, "pod", self.pod);
        field(&mut out, "protocol", self.protocol);
        field(&mut out, "method", self.method);
        field(&mut out, "host", self.host);
        number(&mut out, "port", u64::from(self.port));
        if let Some(url) = self.url {
            field(&mut out, "url", url);
        }
        if let Some(status) = self.status {
            number(&mut out, "status", u64::from(status));
        }
        field(&mut out, "outcome", self.outcome);
        if let Some(reason) = self.reason {
            field(&mut out, "reason", reason);
        }
        if let Some(error) = self.error {
            field(&mut out, "error", error);
        }
        number(&mut out, "sent_bytes", self.sent_bytes);
        number(&mut out, "received_bytes", self.received_bytes);
        // Milliseconds with microsecond resolution: plenty for a log line.
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        out.push_str(",\"duration_ms\":");
        out.push_str(itoa::Buffer::new().format(micros / 1000));
        out.push('.');
        three_digits(&mut out, (micros % 1000) as u32);
        if let Some(sni) = self.sni {
            field(&mut out, "sni", sni);
        }
        if !self.alpn.is_empty() {
            out.push_str(",\"alpn\":[");
            for (i, protocol) in self.alpn.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(&mut out, protocol);
            }
            out.push(']');
        }
        if let Some(inner) = self.tunnel_inner {
            field(&mut out, "tunnel_inner", inner);
        }
        if let Some(side) = self.closed_by {
            field(&mut out, "closed_by", side);
        }
        out.push('}');
        out
    }
}

/// `n` (below 1000) as exactly three digits, for millisecond and microsecond fractions.
fn three_digits(out: &mut String, n: u32) {
    for digit in [n / 100 % 10, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    string(out, value);
}

fn number(out: &mut String, name: &str, value: u64) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    out.push_str(itoa::Buffer::new().format(value));
}

/// A JSON string: quotes, backslashes and control characters escaped.
fn string(out: &mut String, value: &str) {
    out.push('"');
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// The current UTC time as `2026-11-24T03:04:26.925Z`; the part up to the seconds is formatted
/// once per second per thread.
fn timestamp(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != now.as_secs() {
            let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            cached.1 = text.trim_end_matches('Z').to_owned();
            cached.0 = now.as_secs();
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    three_digits(out, now.subsec_millis());
    out.push('Z');
}

/// Where access-log lines go.
pub trait AccessSink: Send + Sync + std::fmt::Debug {
    fn write_line(&self, line: String);
    /// Writes out whatever is buffered (called once the meter has drained).
    fn flush(&self) {}
}

/// Discards every line (access log disabled).
#[derive(Debug)]
pub struct NoAccessLog;

impl AccessSink for NoAccessLog {
    fn write_line(&self, _: String) {}
}

/// Keeps lines in memory, for tests and the demo.
#[derive(Debug, Default)]
pub struct MemoryAccessLog {
    lines: Mutex<Vec<String>>,
}

impl MemoryAccessLog {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl AccessSink for MemoryAccessLog {
    fn write_line(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }
}

/// Writes lines to standard output from a dedicated thread.
///
/// Producers append to a shared buffer and never wake the writer: waking a thread per line
/// costs a context switch per request, which on a busy meter is more than the request itself.
/// The writer drains the buffer every [`FLUSH_INTERVAL`] instead.
#[derive(Debug)]
pub struct StdoutAccessLog {
    shared: Arc<LogBuffer>,
}

#[derive(Debug, Default)]
struct LogBuffer {
    lines: Mutex<Vec<String>>,
    dropped: AtomicU64,
}

/// Lines buffered before new ones are dropped: several flush intervals of a busy meter.
const MAX_BUFFERED_LINES: usize = 64 * 1024;
/// How often the writer drains the buffer: log lines appear within this delay.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl StdoutAccessLog {
    pub fn start() -> StdoutAccessLog {
        let shared = Arc::new(LogBuffer::default());
        let buffer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    buffer.write_out(&mut batch);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread; access log disabled");
        }
        StdoutAccessLog { shared }
    }
}

impl LogBuffer {
    /// Moves the buffered lines to standard output. `batch` is scratch space, reused.
    fn write_out(&self, batch: &mut Vec<String>) {
        std::mem::swap(
            batch,
            &mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        for line in batch.drain(..) {
            let _ = writeln!(out, "{line}");
        }
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(out, "{{\"access_log_dropped_lines\":{lost}}}");
        }
        let _ = out.flush();
        // The shared buffer keeps its capacity; this one need not keep a burst's.
        batch.shrink_to(MAX_BUFFERED_LINES / 16);
    }
}

impl AccessSink for StdoutAccessLog {
    fn flush(&self) {
        self.shared.write_out(&mut Vec::new());
    }

    fn write_line(&self, line: String) {
        let mut lines = self.shared.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() < MAX_BUFFERED_LINES {
            lines.push(line);
        } else {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `http://authority` and the path of `path_and_query`, without the query: what the access log
/// shows of an absolute-form target.
pub fn redact_target(authority: &str, path_and_query: &str) -> String {
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut out = String::with_capacity(7 + authority.len() + path.len());
    out.push_str("http://");
    out.push_str(authority);
    out.push_str(path);
    out
}

/// `scheme://host[:port]/path` of a URI: userinfo and query are left out.
pub fn redact_uri(uri: &http::Uri) -> String {
    let mut out = String::new();
    if let Some(scheme) = uri.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(host) = uri.host() {
        out.push_str(host);
    }
    if let Some(port) = uri.port_u16() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(uri.path());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_of_valid_json() {
        let alpn = vec!["h2".to_owned(), "http/1.1".to_owned()];
        let record = AccessRecord {
            client: "127.0.0.1:40000".parse().unwrap(),
            vendor: "vendor-a",
            namespace: "crawlers",
            pod: "pod-1",
            protocol: "connect",
            method: "CONNECT",
            host: "shop.example",
            port: 443,
            url: Some("http://x/a\"b\\c\n"),
            status: Some(200),
            outcome: "ok",
            reason: None,
            error: None,
            sent_bytes: 704,
            received_bytes: 21_708,
            duration: std::time::Duration::from_micros(94_719),
            sni: Some("shop.example"),
            alpn: &alpn,
            tunnel_inner: Some("tls_h2"),
            closed_by: Some("client"),
        };
        let line = record.to_json();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["url"], "http://x/a\"b\\c\n");
        assert_eq!(value["duration_ms"], 94.719);
        assert_eq!(value["received_bytes"], 21_708);
        assert_eq!(value["alpn"][1], "http/1.1");
        assert_eq!(value["client"], "127.0.0.1:40000");
        let ts = value["ts"].as_str().unwrap();
        assert_eq!(
            (ts.len(), &ts[10..11], &ts[19..20], &ts[23..]),
            (24, "T", ".", "Z"),
            "{ts}"
        );
        let short = AccessRecord {
            duration: std::time::Duration::from_micros(5_007),
            url: None,
            status: None,
            sni: None,
            alpn: &[],
            tunnel_inner: None,
            ..record
        };
        let value: serde_json::Value = serde_json::from_str(&short.to_json()).unwrap();
        assert_eq!(value["duration_ms"], 5.007);
        assert!(value.get("url").is_none() && value.get("alpn").is_none());
        for client in ["[2001:db8::7]:443", "10.200.0.9:5"] {
            let record = AccessRecord {
                client: client.parse().unwrap(),
                ..short
            };
            let value: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
            assert_eq!(value["client"], client);
        }
    }

    #[test]
    fn urls_lose_userinfo_and_query() {
        let uri: http::Uri = "http://user:secret@shop.example.com:8080/p/a?token=abc#f"
            .parse()
            .unwrap();
        assert_eq!(redact_uri(&uri), "http://shop.example.com:8080/p/a");
        let origin: http::Uri = "/only/path?q=1".parse().unwrap();
        assert_eq!(redact_uri(&origin), "/only/path");
        assert_eq!(
            redact_target("shop.example.com:8080", "/p/a?token=abc"),
            "http://shop.example.com:8080/p/a"
        );
        assert_eq!(redact_target("h", "?q"), "http://h/");
    }
}
