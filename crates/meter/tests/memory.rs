//! What an open tunnel costs the meter in memory. A shared meter holds thousands of crawler
//! tunnels that sit idle most of their lives, so what one of them keeps on the heap is multiplied
//! by the fleet. Counted by this test binary's own allocator: the meter runs in-process, and the
//! test's side (raw sockets, vectors sized up front) adds little per tunnel.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pt_testkit::meter::MeterSetup;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Tunnels opened before counting, so that what is made once (the destination's series, the
/// runtime's first registrations) is not charged to the counted ones.
const WARM_UP: usize = 20;
/// Tunnels counted: enough that the per-tunnel figure is not blurred by one-off allocations.
const TUNNELS: usize = 300;

/// Opens a CONNECT tunnel to `origin` through the meter at `proxy`; returns it once the meter
/// said 200.
async fn open_tunnel(proxy: std::net::SocketAddr, origin: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let head = format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let expected = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut answer = [0u8; 39];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[..], &expected[..]);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_waiting_for_its_client_holds_no_read_buffer_of_its_own() {
    // The destination accepts and keeps every connection, saying nothing.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_address = origin.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut kept = Vec::with_capacity(WARM_UP + TUNNELS);
        while let Ok((stream, _)) = origin.accept().await {
            kept.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let meter = MeterSetup::new()
        .vendor_yaml("  - name: direct\n    kind: direct\n")
        .yaml(&format!(
            "routing:\n  default_vendor: direct\nidentity:\n  from: none\nsecurity:\n  \
             allowed_private_destinations: [\"127.0.0.0/8\"]\n  connect_ports: [{}]\n\
             access_log:\n  enabled: false",
            origin_address.port()
        ))
        .spawn()
        .await;
    let mut clients = Vec::with_capacity(WARM_UP + TUNNELS);
    for _ in 0..WARM_UP {
        clients.push(open_tunnel(meter.proxy(), origin_address).await);
    }
    let settled = async |count: usize| {
        while accepted.load(Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The meter's side of the last tunnel goes on from its answer to the relay's first read.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    settled(WARM_UP).await;

    let region = Region::new(ALLOCATOR);
    for _ in 0..TUNNELS {
        clients.push(open_tunnel(meter.proxy(), origin_address).await);
    }
    settled(WARM_UP + TUNNELS).await;
    let change = region.change();
    let live = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    let per_tunnel = live / TUNNELS as isize;

    // Each tunnel's task, its two sockets' registrations (and the test's two), the exchange and
    // the relay's state come to about 7 KiB. A head buffer kept for the tunnel's lifetime (4 KiB),
    // or a sniff buffer reserved while waiting for the client's first bytes (2 KiB), would
    // show.
    assert!(
        per_tunnel < 8 * 1024,
        "an idle tunnel holds {per_tunnel} bytes of heap"
    );
}
