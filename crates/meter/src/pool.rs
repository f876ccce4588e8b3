//! Keep-alive HTTP/1.1 connections to a vendor, owned by the meter rather than by hyper's pool.
//!
//! hyper's client pool does not say which request uses which connection, and the meter must
//! know, to attribute a pooled connection's bytes to the request using it (its pod and its
//! destination). So each connection here carries its [`Tally`]: whoever checks a connection out
//! points the tally at its own request before sending. A connection returns to the pool only
//! after its response body has been read to the end, which (without pipelining) means all of
//! that request's bytes have crossed the socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use pt_sniff::Authority;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::counting_io::Tally;

/// `None` for a proxy vendor (every request goes to the same endpoint); the destination for
/// `direct`.
pub type PoolKey = Option<Authority>;

/// One HTTP/1.1 connection to a vendor.
#[derive(Debug)]
pub struct VendorConn {
    pub sender: SendRequest<Incoming>,
    pub tally: Arc<Tally>,
    task: AbortHandle,
}

impl VendorConn {
    pub fn new(sender: SendRequest<Incoming>, tally: Arc<Tally>, task: AbortHandle) -> VendorConn {
        VendorConn {
            sender,
            tally,
            task,
        }
    }

    /// Closes the connection now, whatever it is doing (a timed-out or abandoned request).
    pub fn abort(self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Idle {
    key: PoolKey,
    conn: VendorConn,
    since: Instant,
}

/// Idle connections of one vendor.
///
/// Idle connections are kept in the order they became idle, so expiry only ever looks at the
/// oldest ones, and a checkout takes the most recent one (warmest, least likely to be closed by
/// the vendor).
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// How long a pooled connection may take to report ready after its last response ended.
/// hyper marks it idle in the same poll that ends the body, so this is a safety margin only.
const READY_WAIT: Duration = Duration::from_secs(1);

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used open connection for `key`, ready for a request.
    pub async fn checkout(&self, key: &PoolKey) -> Option<VendorConn> {
        loop {
            let candidate = {
                let mut idle = self.lock();
                self.evict_expired(&mut idle);
                let position = idle.iter().rposition(|i| &i.key == key)?;
                idle.remove(position)?.conn
            };
            let mut conn = candidate;
            if conn.sender.is_closed() {
                continue;
            }
            match tokio::time::timeout(READY_WAIT, conn.sender.ready()).await {
                Ok(Ok(())) => return Some(conn),
                _ => conn.abort(),
            }
        }
    }

    /// Returns a connection whose last response was read to its end.
    pub fn checkin(&self, key: PoolKey, conn: VendorConn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        self.evict_expired(&mut idle);
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                key,
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Drops the connections idle for longer than the timeout (the oldest, at the front).
    /// Connections the vendor closed are dropped when a checkout meets them.
    fn evict_expired(&self, idle: &mut VecDeque<Idle>) {
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }
}
