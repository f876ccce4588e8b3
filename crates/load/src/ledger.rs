//! The ground truth of a load run: per vendor × pod × destination host, what the crawlers sent,
//! what completed, what the meter should have counted, and the bytes on the crawler's side.
//!
//! `proxy_requests` is what a meter must count for that key: plain requests that received a
//! response head (`http1`, `h2`) and CONNECTs that received an answer (`connect`), whatever the
//! status. Bytes are those the crawler wrote to and read from the proxy, so they include the
//! crawler's own headers and exclude the meter's; they explain a bill but do not equal the
//! vendor-side bytes a meter counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::client::WireCounters;

/// Requests per protocol, as the meter labels them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolCounts {
    pub http1: u64,
    pub h2: u64,
    pub connect: u64,
}

impl ProtocolCounts {
    pub fn total(&self) -> u64 {
        self.http1 + self.h2 + self.connect
    }
}

/// One vendor × pod × host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub vendor: String,
    pub namespace: String,
    pub pod: String,
    /// The destination host as requested.
    pub host: String,
    /// HTTP requests started (inside tunnels too).
    pub requests_sent: u64,
    /// HTTP requests whose whole response was read.
    pub requests_completed: u64,
    /// What the meter must count (see the module documentation).
    pub proxy_requests: ProtocolCounts,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub version: u32,
    pub started: String,
    pub finished: String,
    pub entries: Vec<LedgerEntry>,
}

/// The format version written by this build.
pub const LEDGER_VERSION: u32 = 1;

impl Ledger {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Ledger, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Sums of `value` grouped by `key`.
    pub fn sum_by<K: Ord>(
        &self,
        key: impl Fn(&LedgerEntry) -> K,
        value: impl Fn(&LedgerEntry) -> u64,
    ) -> BTreeMap<K, u64> {
        let mut sums = BTreeMap::new();
        for entry in &self.entries {
            *sums.entry(key(entry)).or_insert(0) += value(entry);
        }
        sums
    }
}

/// The key of a ledger entry: vendor, `namespace/pod`, host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BookKey {
    pub vendor: String,
    pub pod: String,
    pub host: String,
}

/// Live counters of one entry.
#[derive(Debug, Default)]
pub struct BookEntry {
    pub requests_sent: AtomicU64,
    pub requests_completed: AtomicU64,
    pub http1: AtomicU64,
    pub h2: AtomicU64,
    pub connect: AtomicU64,
    /// Shared by every connection of this key: connections are never shared between keys.
    pub wire: Arc<WireCounters>,
}

/// The live ledger of a run.
#[derive(Debug, Default)]
pub struct Book {
    entries: Mutex<HashMap<BookKey, Arc<BookEntry>>>,
}

impl Book {
    pub fn entry(&self, key: &BookKey) -> Arc<BookEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.entry(key.clone()).or_default().clone()
    }

    /// Counted connections still open, over all entries.
    pub fn open_connections(&self) -> u64 {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().map(|e| e.wire.open()).sum()
    }

    /// A snapshot in ledger form.
    pub fn ledger(&self, started: String, finished: String) -> Ledger {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<LedgerEntry> = entries
            .iter()
            .map(|(key, e)| {
                let (namespace, pod) = key.pod.split_once('/').unwrap_or(("", &key.pod));
                LedgerEntry {
                    vendor: key.vendor.clone(),
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                    host: key.host.clone(),
                    requests_sent: e.requests_sent.load(Ordering::Relaxed),
                    requests_completed: e.requests_completed.load(Ordering::Relaxed),
                    proxy_requests: ProtocolCounts {
                        http1: e.http1.load(Ordering::Relaxed),
                        h2: e.h2.load(Ordering::Relaxed),
                        connect: e.connect.load(Ordering::Relaxed),
                    },
                    bytes_written: e.wire.written(),
                    bytes_read: e.wire.read(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.vendor, &a.namespace, &a.pod, &a.host).cmp(&(
                &b.vendor,
                &b.namespace,
                &b.pod,
                &b.host,
            ))
        });
        Ledger {
            version: LEDGER_VERSION,
            started,
            finished,
            entries: out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_survives_json_and_sums_by_key() {
        let book = Book::default();
        let key = |v: &str, h: &str| BookKey {
            vendor: v.into(),
            pod: "crawlers/p1".into(),
            host: h.into(),
        };
        book.entry(&key("a", "x.test"))
            .http1
            .fetch_add(3, Ordering::Relaxed);
        book.entry(&key("a", "y.test"))
            .connect
            .fetch_add(2, Ordering::Relaxed);
        book.entry(&key("b", "x.test"))
            .h2
            .fetch_add(5, Ordering::Relaxed);
        let ledger = book.ledger("s".into(), "f".into());
        let back = Ledger::from_json(&ledger.to_json()).unwrap();
        assert_eq!(back, ledger);
        let by_vendor = back.sum_by(|e| e.vendor.clone(), |e| e.proxy_requests.total());
        assert_eq!(by_vendor[&"a".to_owned()], 5);
        assert_eq!(by_vendor[&"b".to_owned()], 5);
        assert_eq!(back.entries[0].namespace, "crawlers");
    }
}
