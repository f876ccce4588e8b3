//! Live statistics of a run and its final report (text or JSON).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::ClientError;
use crate::ledger::{Book, Ledger};

/// Why a request failed (an answer with any status is not a failure; see `statuses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection to the proxy failed.
    ProxyConnect,
    /// The proxy answered CONNECT with a non-2xx status.
    TunnelRefused,
    /// The TLS handshake inside the tunnel failed.
    Tls,
    /// HTTP failed (connection reset, malformed answer, closed mid-body).
    Http,
    /// No complete answer within the request timeout.
    Timeout,
    /// Skipped: too many requests were already waiting for a concurrency slot.
    Backlog,
}

impl ErrorKind {
    pub fn of(error: ClientError) -> ErrorKind {
        match error {
            ClientError::Connect(_) => ErrorKind::ProxyConnect,
            ClientError::Refused(_) => ErrorKind::TunnelRefused,
            ClientError::Tls(_) | ClientError::ServerName => ErrorKind::Tls,
            ClientError::Http(_) => ErrorKind::Http,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ProxyConnect => "proxy_connect",
            ErrorKind::TunnelRefused => "tunnel_refused",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Backlog => "backlog",
        }
    }
}

/// Latencies are recorded in microseconds, up to an hour, with three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("invariant: static histogram bounds are valid")
}

/// Live counters of one vendor.
#[derive(Debug)]
pub struct VendorStats {
    pub name: String,
    pub scheduled: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Live counters of a run.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub vendors: Vec<VendorStats>,
    pub in_flight: AtomicU64,
    pub book: Arc<Book>,
    /// Requests sent again on a new connection because the proxy had closed the reused one
    /// before answering (see `engine::Attempt::Stale`).
    pub retried: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<BTreeMap<ErrorKind, u64>>,
}

impl Stats {
    pub fn new(vendors: Vec<String>, book: Arc<Book>) -> Stats {
        Stats {
            started: Instant::now(),
            vendors: vendors
                .into_iter()
                .map(|name| VendorStats {
                    name,
                    scheduled: AtomicU64::new(0),
                    completed: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    latency: Mutex::new(latency_histogram()),
                })
                .collect(),
            in_flight: AtomicU64::new(0),
            book,
            retried: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn completed(&self, vendor: usize, status: u16, latency: Duration) {
        let v = &self.vendors[vendor];
        v.completed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = v
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(micros.min(3_600_000_000));
        *self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_insert(0) += 1;
    }

    pub fn failed(&self, vendor: usize, kind: ErrorKind) {
        self.vendors[vendor].failed.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_insert(0) += 1;
    }

    /// Totals so far: (scheduled, completed, failed).
    pub fn totals(&self) -> (u64, u64, u64) {
        self.vendors.iter().fold((0, 0, 0), |(s, c, f), v| {
            (
                s + v.scheduled.load(Ordering::Relaxed),
                c + v.completed.load(Ordering::Relaxed),
                f + v.failed.load(Ordering::Relaxed),
            )
        })
    }

    /// Errors by kind so far.
    pub fn errors(&self) -> BTreeMap<ErrorKind, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Latency percentiles in milliseconds, from the scheduled send time to the end of the answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VendorReport {
    pub name: String,
    pub scheduled: u64,
    pub completed: u64,
    pub failed: u64,
    pub requests_per_second: f64,
    pub latency_ms: Percentiles,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

/// The final summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub duration_seconds: f64,
    pub scheduled: u64,
    pub completed: u64,
    pub failed: u64,
    pub requests_per_second: f64,
    pub latency_ms: Percentiles,
    pub vendors: Vec<VendorReport>,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Requests sent a second time after the proxy closed an idle connection as they were sent.
    pub retried: u64,
    pub pods: usize,
    pub destinations: usize,
}

impl Report {
    pub fn from_stats(stats: &Stats, ledger: &Ledger) -> Report {
        let seconds = stats.started.elapsed().as_secs_f64().max(1e-9);
        let mut overall = latency_histogram();
        let written = ledger.sum_by(|e| e.vendor.clone(), |e| e.bytes_written);
        let read = ledger.sum_by(|e| e.vendor.clone(), |e| e.bytes_read);
        let vendors: Vec<VendorReport> = stats
            .vendors
            .iter()
            .map(|v| {
                let h = v.latency.lock().unwrap_or_else(|e| e.into_inner());
                let _ = overall.add(&*h);
                let completed = v.completed.load(Ordering::Relaxed);
                VendorReport {
                    name: v.name.clone(),
                    scheduled: v.scheduled.load(Ordering::Relaxed),
                    completed,
                    failed: v.failed.load(Ordering::Relaxed),
                    requests_per_second: completed as f64 / seconds,
                    latency_ms: Percentiles::of(&h),
                    bytes_written: written.get(&v.name).copied().unwrap_or(0),
                    bytes_read: read.get(&v.name).copied().unwrap_or(0),
                }
            })
            .collect();
        let (scheduled, completed, failed) = stats.totals();
        let pods: std::collections::BTreeSet<_> = ledger
            .entries
            .iter()
            .map(|e| (&e.namespace, &e.pod))
            .collect();
        let hosts: std::collections::BTreeSet<_> = ledger.entries.iter().map(|e| &e.host).collect();
        Report {
            duration_seconds: seconds,
            scheduled,
            completed,
            failed,
            requests_per_second: completed as f64 / seconds,
            latency_ms: Percentiles::of(&overall),
            vendors,
            statuses: stats
                .statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: stats
                .errors()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), *v))
                .collect(),
            retried: stats.retried.load(Ordering::Relaxed),
            pods: pods.len(),
            destinations: hosts.len(),
        }
    }

    /// A human summary.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} requests in {:.1}s ({:.0}/s), {} failed, {} pods, {} destination hosts",
            self.completed,
            self.duration_seconds,
            self.requests_per_second,
            self.failed,
            self.pods,
            self.destinations
        );
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
            "vendor",
            "sent",
            "done",
            "failed",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "wrote",
            "read"
        );
        for v in &self.vendors {
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>9} {:>7} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>12} {:>12}",
                v.name,
                v.scheduled,
                v.completed,
                v.failed,
                v.requests_per_second,
                v.latency_ms.p50,
                v.latency_ms.p99,
                v.latency_ms.max,
                human_bytes(v.bytes_written),
                human_bytes(v.bytes_read)
            );
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "latency from scheduled send: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "statuses: {}",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        );
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "errors: {}",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        );
        out
    }
}

/// `1.5 MiB`-style sizes for humans.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_humans_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
