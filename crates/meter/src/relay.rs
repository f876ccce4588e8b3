//! The one relay for everything tunnel-like: CONNECT tunnels over HTTP/1.1 and HTTP/2, captured
//! SOCKS5 and CONNECT tunnels, and captured connections relayed as bytes.
//!
//! Two directions run side by side in the caller's task, each read → write → repeat with a
//! buffer that follows the traffic. Thousands of crawler tunnels sit mostly idle between
//! requests while a few carry large downloads: a fixed 64 KiB pair of buffers per tunnel would
//! cost 128 MiB at 1,000 tunnels, a fixed small buffer many syscalls per megabyte. So each
//! direction starts with [`INITIAL_BUFFER`], doubles whenever a read fills it (more data is
//! waiting), up to [`MAX_BUFFER`], and halves again when reads use an eighth of it or less.
//!
//! A clean end of stream is a half-close: the other side gets a FIN and its direction carries
//! on. A failed read or write ends the relay, blamed on the socket that failed. The relay also
//! ends when nothing moved for the idle timeout, or when the meter stops. Counting happens in
//! the vendor socket's wrapper, not here; the relay reports what it saw of each direction.
//!
//! The client's first bytes can be held back for a [`Sniffer`] (a TLS ClientHello, read for SNI
//! and ALPN) while the vendor's direction already runs, so protocols in which the server speaks
//! first are not delayed. The vendor's direction is followed record by record when it is TLS, so
//! a tunnel cut in the middle of a record can be told from one that ended cleanly.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use pt_sniff::tls_records::Records;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::activity::Activity;
use crate::exchange::Side;

/// Enough for a ClientHello, a small request or a small response in one read.
pub const INITIAL_BUFFER: usize = 1024;
/// Sixteen TLS records: keeps a loopback or LAN link busy with few syscalls.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Looks at the client's first bytes before they are forwarded.
pub trait Sniffer {
    /// The client's bytes so far; true once they said enough (or will never say more).
    fn sniff(&mut self, first: &[u8]) -> bool;
    /// Nothing conclusive came in time, or the client ended first.
    fn give_up(&mut self, first: &[u8]);
}

/// What the relay was started with besides the sockets.
#[derive(Debug)]
pub struct Start {
    /// Bytes the client sent before the tunnel opened: forwarded (and sniffed) first.
    pub to_vendor: Bytes,
    /// Bytes the vendor sent after its answer: the destination's first bytes.
    pub to_client: Bytes,
}

/// The limits a relay runs under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub sniff_timeout: Duration,
    /// Most client bytes held back for the sniffer.
    pub max_sniff_bytes: usize,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached their end of stream.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// Stopped from outside (the meter's shutdown, a reclaimed slot).
    Stopped,
    /// A read or a write failed; `side` is the socket at fault.
    Failed { side: Side, error: io::Error },
}

/// What the relay saw.
#[derive(Debug)]
pub struct Report {
    pub end: End,
    /// Bytes copied client → vendor and vendor → client.
    pub up: u64,
    pub down: u64,
    /// The side whose direction ended first (its end of stream, or its failure).
    pub first_to_end: Option<Side>,
    /// Whether the vendor's direction ended at a TLS record boundary (`None`: not TLS).
    pub down_at_record_boundary: Option<bool>,
}

/// A direction's failure, with the socket at fault.
struct Failed(Side, io::Error);

/// Relays until both directions end, the relay idles out, or `stop` resolves (its value is
/// returned beside the report). `activity` is touched whenever bytes move.
pub async fn relay<CR, CW, VR, VW, S>(
    (mut client_read, mut client_write): (CR, CW),
    (mut vendor_read, mut vendor_write): (VR, VW),
    start: Start,
    sniffer: Option<&mut (dyn Sniffer + Send)>,
    limits: Limits,
    activity: &Activity,
    stop: impl Future<Output = S>,
) -> (Report, Option<S>)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
{
    let mut stopped = None;
    let mut records = Records::default();
    // Written by each direction as it goes, read once both are done with.
    let (mut up, mut down) = (0u64, 0u64);
    let (mut up_ended, mut down_ended) = (None, None);

    let client_to_vendor = async {
        let (first, read_error) =
            sniff_first(&mut client_read, start.to_vendor, sniffer, limits, activity).await;
        if !first.is_empty() {
            vendor_write
                .write_all(&first)
                .await
                .map_err(|e| Failed(Side::Vendor, e))?;
            up += first.len() as u64;
        }
        drop(first);
        if let Some(e) = read_error {
            return Err(Failed(Side::Client, e));
        }
        copy(&mut client_read, &mut vendor_write, activity, None, &mut up)
            .await
            .map_err(|(side, e)| Failed(blame(side, Side::Client), e))?;
        up_ended = Some(Instant::now());
        Ok::<(), Failed>(())
    };
    let vendor_to_client = async {
        let early = start.to_client;
        if !early.is_empty() {
            records.feed(&early);
            client_write
                .write_all(&early)
                .await
                .map_err(|e| Failed(Side::Client, e))?;
            down += early.len() as u64;
        }
        drop(early);
        copy(
            &mut vendor_read,
            &mut client_write,
            activity,
            Some(&mut records),
            &mut down,
        )
        .await
        .map_err(|(side, e)| Failed(blame(side, Side::Vendor), e))?;
        down_ended = Some(Instant::now());
        Ok::<(), Failed>(())
    };
    let end = tokio::select! {
        result = async { tokio::try_join!(client_to_vendor, vendor_to_client) } => match result {
            Ok(_) => End::Closed,
            Err(Failed(side, error)) => End::Failed { side, error },
        },
        () = activity.idle(limits.idle_timeout, || false) => End::Idle,
        reason = stop => {
            stopped = Some(reason);
            End::Stopped
        }
    };
    let first_to_end = match (up_ended, down_ended, &end) {
        (Some(u), Some(d), _) => Some(if d < u { Side::Vendor } else { Side::Client }),
        (Some(_), None, _) => Some(Side::Client),
        (None, Some(_), _) => Some(Side::Vendor),
        (None, None, End::Failed { side, .. }) => Some(*side),
        (None, None, _) => None,
    };
    let report = Report {
        end,
        up,
        down,
        first_to_end,
        down_at_record_boundary: records.at_boundary(),
    };
    (report, stopped)
}

/// Copies one direction to its end, then half-closes the writer: for a stream that one side
/// stops interpreting while the other direction carries on (a captured HTTP/1.1 connection after
/// a protocol switch, say).
pub async fn pass_rest<R, W>(reader: &mut R, writer: &mut W, activity: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0;
    copy(reader, writer, activity, None, &mut total)
        .await
        .map_err(|(_, e)| e)
}

/// Which end of a copy failed.
#[derive(Clone, Copy)]
enum CopySide {
    Reader,
    Writer,
}

/// The socket at fault: the reader is the direction's source, the writer the other side.
fn blame(side: CopySide, source: Side) -> Side {
    match (side, source) {
        (CopySide::Reader, source) => source,
        (CopySide::Writer, Side::Client) => Side::Vendor,
        (CopySide::Writer, Side::Vendor) => Side::Client,
    }
}

/// Copies until end of stream, then half-closes the writer, adding what it copied to `total`.
async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    activity: &Activity,
    mut records: Option<&mut Records>,
    total: &mut u64,
) -> Result<(), (CopySide, io::Error)>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = Buffer::default();
    loop {
        let n = buf
            .read_from(reader)
            .await
            .map_err(|e| (CopySide::Reader, e))?;
        activity.touch();
        if n == 0 {
            // The peer may already be gone; a failed half-close changes nothing.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        if let Some(records) = records.as_deref_mut() {
            records.feed(buf.filled(n));
        }
        writer
            .write_all(buf.filled(n))
            .await
            .map_err(|e| (CopySide::Writer, e))?;
        activity.touch();
        *total += n as u64;
        buf.adapt(n);
    }
}

/// How long a direction keeps its buffer with nothing to read: a pause inside a transfer
/// keeps it, an idle keep-alive tunnel lets it go.
const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A direction's buffer: [`INITIAL_BUFFER`] bytes to start, doubling while reads fill it up to
/// [`MAX_BUFFER`], halving when they use an eighth of it or less, and back to the initial size
/// when nothing has come for [`RELEASE_AFTER`]: an idle tunnel holds two small buffers.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
}

impl Buffer {
    fn filled(&self, n: usize) -> &[u8] {
        &self.bytes[..n]
    }

    /// Reads into the buffer, shrinking it while the reader stays quiet.
    async fn read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        reader: &mut R,
    ) -> io::Result<usize> {
        let mut release = std::pin::pin!(tokio::time::sleep(RELEASE_AFTER));
        std::future::poll_fn(|cx| {
            if self.bytes.is_empty() {
                // A read needs room to wait on: an empty buffer would read as end of stream.
                self.bytes.resize(INITIAL_BUFFER, 0);
            }
            let mut read = ReadBuf::new(&mut self.bytes);
            match std::pin::Pin::new(&mut *reader).poll_read(cx, &mut read) {
                std::task::Poll::Ready(result) => {
                    std::task::Poll::Ready(result.map(|()| read.filled().len()))
                }
                std::task::Poll::Pending => {
                    if self.bytes.len() > INITIAL_BUFFER && release.as_mut().poll(cx).is_ready() {
                        // Quiet for a while: keep only the initial size. The reader's waker is
                        // registered; the next poll reads into the smaller buffer.
                        self.bytes = vec![0u8; INITIAL_BUFFER];
                    }
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }

    /// Sizes the buffer after a read of `n` bytes.
    fn adapt(&mut self, n: usize) {
        let len = self.bytes.len();
        if n == len && len < MAX_BUFFER {
            self.bytes.resize(len * 2, 0);
        } else if n <= len / 8 && len > INITIAL_BUFFER {
            self.bytes.truncate(len / 2);
            self.bytes.shrink_to_fit();
        }
    }
}

/// Reads the client's first bytes, after `pending` ones, until the sniffer has seen enough or
/// the limits are reached. Returns the bytes (to forward unchanged) and a read error if one
/// ended it. Without a sniffer, returns `pending` at once.
async fn sniff_first<R: AsyncRead + Unpin>(
    client: &mut R,
    pending: Bytes,
    sniffer: Option<&mut (dyn Sniffer + Send)>,
    limits: Limits,
    activity: &Activity,
) -> (Vec<u8>, Option<io::Error>) {
    let mut buf = pending.to_vec();
    let Some(sniffer) = sniffer else {
        return (buf, None);
    };
    if !buf.is_empty() && sniffer.sniff(&buf) {
        return (buf, None);
    }
    let deadline = Instant::now() + limits.sniff_timeout;
    loop {
        if buf.len() >= limits.max_sniff_bytes {
            sniffer.give_up(&buf);
            return (buf, None);
        }
        // Reads go straight into this buffer, which grows by what arrives (one ClientHello is
        // usually a single read), up to the limit.
        buf.reserve(SNIFF_READ.min(limits.max_sniff_bytes - buf.len()));
        match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
            Err(_elapsed) => {
                sniffer.give_up(&buf);
                return (buf, None);
            }
            Ok(Ok(0)) => {
                if !sniffer.sniff(&buf) {
                    sniffer.give_up(&buf);
                }
                return (buf, None);
            }
            Ok(Ok(_)) => {
                activity.touch();
                if sniffer.sniff(&buf) {
                    return (buf, None);
                }
            }
            Ok(Err(e)) => {
                sniffer.give_up(&buf);
                return (buf, Some(e));
            }
        }
    }
}

/// Bytes reserved per sniff read: a typical ClientHello (up to about 2 KiB with post-quantum
/// key shares) in one read.
const SNIFF_READ: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(60),
            sniff_timeout: Duration::from_secs(1),
            max_sniff_bytes: 16 * 1024,
        }
    }

    #[tokio::test]
    async fn both_directions_are_copied_and_half_closed() {
        let (client, mut crawler) = tokio::io::duplex(64 * 1024);
        let (vendor, mut upstream) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(async move {
            relay(
                tokio::io::split(client),
                tokio::io::split(vendor),
                Start {
                    to_vendor: Bytes::from_static(b"early "),
                    to_client: Bytes::from_static(b"banner "),
                },
                None,
                limits(),
                &Activity::default(),
                std::future::pending::<()>(),
            )
            .await
            .0
        });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let crawler_side = tokio::spawn(async move {
            crawler.write_all(&sent).await.unwrap();
            crawler.shutdown().await.unwrap();
            let mut back = Vec::new();
            crawler.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        // The vendor reads everything up to the FIN, then answers and closes.
        loop {
            let n = upstream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        upstream.write_all(b"done").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(&got[..6], b"early ");
        assert_eq!(&got[6..], &data[..]);
        assert_eq!(crawler_side.await.unwrap(), b"banner done");
        let report = relay.await.unwrap();
        assert!(matches!(report.end, End::Closed), "{report:?}");
        assert_eq!((report.up, report.down), (6 + 1_000_000, 11));
        assert_eq!(report.first_to_end, Some(Side::Client));
        assert_eq!(report.down_at_record_boundary, None, "not TLS");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_relay_ends_at_its_idle_timeout() {
        let (client, _crawler) = tokio::io::duplex(1024);
        let (vendor, _upstream) = tokio::io::duplex(1024);
        let started = Instant::now();
        let (report, _) = relay(
            tokio::io::split(client),
            tokio::io::split(vendor),
            Start {
                to_vendor: Bytes::new(),
                to_client: Bytes::new(),
            },
            None,
            limits(),
            &Activity::default(),
            std::future::pending::<()>(),
        )
        .await;
        assert!(matches!(report.end, End::Idle));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    struct Counting(usize, bool);
    impl Sniffer for Counting {
        fn sniff(&mut self, first: &[u8]) -> bool {
            self.0 = first.len();
            first.len() >= 5
        }
        fn give_up(&mut self, _: &[u8]) {
            self.1 = true;
        }
    }

    #[tokio::test]
    async fn the_sniffer_sees_the_first_bytes_before_they_are_forwarded() {
        let (client, mut crawler) = tokio::io::duplex(1024);
        let (vendor, mut upstream) = tokio::io::duplex(1024);
        let mut sniffer = Counting(0, false);
        crawler.write_all(b"hel").await.unwrap();
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            crawler.write_all(b"lo world").await.unwrap();
            crawler.shutdown().await.unwrap();
            crawler
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            upstream.shutdown().await.unwrap();
            got
        });
        let (report, _) = relay(
            tokio::io::split(client),
            tokio::io::split(vendor),
            Start {
                to_vendor: Bytes::from_static(b""),
                to_client: Bytes::new(),
            },
            Some(&mut sniffer),
            limits(),
            &Activity::default(),
            std::future::pending::<()>(),
        )
        .await;
        let _crawler = feeder.await.unwrap();
        assert_eq!(reader.await.unwrap(), b"hello world");
        assert_eq!(sniffer.0, 11, "one read brought the rest");
        assert!(!sniffer.1);
        assert_eq!(report.up, 11);
    }
}
