//! A relay on the wire between the meter and a real vendor that counts every byte each way:
//! what the vendor received and sent, whatever either side's own books say. The ground truth
//! for tests whose vendor is third-party software that keeps no books of ours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes counted by a tap since it started.
#[derive(Debug, Default)]
pub struct Tap {
    to_vendor: AtomicU64,
    from_vendor: AtomicU64,
}

impl Tap {
    /// Listens on `listen` (port 0 for any) and relays every connection to `vendor`, in the
    /// current runtime. Returns the tap and the address it listens on.
    pub async fn start(listen: SocketAddr, vendor: SocketAddr) -> (Arc<Tap>, SocketAddr) {
        let listener = TcpListener::bind(listen).await.expect("the tap binds");
        let address = listener.local_addr().expect("the tap has an address");
        let tap = Arc::new(Tap::default());
        let counting = tap.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(vendor).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (vendor_read, vendor_write) = upstream.into_split();
                tokio::spawn(pump(client_read, vendor_write, counting.clone(), true));
                tokio::spawn(pump(vendor_read, client_write, counting.clone(), false));
            }
        });
        (tap, address)
    }

    /// (bytes to the vendor, bytes from the vendor).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.to_vendor.load(Ordering::SeqCst),
            self.from_vendor.load(Ordering::SeqCst),
        )
    }
}

/// Copies one direction, counting what was read, and passes the close on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, tap: Arc<Tap>, to_vendor: bool) {
    let counter = if to_vendor {
        &tap.to_vendor
    } else {
        &tap.from_vendor
    };
    // A relay's usual read size; the counts do not depend on it.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
