//! The access log: one JSON line per request and tunnel, the full-detail companion of the
//! bounded metrics (full destination host, bytes each way, status, duration).
//!
//! Lines go to a [`AccessSink`]. The production sink hands them to a writer thread through a
//! bounded queue and drops lines when the queue is full: a slow log consumer must never slow
//! crawler traffic (metering and logging fail open; the metrics stay exact). URLs are logged
//! without userinfo and query; credentials are never part of a record.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub ts: String,
    pub client: String,
    pub vendor: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub protocol: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub outcome: &'a str,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_inner: Option<&'a str>,
}

/// Where access-log lines go.
pub trait AccessSink: Send + Sync + std::fmt::Debug {
    fn write_line(&self, line: String);
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
#[derive(Debug)]
pub struct StdoutAccessLog {
    queue: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// Lines buffered before new ones are dropped: about a second of a busy meter's log.
const QUEUE_LINES: usize = 16 * 1024;

impl StdoutAccessLog {
    pub fn start() -> StdoutAccessLog {
        let (queue, lines) = std::sync::mpsc::sync_channel::<String>(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_in_thread = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = lines.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush when the queue is drained, so lines appear promptly when idle.
                    let mut more = lines.try_recv();
                    while let Ok(line) = more {
                        let _ = writeln!(out, "{line}");
                        more = lines.try_recv();
                    }
                    let lost = dropped_in_thread.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let _ = writeln!(out, "{{\"access_log_dropped_lines\":{lost}}}");
                    }
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread; access log disabled");
        }
        StdoutAccessLog { queue, dropped }
    }
}

impl AccessSink for StdoutAccessLog {
    fn write_line(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
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
    fn urls_lose_userinfo_and_query() {
        let uri: http::Uri = "http://user:secret@shop.example.com:8080/p/a?token=abc#f"
            .parse()
            .unwrap();
        assert_eq!(redact_uri(&uri), "http://shop.example.com:8080/p/a");
        let origin: http::Uri = "/only/path?q=1".parse().unwrap();
        assert_eq!(redact_uri(&origin), "/only/path");
    }
}
