//! The meter's own outbound connections, as seen by redirect rules.
//!
//! In transparent mode iptables sends a pod's connections to vendor endpoints to the meter, and
//! the meter's own connections to those endpoints must not be sent back to it. The rules exclude
//! them by uid (the meter runs as its own user) or by mark: with `transparent.outbound_mark` set,
//! every socket the meter opens carries that `SO_MARK`.
//!
//! Should the exclusion be missing, a connection the meter opens comes straight back to its
//! transparent listener; followed, that would repeat until file descriptors run out. So the
//! captured path binds each outbound socket before connecting, which fixes its local port, and
//! registers the port until the socket closes: an accepted connection whose peer port is
//! registered is the meter talking to itself, and is refused as a loop. Binding first costs the
//! kernel's port sharing across destinations (each such socket holds its port for every
//! destination); a sidecar's few hundred connections are far from the ~28,000 ephemeral ports.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpSocket, TcpStream};

/// Marks and registers the meter's outbound sockets; see the module documentation.
#[derive(Debug, Default)]
pub struct Outbound {
    mark: Option<u32>,
    ports: Mutex<HashSet<u16>>,
}

/// Keeps a local port registered as the meter's own while the connection lives.
#[derive(Debug)]
pub struct OwnPort {
    outbound: Arc<Outbound>,
    port: u16,
}

impl Drop for OwnPort {
    fn drop(&mut self) {
        self.outbound.ports().remove(&self.port);
    }
}

impl Outbound {
    pub fn new(mark: Option<u32>) -> Outbound {
        Outbound {
            mark,
            ports: Mutex::default(),
        }
    }

    // A poisoned set is still a valid set; keep using it.
    fn ports(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn socket(&self, to: SocketAddr) -> io::Result<TcpSocket> {
        let socket = if to.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = self.mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        Ok(socket)
    }

    /// Connects to `to` with the configured mark.
    pub async fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        self.socket(to)?.connect(to).await
    }

    /// Connects to `to` with the configured mark and registers the local port until the
    /// returned guard is dropped.
    pub async fn connect_registered(
        self: &Arc<Self>,
        to: SocketAddr,
    ) -> io::Result<(TcpStream, OwnPort)> {
        let socket = self.socket(to)?;
        let any: IpAddr = if to.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        socket.bind(SocketAddr::new(any, 0))?;
        let port = socket.local_addr()?.port();
        self.ports().insert(port);
        let guard = OwnPort {
            outbound: self.clone(),
            port,
        };
        Ok((socket.connect(to).await?, guard))
    }

    /// Whether a connection from `peer` is one the meter opened itself.
    pub fn is_own(&self, peer: SocketAddr) -> bool {
        self.ports().contains(&peer.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registered_connection_is_recognised_by_its_peer_port_until_it_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbound = Arc::new(Outbound::new(None));
        let (stream, guard) = outbound
            .connect_registered(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert!(outbound.is_own(peer));
        drop((stream, guard));
        assert!(!outbound.is_own(peer));

        let plain = outbound
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert!(!outbound.is_own(peer));
        drop(plain);
    }
}
