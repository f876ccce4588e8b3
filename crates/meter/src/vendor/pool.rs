//! Keep-alive HTTP/1.1 connections to a vendor, owned by the meter.
//!
//! The meter must know which request uses which connection, to attribute a pooled
//! connection's bytes to the request using it (its pod and its destination), so it keeps its
//! own pool: whoever checks a connection out points its counting wrapper at its own request
//! before sending. A connection returns only after its response was read to its end and with no
//! byte more, which (without pipelining) means all of that request's bytes have crossed the
//! socket, and it returns without buffers: an idle connection costs its socket and nothing else.
//!
//! Vendors close idle connections on their own schedule, often without saying so in the last
//! response. A checkout therefore looks at the socket first (a non-blocking peek): one the vendor
//! closed, or that holds bytes nobody asked for, is dropped instead of failing a request.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::Duration;

use pt_sniff::Authority;
use tokio::time::Instant;

use super::VendorConn;

/// `None` for a proxy vendor (every request goes to the same endpoint); the destination for
/// `direct`.
pub type PoolKey = Option<Authority>;

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

    /// The most recently used open connection for `key`.
    pub fn checkout(&self, key: &PoolKey) -> Option<VendorConn> {
        loop {
            let conn = {
                let mut idle = self.lock();
                self.evict_expired(&mut idle);
                let position = idle.iter().rposition(|i| &i.key == key)?;
                idle.remove(position)?.conn
            };
            if is_open_and_quiet(&conn) {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose last response was read to its end.
    pub fn checkin(&self, key: PoolKey, conn: VendorConn) {
        let mut idle = self.lock();
        self.evict_expired(&mut idle);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            key,
            conn,
            since: Instant::now(),
        });
    }

    /// Closes the connection idle the longest; false when none is idle.
    pub fn close_oldest(&self) -> bool {
        self.lock().pop_front().is_some()
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Drops the connections idle for longer than the timeout (the oldest, at the front).
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

/// Whether an idle connection is still open with nothing unread: a non-blocking peek at the
/// socket (peeked bytes stay in the receive queue and are counted when the connection closes).
fn is_open_and_quiet(conn: &VendorConn) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(conn.stream.socket()).peek(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // 0: the vendor closed it; more: bytes nobody asked for (a late 408, garbage).
        Ok(_) => false,
    }
}
