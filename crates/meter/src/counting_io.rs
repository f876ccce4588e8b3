//! The one place bytes are counted: an IO wrapper on the vendor-facing socket.
//!
//! Every successful `poll_read` and `poll_write` adds its byte count to the [`Attribution`] the
//! connection's [`Tally`] currently points at, so an open tunnel or a long download shows its
//! bytes at every scrape, not only when it closes. The attribution is swappable because a pooled
//! keep-alive connection carries many requests, from different pods and to different
//! destinations, one after another: the forwarding code points the tally at the next request
//! before that request's first byte is written (HTTP/1.1 without pipelining never interleaves
//! two requests' bytes on one connection).
//!
//! When the wrapper is dropped, bytes that reached this host but were never read (the socket's
//! receive queue, `FIONREAD`) are counted as received too: the vendor sent them and will bill
//! them. Bytes still in flight on the network, or in the vendor's send buffer, cannot be known by
//! any meter on this side of the link.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::activity::Activity;

/// The counters one request or tunnel adds its vendor-socket bytes to, resolved once.
#[derive(Debug)]
pub struct Attribution {
    /// Sent and received counters of the pod family; `None` when metering is off.
    pod: Option<(Counter, Counter)>,
    /// `None` when the destination families are off, or while a tunnel's destination is still
    /// unknown (see [`Tally::resolve_destination`]).
    destination: Option<(Counter, Counter)>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Attribution {
    pub fn new(
        pod: Option<(Counter, Counter)>,
        destination: Option<(Counter, Counter)>,
    ) -> Attribution {
        Attribution {
            pod,
            destination,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Bytes written to the vendor for this request so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the vendor for this request so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Takes over bytes counted elsewhere (whose pod counters already hold them): into this
    /// attribution's destination counters and totals.
    fn absorb(&self, sent: u64, received: u64) {
        if let Some((destination_sent, destination_received)) = &self.destination {
            destination_sent.inc_by(sent);
            destination_received.inc_by(received);
        }
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }

    fn add_sent(&self, n: u64) {
        if let Some((sent, _)) = &self.pod {
            sent.inc_by(n);
        }
        if let Some((sent, _)) = &self.destination {
            sent.inc_by(n);
        }
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    fn add_received(&self, n: u64) {
        if let Some((_, received)) = &self.pod {
            received.inc_by(n);
        }
        if let Some((_, received)) = &self.destination {
            received.inc_by(n);
        }
        self.received.fetch_add(n, Ordering::Relaxed);
    }
}

/// The attribution slots and activity clock of one vendor connection.
///
/// Sent and received bytes have a slot each. The meter's own forwarding path moves both together
/// ([`Tally::attribute_to`]); a captured HTTP/1.1 connection (transparent mode) on which the
/// crawler pipelines requests moves the sent slot when the next request starts and the received
/// slot when the next response does.
#[derive(Debug)]
pub struct Tally {
    sent: Mutex<Arc<Attribution>>,
    received: Mutex<Arc<Attribution>>,
    pub activity: Activity,
}

// Poisoning cannot leave an `Arc` half-written; keep counting (metering fails open).
fn lock(slot: &Mutex<Arc<Attribution>>) -> std::sync::MutexGuard<'_, Arc<Attribution>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tally {
    pub fn new(attribution: Arc<Attribution>) -> Arc<Tally> {
        Arc::new(Tally {
            sent: Mutex::new(attribution.clone()),
            received: Mutex::new(attribution),
            activity: Activity::default(),
        })
    }

    /// Points the connection at the next request. Bytes from now on count there.
    pub fn attribute_to(&self, next: Arc<Attribution>) {
        *lock(&self.sent) = next.clone();
        *lock(&self.received) = next;
    }

    /// Points the connection at `next`, which takes over the bytes counted so far outside any
    /// request (a SOCKS5 greeting and authentication, before the CONNECT they lead to).
    pub fn hand_over_to(&self, next: Arc<Attribution>) {
        let mut sent = lock(&self.sent);
        let mut received = lock(&self.received);
        next.absorb(sent.sent(), received.received());
        *sent = next.clone();
        *received = next;
    }

    /// Points only the sending direction at the next request.
    pub fn attribute_sent_to(&self, next: Arc<Attribution>) {
        *lock(&self.sent) = next;
    }

    /// Points only the receiving direction at the next response's request.
    pub fn attribute_received_to(&self, next: Arc<Attribution>) {
        *lock(&self.received) = next;
    }

    /// Gives the current attribution destination counters, moving the bytes counted so far into
    /// them, atomically with respect to the byte path. Returns the new attribution, which both
    /// directions then count to.
    pub fn resolve_destination(&self, sent: Counter, received: Counter) -> Arc<Attribution> {
        // Always sent before received, so two resolutions cannot deadlock.
        let mut sent_slot = lock(&self.sent);
        let mut received_slot = lock(&self.received);
        let before = &**sent_slot;
        let next = Arc::new(Attribution {
            pod: before.pod.clone(),
            destination: Some((sent.clone(), received.clone())),
            sent: AtomicU64::new(before.sent()),
            received: AtomicU64::new(before.received()),
        });
        sent.inc_by(before.sent());
        received.inc_by(before.received());
        *sent_slot = next.clone();
        *received_slot = next.clone();
        next
    }

    fn sent(&self, n: usize) {
        if n > 0 {
            lock(&self.sent).add_sent(n as u64);
            self.activity.touch();
        }
    }

    fn received(&self, n: u64) {
        if n > 0 {
            lock(&self.received).add_received(n);
            self.activity.touch();
        }
    }
}

/// Sockets that can report bytes waiting in their receive queue.
pub trait UnreadBytes {
    fn unread_bytes(&self) -> u64;
}

impl UnreadBytes for tokio::net::TcpStream {
    fn unread_bytes(&self) -> u64 {
        rustix::io::ioctl_fionread(self).unwrap_or(0)
    }
}

impl UnreadBytes for tokio::net::tcp::OwnedReadHalf {
    fn unread_bytes(&self) -> u64 {
        rustix::io::ioctl_fionread(self.as_ref()).unwrap_or(0)
    }
}

/// The write half leaves the receive queue to its read half, which counts it.
impl UnreadBytes for tokio::net::tcp::OwnedWriteHalf {
    fn unread_bytes(&self) -> u64 {
        0
    }
}

impl UnreadBytes for tokio::io::DuplexStream {
    fn unread_bytes(&self) -> u64 {
        0
    }
}

/// What an observed socket reports its byte counts to.
pub trait Observer {
    fn read(&self, n: usize);
    fn wrote(&self, n: usize);
    /// The socket is being dropped; `unread` tells how many received bytes were never read.
    fn closing(&self, _unread: impl FnOnce() -> u64) {}
}

/// Vendor sockets: every byte counts toward the current attribution, unread ones included.
impl Observer for Arc<Tally> {
    fn read(&self, n: usize) {
        self.received(n as u64);
    }
    fn wrote(&self, n: usize) {
        self.sent(n);
    }
    fn closing(&self, unread: impl FnOnce() -> u64) {
        self.received(unread());
    }
}

/// Client sockets: only when bytes last moved, for the idle watchdog.
impl Observer for Arc<Activity> {
    fn read(&self, _: usize) {
        self.touch();
    }
    fn wrote(&self, _: usize) {
        self.touch();
    }
}

pin_project_lite::pin_project! {
    /// A socket whose every read and write is reported to its [`Observer`].
    #[derive(Debug)]
    pub struct ObservedIo<T: UnreadBytes, O: Observer> {
        #[pin]
        io: T,
        observer: O,
    }

    impl<T: UnreadBytes, O: Observer> PinnedDrop for ObservedIo<T, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let io = this.io;
            this.observer.closing(|| io.unread_bytes());
        }
    }
}

/// A vendor-facing socket whose every read and write is counted; see the module docs.
pub type MeteredIo<T> = ObservedIo<T, Arc<Tally>>;

impl<T: UnreadBytes, O: Observer> ObservedIo<T, O> {
    pub fn new(io: T, observer: O) -> ObservedIo<T, O> {
        ObservedIo { io, observer }
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The wrapped socket, for peeking: reading through it would bypass counting.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T: AsyncRead + UnreadBytes, O: Observer> AsyncRead for ObservedIo<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        this.observer.read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + UnreadBytes, O: Observer> AsyncWrite for ObservedIo<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        this.observer.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write_vectored(cx, bufs))?;
        this.observer.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn attribution() -> (Arc<Attribution>, Counter, Counter) {
        let (sent, received) = (Counter::default(), Counter::default());
        let attribution = Arc::new(Attribution::new(
            Some((sent.clone(), received.clone())),
            None,
        ));
        (attribution, sent, received)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        /// However the bytes are split into writes and reads, and wherever the attribution
        /// switches, every byte is counted exactly once, in the attribution current when it
        /// crossed the socket.
        #[test]
        fn counts_are_conserved_however_io_is_split(
            writes in proptest::collection::vec(1usize..4096, 1..40),
            read_sizes in proptest::collection::vec(1usize..4096, 1..40),
            switch_after in 0usize..40,
        ) {
            runtime().block_on(async {
                let (first, first_sent, first_received) = attribution();
                let (second, second_sent, second_received) = attribution();
                let (near, far) = tokio::io::duplex(1 << 20);
                let tally = Tally::new(first.clone());
                let mut metered = MeteredIo::new(near, tally.clone());
                let (mut far_read, mut far_write) = tokio::io::split(far);

                let total: usize = writes.iter().sum();
                let mut expected_first = 0;
                for (i, &n) in writes.iter().enumerate() {
                    if i == switch_after {
                        tally.attribute_to(second.clone());
                    }
                    metered.write_all(&vec![7u8; n]).await.unwrap();
                    if i < switch_after {
                        expected_first += n;
                    }
                }
                let mut sink = vec![0u8; total];
                far_read.read_exact(&mut sink).await.unwrap();
                assert_eq!(first_sent.get() + second_sent.get(), total as u64);
                assert_eq!(first_sent.get(), expected_first as u64);
                assert_eq!(first.sent(), expected_first as u64);

                // The other direction, read in arbitrary sizes, all under the current attribution.
                far_write.write_all(&vec![9u8; total]).await.unwrap();
                let mut got = 0;
                let mut sizes = read_sizes.iter().cycle();
                while got < total {
                    let mut buf = vec![0u8; *sizes.next().unwrap()];
                    got += metered.read(&mut buf).await.unwrap();
                }
                let current_received = if switch_after < writes.len() {
                    second_received.get()
                } else {
                    first_received.get()
                };
                assert_eq!(current_received, total as u64);
                assert_eq!(first_received.get() + second_received.get(), total as u64);
            });
        }
    }

    #[test]
    fn resolving_a_destination_moves_the_bytes_counted_so_far() {
        runtime().block_on(async {
            let (first, pod_sent, _) = attribution();
            let (near, mut far) = tokio::io::duplex(1024);
            let tally = Tally::new(first);
            let mut metered = MeteredIo::new(near, tally.clone());
            let handshake = b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n";
            metered.write_all(handshake).await.unwrap();
            let (dest_sent, dest_received) = (Counter::default(), Counter::default());
            let resolved = tally.resolve_destination(dest_sent.clone(), dest_received.clone());
            metered.write_all(b"hello").await.unwrap();
            far.write_all(b"abc").await.unwrap();
            let mut buf = [0u8; 3];
            metered.read_exact(&mut buf).await.unwrap();
            let expected = (handshake.len() + b"hello".len()) as u64;
            assert_eq!(dest_sent.get(), expected);
            assert_eq!(pod_sent.get(), expected);
            assert_eq!(resolved.sent(), expected);
            assert_eq!(dest_received.get(), 3);
        });
    }

    #[test]
    fn bytes_left_in_the_receive_queue_count_at_close() {
        runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (attr, _, received) = attribution();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let metered = MeteredIo::new(client, Tally::new(attr));
            server.write_all(&[1u8; 5000]).await.unwrap();
            server.flush().await.unwrap();
            // Wait until all 5000 bytes sit in the client's receive queue.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while metered.io.unread_bytes() < 5000 {
                assert!(std::time::Instant::now() < deadline, "bytes never arrived");
                tokio::task::yield_now().await;
            }
            drop(metered);
            assert_eq!(received.get(), 5000);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_restarts_at_every_byte() {
        let (attr, _, _) = attribution();
        let (near, _far) = tokio::io::duplex(64);
        let tally = Tally::new(attr);
        let mut metered = MeteredIo::new(near, tally.clone());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(tally.activity.idle_for(), Duration::from_secs(5));
        metered.write_all(b"x").await.unwrap();
        assert_eq!(tally.activity.idle_for(), Duration::ZERO);
    }
}
