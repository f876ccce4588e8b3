//! The one place bytes are counted: an IO wrapper on the vendor-facing socket.
//!
//! Every successful read and write adds its byte count to the [`Attribution`] the wrapper
//! currently points at, so an open tunnel or a long download shows its bytes at every scrape,
//! not only when it ends. The attribution is a plain field: a vendor connection (or each half of
//! one) is driven by exactly one task at a time, which points it at the next request before that
//! request's first byte (a pooled keep-alive connection carries many requests, from different
//! pods and to different destinations, one after another). So the byte path takes no lock: an
//! add to the pod counters, an atomic load to see whether the destination is known yet, an add
//! to it, and the request's own totals.
//!
//! When the wrapper is dropped, bytes that reached this host but were never read (the socket's
//! receive queue, `FIONREAD`) are counted as received too: the vendor sent them and will bill
//! them. A socket that was read to its end of stream has none (nothing can follow a FIN), so it
//! is not asked: one `ioctl` less per tunnel. Bytes still in flight on the network, or in the
//! vendor's send buffer, cannot be known by any meter on this side of the link.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A sent and a received counter.
pub type CounterPair = (Counter, Counter);

/// The counters one request or tunnel adds its vendor-socket bytes to, resolved once.
#[derive(Debug, Default)]
pub struct Attribution {
    /// The pod family; `None` when metering is off or for bytes that belong to no request.
    pod: Option<CounterPair>,
    /// The destination family, once known: at once for most requests, after the ClientHello for
    /// a tunnel to an IP literal, never when the destination families are off.
    destination: OnceLock<CounterPair>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Attribution {
    pub fn new(pod: Option<CounterPair>, destination: Option<CounterPair>) -> Attribution {
        let slot = OnceLock::new();
        if let Some(pair) = destination {
            let _ = slot.set(pair);
        }
        Attribution {
            pod,
            destination: slot,
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

    /// Sets the destination counters, moving the bytes counted so far into them; a destination
    /// already set stays. Call it from the task that drives the connection, so that no byte is
    /// counted between the move and the switch.
    pub fn resolve_destination(&self, pair: CounterPair) {
        if self.destination.set(pair).is_ok()
            && let Some((sent, received)) = self.destination.get()
        {
            sent.inc_by(self.sent());
            received.inc_by(self.received());
        }
    }

    /// Takes over bytes counted, under the same pod, before this attribution existed (a SOCKS5
    /// greeting before the CONNECT it leads to): into its destination counters and its totals.
    pub fn absorb(&self, earlier: &Attribution) {
        let (sent, received) = (earlier.sent(), earlier.received());
        if let Some((destination_sent, destination_received)) = self.destination.get() {
            destination_sent.inc_by(sent);
            destination_received.inc_by(received);
        }
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: u64) {
        if let Some((sent, _)) = &self.pod {
            sent.inc_by(n);
        }
        if let Some((sent, _)) = self.destination.get() {
            sent.inc_by(n);
        }
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_received(&self, n: u64) {
        if let Some((_, received)) = &self.pod {
            received.inc_by(n);
        }
        if let Some((_, received)) = self.destination.get() {
            received.inc_by(n);
        }
        self.received.fetch_add(n, Ordering::Relaxed);
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

pin_project_lite::pin_project! {
    /// A vendor-facing socket whose every read and write is counted; see the module docs.
    #[derive(Debug)]
    pub struct MeteredIo<T: UnreadBytes> {
        #[pin]
        io: T,
        attribution: Arc<Attribution>,
        // A read returned the end of the stream: the receive queue is empty for good.
        at_end: bool,
    }

    impl<T: UnreadBytes> PinnedDrop for MeteredIo<T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.at_end {
                this.attribution.add_received(this.io.unread_bytes());
            }
        }
    }
}

impl<T: UnreadBytes> MeteredIo<T> {
    pub fn new(io: T, attribution: Arc<Attribution>) -> MeteredIo<T> {
        MeteredIo {
            io,
            attribution,
            at_end: false,
        }
    }

    /// Points the socket at the next request: bytes from now on count there.
    pub fn attribute_to(&mut self, next: Arc<Attribution>) {
        self.attribution = next;
    }

    pub fn attribution(&self) -> &Arc<Attribution> {
        &self.attribution
    }

    /// The wrapped socket, for peeking and socket options: reading through it would bypass
    /// counting.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped socket, for peeking (which leaves the bytes to be read, and counted, later).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

/// A vendor connection as two counted halves, so that each direction can be driven (and
/// pointed at a request) on its own: the request pump writes while the response pump reads.
#[derive(Debug)]
pub struct MeteredStream {
    pub read: MeteredIo<tokio::net::tcp::OwnedReadHalf>,
    pub write: MeteredIo<tokio::net::tcp::OwnedWriteHalf>,
}

impl MeteredStream {
    pub fn new(stream: tokio::net::TcpStream, attribution: Arc<Attribution>) -> MeteredStream {
        let (read, write) = stream.into_split();
        MeteredStream {
            read: MeteredIo::new(read, attribution.clone()),
            write: MeteredIo::new(write, attribution),
        }
    }

    /// Points both directions at the next request.
    pub fn attribute_to(&mut self, next: &Arc<Attribution>) {
        self.read.attribute_to(next.clone());
        self.write.attribute_to(next.clone());
    }

    /// The socket, for socket options and for peeking.
    pub fn socket(&self) -> &tokio::net::TcpStream {
        self.read.get_ref().as_ref()
    }
}

impl<T: AsyncRead + UnreadBytes> AsyncRead for MeteredIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        ready!(this.io.poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.attribution.add_received(n as u64);
        } else if room {
            *this.at_end = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + UnreadBytes> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        this.attribution.add_sent(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write_vectored(cx, bufs))?;
        this.attribution.add_sent(n as u64);
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
                let mut metered = MeteredIo::new(near, first.clone());
                let (mut far_read, mut far_write) = tokio::io::split(far);

                let total: usize = writes.iter().sum();
                let mut expected_first = 0;
                for (i, &n) in writes.iter().enumerate() {
                    if i == switch_after {
                        metered.attribute_to(second.clone());
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
            let mut metered = MeteredIo::new(near, first.clone());
            let handshake = b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n";
            metered.write_all(handshake).await.unwrap();
            let (dest_sent, dest_received) = (Counter::default(), Counter::default());
            first.resolve_destination((dest_sent.clone(), dest_received.clone()));
            // A second resolution changes nothing.
            first.resolve_destination((Counter::default(), Counter::default()));
            metered.write_all(b"hello").await.unwrap();
            far.write_all(b"abc").await.unwrap();
            let mut buf = [0u8; 3];
            metered.read_exact(&mut buf).await.unwrap();
            let expected = (handshake.len() + b"hello".len()) as u64;
            assert_eq!(dest_sent.get(), expected);
            assert_eq!(pod_sent.get(), expected);
            assert_eq!(first.sent(), expected);
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
            let metered = MeteredStream::new(client, attr);
            server.write_all(&[1u8; 5000]).await.unwrap();
            server.flush().await.unwrap();
            // Wait until all 5000 bytes sit in the client's receive queue.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while metered.read.get_ref().unread_bytes() < 5000 {
                assert!(std::time::Instant::now() < deadline, "bytes never arrived");
                tokio::task::yield_now().await;
            }
            drop(metered);
            assert_eq!(received.get(), 5000);
        });
    }

    /// A socket that claims bytes in its receive queue whatever it was read to.
    struct ClaimsUnread(tokio::io::DuplexStream);

    impl UnreadBytes for ClaimsUnread {
        fn unread_bytes(&self) -> u64 {
            1000
        }
    }

    impl AsyncRead for ClaimsUnread {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[test]
    fn a_socket_read_to_its_end_is_not_asked_for_unread_bytes() {
        runtime().block_on(async {
            let (read_to_end, _, received) = attribution();
            let (near, mut far) = tokio::io::duplex(64);
            let mut metered = MeteredIo::new(ClaimsUnread(near), read_to_end);
            far.write_all(b"last").await.unwrap();
            drop(far);
            let mut all = Vec::new();
            metered.read_to_end(&mut all).await.unwrap();
            drop(metered);
            assert_eq!(
                received.get(),
                4,
                "nothing can follow the end of the stream"
            );

            let (cut_short, _, received) = attribution();
            let (near, _far) = tokio::io::duplex(64);
            drop(MeteredIo::new(ClaimsUnread(near), cut_short));
            assert_eq!(received.get(), 1000, "an unfinished stream is asked");
        });
    }
}
