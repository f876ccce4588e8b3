//! Client connection slots: a bound on client connections that never turns idle clients into
//! refused work.
//!
//! A shared meter in front of 5,000 crawler pods holds a keep-alive connection (often several)
//! per pod, and almost all of them are idle between requests at any moment. Refusing a new
//! connection while idle ones hold every slot would shed real work to keep idle sockets open. So,
//! as HAProxy and nginx do, a connection at the bound first closes the connection that has been
//! idle the longest: an HTTP/1.1 connection between requests, or an HTTP/2 connection with no
//! open stream, and failing those a tunnel that has carried nothing for at least
//! [`MIN_TUNNEL_IDLE`]. Only when nothing is idle is the new connection refused (503, counted).
//!
//! Closing an idle keep-alive connection is what a server's keep-alive timeout does anyway, and
//! clients check a pooled connection before reusing it; a tunnel that carried nothing for a
//! while is, for the crawler, an idle pooled TLS connection closed by its server.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::activity::Activity;

/// A tunnel is only reclaimed after carrying nothing for this long: shorter pauses are a
/// crawler between two requests on a connection it is about to reuse.
pub const MIN_TUNNEL_IDLE: Duration = Duration::from_secs(2);

/// The slots of all client-facing listeners.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    next: u64,
    /// Idle connections by when they became idle (a sequence number: oldest first).
    idle: BTreeMap<u64, Arc<Entry>>,
    /// Connections carrying a tunnel, with its activity clock.
    tunnels: HashMap<u64, (Arc<Entry>, Arc<Activity>)>,
}

#[derive(Debug, Default)]
struct Entry {
    reclaimed: AtomicBool,
    notify: Notify,
}

/// One client connection's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    entry: Arc<Entry>,
    /// The key of this slot in the idle or tunnel table, while it is in one.
    idle_key: Option<u64>,
    tunnel_key: Option<u64>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection, reclaiming an idle one at the bound; `None` when every slot
    /// is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.lock();
        if state.open >= self.max && !state.reclaim_one() {
            return None;
        }
        // A reclaimed connection's slot passes to the new one at once: it is closing.
        if state.open < self.max {
            state.open += 1;
        }
        Some(Slot {
            slots: self.clone(),
            entry: Arc::default(),
            idle_key: None,
            tunnel_key: None,
        })
    }

    /// Client connections holding a slot.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }
}

impl State {
    /// Closes the connection idle the longest; false when none is idle.
    fn reclaim_one(&mut self) -> bool {
        if let Some((_, entry)) = self.idle.pop_first() {
            entry.reclaim();
            return true;
        }
        let quietest = self
            .tunnels
            .iter()
            .map(|(key, (_, activity))| (activity.idle_for(), *key))
            .filter(|(idle, _)| *idle >= MIN_TUNNEL_IDLE)
            .max();
        match quietest.and_then(|(_, key)| self.tunnels.remove(&key)) {
            Some((entry, _)) => {
                entry.reclaim();
                true
            }
            None => false,
        }
    }
}

impl Entry {
    fn reclaim(&self) {
        self.reclaimed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

impl Slot {
    /// The connection waits for its next request (or stream): it may be reclaimed from now on.
    pub fn idle(&mut self) {
        let mut state = self.slots.lock();
        if self.idle_key.is_none() && !self.is_reclaimed() {
            let key = state.next;
            state.next += 1;
            state.idle.insert(key, self.entry.clone());
            self.idle_key = Some(key);
        }
    }

    /// The connection has work again. False if it was reclaimed meanwhile: it must close.
    pub fn busy(&mut self) -> bool {
        if let Some(key) = self.idle_key.take() {
            self.slots.lock().idle.remove(&key);
        }
        !self.is_reclaimed()
    }

    /// The connection carries a tunnel whose activity `clock` tells: reclaimable once quiet.
    pub fn tunnel(&mut self, clock: Arc<Activity>) {
        let mut state = self.slots.lock();
        let key = state.next;
        state.next += 1;
        state.tunnels.insert(key, (self.entry.clone(), clock));
        self.tunnel_key = Some(key);
    }

    /// The tunnel ended.
    pub fn tunnel_closed(&mut self) {
        if let Some(key) = self.tunnel_key.take() {
            self.slots.lock().tunnels.remove(&key);
        }
    }

    pub fn is_reclaimed(&self) -> bool {
        self.entry.reclaimed.load(Ordering::Acquire)
    }

    /// Resolves once the slot is reclaimed for a new connection.
    pub async fn reclaimed(&self) {
        loop {
            let notified = self.entry.notify.notified();
            if self.is_reclaimed() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if let Some(key) = self.idle_key.take() {
            state.idle.remove(&key);
        }
        if let Some(key) = self.tunnel_key.take() {
            state.tunnels.remove(&key);
        }
        // A reclaimed slot was handed to the connection that reclaimed it.
        if !self.is_reclaimed() {
            state.open -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_longest_idle_connection_makes_room() {
        let slots = Slots::new(3);
        let mut a = slots.admit().unwrap();
        let mut b = slots.admit().unwrap();
        let mut c = slots.admit().unwrap();
        assert!(slots.admit().is_none(), "all busy: refused");
        b.idle();
        a.idle();
        c.idle();
        let d = slots.admit().expect("reclaims the oldest idle one");
        assert!(b.is_reclaimed() && !a.is_reclaimed() && !c.is_reclaimed());
        assert!(!b.busy(), "a reclaimed connection must close");
        assert!(a.busy(), "a connection that was not reclaimed carries on");
        assert_eq!(slots.open(), 3);
        drop(b);
        assert_eq!(slots.open(), 3, "its slot went to the new connection");
        let _e = slots.admit().expect("c is idle");
        assert!(c.is_reclaimed());
        assert!(slots.admit().is_none());
        drop((a, d));
        assert_eq!(slots.open(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_is_reclaimed_only_after_its_minimum_idle_time() {
        let slots = Slots::new(1);
        let mut tunnel = slots.admit().unwrap();
        let clock = Arc::new(Activity::default());
        tunnel.tunnel(clock.clone());
        assert!(slots.admit().is_none(), "the tunnel just moved bytes");
        tokio::time::advance(MIN_TUNNEL_IDLE).await;
        let _next = slots.admit().expect("the quiet tunnel makes room");
        tokio::time::timeout(Duration::from_secs(1), tunnel.reclaimed())
            .await
            .expect("the tunnel is told");
    }
}
