//! Shutdown in stages: stop accepting and ask connections to close when idle (draining), then,
//! after the grace period, close whatever remains (stopped).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug)]
pub struct Drain {
    /// Cancelled when draining starts: stop accepting, ask connections to close when idle.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: abort whatever is still running.
    pub stopped: CancellationToken,
    /// Client connections and tunnels, awaited while draining.
    pub tasks: TaskTracker,
    ready: AtomicBool,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: CancellationToken::new(),
            stopped: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ready: AtomicBool::new(true),
        }
    }
}

impl Drain {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Not ready, stop accepting, close connections when idle.
    pub fn start(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.draining.cancel();
        self.tasks.close();
    }
}
