//! One direction of a tunnel: read, write, repeat, with a buffer that follows the traffic.
//!
//! Thousands of crawler tunnels sit mostly idle between requests, while a few carry large
//! downloads. A fixed 64 KiB pair of buffers per tunnel would cost 128 MiB of memory at 1,000
//! tunnels; a fixed small buffer costs many syscalls per megabyte. So each direction starts with
//! [`INITIAL_BUFFER`], doubles whenever a read fills the buffer (more data is waiting), up to
//! [`MAX_BUFFER`], and halves again when reads use an eighth of it or less, so a keep-alive
//! tunnel that carried one large page does not keep a large buffer while it idles. Counting
//! happens in the vendor socket's `MeteredIo`, not here.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Enough for a ClientHello, a small request or a small response in one read.
pub const INITIAL_BUFFER: usize = 1024;
/// Sixteen TLS records: keeps a loopback or LAN link busy with few syscalls.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Which side of a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error("writing: {0}")]
    Write(std::io::Error),
}

/// Copies until end of stream, then half-closes the writer, unless the other direction has
/// already ended (`other_done`): then both sockets are about to be closed, and closing sends the
/// FIN without a separate `shutdown`. Returns the bytes copied.
pub async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    done: &AtomicBool,
    other_done: &AtomicBool,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(CopyError::Read)?;
        if n == 0 {
            done.store(true, Ordering::Relaxed);
            if !other_done.load(Ordering::Relaxed) {
                // The peer may already be gone; a failed half-close changes nothing.
                let _ = writer.shutdown().await;
            }
            return Ok(total);
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(CopyError::Write)?;
        writer.flush().await.map_err(CopyError::Write)?;
        total += n as u64;
        let len = buf.len();
        if n == len && len < MAX_BUFFER {
            buf.resize(len * 2, 0);
        } else if n <= len / 8 && len > INITIAL_BUFFER {
            buf.truncate(len / 2);
            buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_everything_and_half_closes() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let (mut c, mut d) = tokio::io::duplex(64 * 1024);
        let source = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&source).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let copier = tokio::spawn(async move {
            let (done, other) = (AtomicBool::new(false), AtomicBool::new(false));
            copy(&mut b, &mut c, &done, &other).await.unwrap()
        });
        let mut received = Vec::new();
        d.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(copier.await.unwrap(), data.len() as u64);
        assert_eq!(received, data);
    }
}
