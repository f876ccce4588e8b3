//! A cheap "last time a byte moved" clock, for idle timeouts that span both directions.
//!
//! Each read or write stores a millisecond offset from the clock's creation (one relaxed atomic
//! store); a watchdog task compares it with the timeout. It uses Tokio's clock so tests can run
//! with paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    /// A read, or a write, through a [`Touching`] socket is waiting on its peer right now.
    reading: AtomicBool,
    writing: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            reading: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the last [`Activity::touch`] (or creation).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Resolves once neither side moved a byte for `timeout`, with the side the exchange is
    /// stuck on: the client when the meter waits to write to it (it stopped reading) or to read
    /// the rest of its request (`request_done` false: the vendor cannot be expected to answer
    /// an unfinished request); the vendor otherwise.
    pub async fn stuck_on(
        client: &Activity,
        vendor: &Activity,
        request_done: impl Fn() -> bool,
        timeout: Duration,
    ) -> crate::exchange::Side {
        loop {
            let quiet = client.idle_for().min(vendor.idle_for());
            if quiet >= timeout {
                let waiting_on_client = client.writing.load(Ordering::Relaxed)
                    || (client.reading.load(Ordering::Relaxed) && !request_done());
                return if waiting_on_client {
                    crate::exchange::Side::Client
                } else {
                    crate::exchange::Side::Vendor
                };
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    }

    /// Resolves once idle for `timeout`, unless `busy()` says otherwise at that moment.
    pub async fn idle(&self, timeout: Duration, busy: impl Fn() -> bool) {
        loop {
            let idle = self.idle_for();
            let wait = if idle < timeout {
                timeout - idle
            } else if busy() {
                timeout
            } else {
                return;
            };
            tokio::time::sleep(wait).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A socket that touches an [`Activity`] clock on every read and write that moves bytes.
    #[derive(Debug)]
    pub struct Touching<T> {
        #[pin]
        io: T,
        clock: std::sync::Arc<Activity>,
    }
}

impl<T> Touching<T> {
    pub fn new(io: T, clock: std::sync::Arc<Activity>) -> Touching<T> {
        Touching { io, clock }
    }

    /// The socket, for peeking.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Touching<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        this.clock
            .reading
            .store(result.is_pending(), Ordering::Relaxed);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        result
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Touching<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        this.clock
            .writing
            .store(result.is_pending(), Ordering::Relaxed);
        if matches!(result, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.clock.touch();
        }
        result
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
