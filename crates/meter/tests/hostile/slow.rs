//! Slow and idle clients: whatever the bytes do, a request head must arrive whole within the
//! head timeout, a connection waits for its next request at most the idle timeout, an HTTP/2
//! connection without streams is closed at the idle timeout however many PINGs it sends, and
//! while slow clients hold connections, others are served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` one at a time, `gap` apart, until the peer closes; returns when it closed
/// (or `None` if it never did within `limit`), and what it answered.
pub async fn trickle(
    address: std::net::SocketAddr,
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let (mut read, mut write) = stream.split();
    let writer = async {
        for byte in bytes.iter().cycle() {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
    };
    let reader = async {
        let mut answer = Vec::new();
        let _ = read.read_to_end(&mut answer).await;
        answer
    };
    tokio::select! {
        answer = reader => (Some(started.elapsed()), answer),
        () = writer => (None, Vec::new()),
        () = tokio::time::sleep(limit) => (None, Vec::new()),
    }
}

/// Connects and waits for the meter to close the connection; returns how long that took.
pub async fn silent(address: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        _ => None,
    }
}
