//! The one relay for everything tunnel-like: CONNECT tunnels over HTTP/1.1 and HTTP/2, captured
//! SOCKS5 and CONNECT tunnels, and captured connections relayed as bytes.
//!
//! Two directions run side by side in the caller's task, each read → write → repeat.
//! Thousands of crawler tunnels sit mostly idle between requests while a few carry large
//! downloads: buffers of their own, even small ones that grow with the traffic, cost a shared
//! meter tens of megabytes at 5,000 pods (bench/results/scale.md). So a direction owns no
//! buffer: it reads into its worker thread's [`READ_SIZE`] buffer and writes straight from it
//! within the same poll, and keeps bytes of its own only when the other side cannot take them
//! all (a slow peer), and only until it does. An idle tunnel holds no user-space buffer: not
//! while it waits for the client's first bytes (they are read through the same thread buffer),
//! nor the head buffer its CONNECT came in ([`Start::copied`]). What a tunnel does hold, about
//! 6.6 KiB (its task, the exchange, this relay's state, two socket registrations), is checked by
//! tests/memory.rs.
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
//!
//! Bytes are copied, not moved with `splice(2)`: following the records means reading every byte
//! of the bulk (vendor → client) direction, and the other direction carries requests, a few
//! hundred bytes each. Measured beside HAProxy with forced splicing, TLS bulk through a tunnel
//! is bound by the endpoints' encryption, not by the copy (README, Performance).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future;
use pt_sniff::tls_records::Records;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::activity::Activity;
use crate::exchange::Side;

/// The most one read brings: sixteen TLS records keep a loopback or LAN link busy with few
/// syscalls. One such buffer per worker thread, not per tunnel.
pub const READ_SIZE: usize = 256 * 1024;

thread_local! {
    /// The worker thread's read buffer, lent to one direction for the time of one poll.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_SIZE].into_boxed_slice());
}

/// Runs `f` on the thread's read buffer; should a read or write ever re-enter a relay on this
/// thread while it is lent, the inner one gets a buffer of its own rather than a panic.
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0u8; READ_SIZE]),
    })
}

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

impl Start {
    /// Bytes read ahead on each side, copied out of the read buffers they sit in: a slice would
    /// keep a whole head buffer alive for the tunnel's lifetime, and tunnels are many and long.
    pub fn copied(to_vendor: &[u8], to_client: &[u8]) -> Self {
        Start {
            to_vendor: Bytes::copy_from_slice(to_vendor),
            to_client: Bytes::copy_from_slice(to_client),
        }
    }
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
/// returned beside the report). `stop` is pinned by the caller, so its state is kept once, not
/// once per layer it passes through. `activity` is touched whenever bytes move.
pub async fn relay<CR, CW, VR, VW, S>(
    (mut client_read, mut client_write): (CR, CW),
    (mut vendor_read, mut vendor_write): (VR, VW),
    start: Start,
    sniffer: Option<&mut (dyn Sniffer + Send)>,
    limits: Limits,
    activity: &Activity,
    stop: Pin<&mut impl Future<Output = S>>,
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
        // A combinator, not `async { try_join!(..) }`: that block would keep both directions'
        // state twice (its captures and its join), a kilobyte per tunnel.
        result = future::try_join(client_to_vendor, vendor_to_client) => match result {
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
    // Bytes read but not yet taken by the writer: empty (no allocation) unless the writer is
    // slower than the reader.
    let mut held = Held::default();
    loop {
        let more = std::future::poll_fn(|cx| {
            step(
                cx,
                &mut *reader,
                &mut *writer,
                &mut held,
                records.as_deref_mut(),
                total,
                activity,
            )
        })
        .await?;
        if !more {
            // The peer may already be gone; a failed half-close changes nothing.
            let _ = writer.shutdown().await;
            return Ok(());
        }
    }
}

/// Bytes a direction read and could not write yet, and how many of them it has written.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    written: usize,
}

/// Writes from `bytes` until all is taken or the writer is not ready; returns how many it took.
fn poll_write_some<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    writer: &mut W,
    bytes: &[u8],
) -> (usize, Option<io::Result<()>>) {
    let mut done = 0;
    while done < bytes.len() {
        match Pin::new(&mut *writer).poll_write(cx, &bytes[done..]) {
            Poll::Ready(Ok(0)) => return (done, Some(Err(io::ErrorKind::WriteZero.into()))),
            Poll::Ready(Ok(n)) => done += n,
            Poll::Ready(Err(e)) => return (done, Some(Err(e))),
            Poll::Pending => return (done, None),
        }
    }
    (done, Some(Ok(())))
}

/// One step of a direction: first what it holds, then one read from the thread's buffer
/// written straight on. Ready(true) after a read, Ready(false) at the reader's end of stream.
fn step<R, W>(
    cx: &mut Context<'_>,
    reader: &mut R,
    writer: &mut W,
    held: &mut Held,
    records: Option<&mut Records>,
    total: &mut u64,
    activity: &Activity,
) -> Poll<Result<bool, (CopySide, io::Error)>>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    if !held.bytes.is_empty() {
        let (n, result) = poll_write_some(cx, writer, &held.bytes[held.written..]);
        held.written += n;
        *total += n as u64;
        if n > 0 {
            activity.touch();
        }
        match result {
            None => return Poll::Pending,
            Some(Err(e)) => return Poll::Ready(Err((CopySide::Writer, e))),
            // All taken: the memory goes back.
            Some(Ok(())) => *held = Held::default(),
        }
    }
    with_scratch(|buf| {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err((CopySide::Reader, e))),
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                if filled.is_empty() {
                    return Poll::Ready(Ok(false));
                }
                activity.touch();
                if let Some(records) = records {
                    records.feed(filled);
                }
                let (n, result) = poll_write_some(cx, writer, filled);
                *total += n as u64;
                if n > 0 {
                    activity.touch();
                }
                match result {
                    Some(Err(e)) => Poll::Ready(Err((CopySide::Writer, e))),
                    Some(Ok(())) => Poll::Ready(Ok(true)),
                    None => {
                        // The writer is full: keep the rest until it drains (its waker is set).
                        held.bytes = filled[n..].to_vec();
                        held.written = 0;
                        Poll::Ready(Ok(true))
                    }
                }
            }
        }
    })
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
        let room = limits.max_sniff_bytes - buf.len();
        match tokio::time::timeout_at(deadline, read_appending(client, &mut buf, room)).await {
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

/// Reads once into the thread's buffer and appends what came (at most `room` bytes) to `buf`:
/// a tunnel waiting for its client's first bytes holds no buffer of its own, and `buf` grows by
/// exactly what arrived (one ClientHello is usually a single read).
async fn read_appending<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    room: usize,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        with_scratch(|scratch| {
            let mut read = ReadBuf::new(&mut scratch[..room.min(READ_SIZE)]);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(read.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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
                std::pin::pin!(std::future::pending::<()>()),
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
            std::pin::pin!(std::future::pending::<()>()),
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
            std::pin::pin!(std::future::pending::<()>()),
        )
        .await;
        let _crawler = feeder.await.unwrap();
        assert_eq!(reader.await.unwrap(), b"hello world");
        assert_eq!(sniffer.0, 11, "one read brought the rest");
        assert!(!sniffer.1);
        assert_eq!(report.up, 11);
    }
}
