//! Client-facing listeners: accept, admit the connection, tell HTTP/1.1 from HTTP/2, serve.
//!
//! Everything is bounded. Connections take a slot ([`crate::slots`]): at the bound the longest
//! idle connection is closed to make room, and only when none is idle is the new one answered
//! 503 and counted. An `accept` that fails (out of file descriptors, say) is logged once per
//! burst and retried after a pause that doubles while the condition lasts, so the loop neither
//! spins nor sleeps long once descriptors free up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use pt_config::VendorIndex;
use pt_metrics::labels::RejectReason;
use pt_sniff::h2::{PREFACE, may_be_preface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::lifecycle::ConnInfo;
use crate::slots::Slot;
use crate::{h2, http1};

/// How long a refused connection gets to receive its one-line answer before it is closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause after a failed `accept`: short enough to recover within a
/// fraction of a second once descriptors free up, long enough not to spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Binds a listener whose accepted connections have `TCP_NODELAY` already: Linux (and the BSDs)
/// copy it from the listening socket, which saves a `setsockopt` per connection. Every
/// client-facing socket wants it: answers are whole heads and relayed bytes, already batched.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    Ok(listener)
}

/// The next accepted connection, or `None` once `stop` is cancelled.
pub async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return None,
        };
        match accepted {
            Ok(pair) => return Some(pair),
            Err(error) => {
                if backoff == ACCEPT_BACKOFF_MIN {
                    tracing::warn!(%error, "accept failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return None,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Accepts proxy connections until draining starts.
pub async fn accept_loop(
    ctx: Arc<Context>,
    listener: TcpListener,
    listener_vendor: Option<VendorIndex>,
) {
    // A listener bound to one address is reached at that address, which the meter's own
    // addresses hold already; only a wildcard one needs to learn (a `getsockname` per accept)
    // which of the host's addresses clients use (as does one whose address cannot be read).
    let wildcard = listener
        .local_addr()
        .map_or(true, |local| local.ip().is_unspecified());
    while let Some((stream, peer)) = next_connection(&listener, &ctx.drain.draining).await {
        let sources = &ctx.allowed_sources;
        if !sources.is_empty() && !sources.iter().any(|net| net.contains(peer.ip())) {
            ctx.metering
                .refuse_connection(RejectReason::SourceNotAllowed);
            tokio::spawn(refuse_connection(stream, REFUSED_FORBIDDEN));
            continue;
        }
        let Some(slot) = ctx.slots.admit() else {
            ctx.metering.refuse_connection(RejectReason::Overloaded);
            tokio::spawn(refuse_connection(stream, REFUSED_OVERLOADED));
            continue;
        };
        if wildcard && let Ok(local) = stream.local_addr() {
            ctx.gate.own.saw_local(local.ip());
        }
        let conn = ConnInfo {
            peer,
            listener_vendor,
        };
        ctx.drain
            .tasks
            .spawn(serve(ctx.clone(), stream, conn, slot));
    }
}

const REFUSED_FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\nX-Proxy-Telemetry-Error: source_not_allowed\r\n\r\n";
const REFUSED_OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nX-Proxy-Telemetry-Error: overloaded\r\n\r\n";

/// Most of a refused client's bytes read and discarded before its connection is closed.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// Answers and closes a refused connection. Closing a socket with unread bytes in its receive
/// queue sends a reset, which can destroy the answer before the client reads it: so the
/// client's bytes are read and discarded (a lingering close, as HAProxy and nginx do) until it
/// closes too, [`REFUSAL_DRAIN_BYTES`] have come, or [`REFUSAL_WRITE_TIMEOUT`] has passed.
async fn refuse_connection(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
        let mut discard = [0u8; 1024];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Keeps `proxy_open_connections` up while a client connection is served.
pub struct OpenConnection<'a>(&'a Context);

impl<'a> OpenConnection<'a> {
    pub fn new(ctx: &'a Context) -> OpenConnection<'a> {
        ctx.metering.metrics.open_connections.inc();
        OpenConnection(ctx)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metering.metrics.open_connections.dec();
    }
}

/// Serves one client connection: HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1.
async fn serve(ctx: Arc<Context>, mut stream: TcpStream, conn: ConnInfo, mut slot: Slot) {
    let _open = OpenConnection::new(&ctx);
    // A connection's first request must arrive whole within the head timeout of its accept
    // (and an idle timeout shorter than that bounds it too: a silent connection is idle).
    let limits = &ctx.limits;
    let first_deadline =
        Instant::now() + limits.header_read_timeout.min(limits.client_idle_timeout);
    // A connection that has sent nothing yet may be reclaimed like an idle one.
    slot.idle();
    let mut buf = BytesMut::new();
    let is_h2 = loop {
        tokio::select! {
            ready = stream.readable() => if ready.is_err() { return },
            () = tokio::time::sleep_until(first_deadline) => return,
            () = slot.reclaimed() => return,
            () = ctx.drain.draining.cancelled() => return,
        }
        // Room for a whole request head: the first read usually brings one, whichever
        // protocol it turns out to be.
        buf.reserve(http1::HEAD_READ);
        // A read through `AsyncRead` rather than `try_read`: a short read tells the runtime the
        // socket is drained, so the next read (or the watch for the client's close) waits for
        // readiness instead of asking the kernel first.
        match stream.read_buf(&mut buf).now_or_never() {
            None => continue,
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(_)) => {}
        }
        if !may_be_preface(&buf) {
            break false;
        }
        if buf.len() >= PREFACE.len() {
            break true;
        }
    };
    // Each protocol's state on the heap, so that the task holds only the one it speaks.
    if is_h2 {
        Box::pin(h2::serve(
            ctx.clone(),
            stream,
            conn,
            slot,
            buf,
            first_deadline,
        ))
        .await;
    } else {
        Box::pin(http1::serve(
            ctx.clone(),
            stream,
            conn,
            slot,
            buf,
            first_deadline,
        ))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_from_their_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
