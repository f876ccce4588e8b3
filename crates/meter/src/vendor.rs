//! The vendor leg: the bound on vendor connections, dialling a vendor (or, for `direct`, the
//! destination), the CONNECT handshake, and keep-alive connections for plain HTTP.
//!
//! Every socket toward a vendor is wrapped in [`MeteredStream`] before its first byte, so the
//! CONNECT request, the vendor's answer, and everything after are counted. The CONNECT handshake
//! is written and parsed here because the bytes the vendor sends after its `200` head belong to
//! the tunnel and must reach the client, and because its request is built from values already
//! validated by `pt-sniff` (no client header is copied into it).
//!
//! Vendor connections are bounded as a whole (`limits.max_vendor_connections`, by default what
//! the file-descriptor limit leaves after the client connections): every HTTP/2 stream, tunnel
//! and captured connection needs one, and without a bound a few clients could open enough to
//! exhaust the process's descriptors and lock everyone out. At the bound, idle pooled
//! connections are closed (oldest first) before a request is refused.

pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use pt_config::{LimitsConfig, SecurityConfig, Upstream, VendorConfig};
use pt_metrics::caps::Name;
use pt_metrics::labels::{RejectReason, UpstreamErrorReason};
use pt_sniff::http1::{RequestKind, ResponseHead, parse_response_head};
use pt_sniff::{Authority, Host};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::counting_io::{Attribution, MeteredIo, MeteredStream};
use crate::failure::{Error, Failure, classify_connect};
use crate::outbound::{Outbound, OwnPort};
use crate::policy::{self, OwnAddresses};
use pool::{Pool, PoolKey};

/// Largest response head accepted from a vendor. Real ones are well under a few KiB; some
/// vendors add headers of their own.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bytes reserved for reading a CONNECT answer: a head alone, whole in one read.
const CONNECT_ANSWER_READ: usize = 4 * 1024;
/// Bytes reserved for reading a response to a request: its head and, for the small responses
/// most requests get, the whole body in the same read (so the client gets it in one write).
pub const RESPONSE_READ: usize = 16 * 1024;

/// Every vendor, and what dialling them needs.
#[derive(Debug)]
pub struct Vendors {
    pub list: Vec<Vendor>,
    budget: Arc<Semaphore>,
    outbound: Arc<Outbound>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    security: SecurityConfig,
    own: Arc<OwnAddresses>,
}

/// A configured vendor at run time.
#[derive(Debug)]
pub struct Vendor {
    pub name: Name,
    pub config: VendorConfig,
    pub pool: Pool,
}

/// One connection toward a vendor, holding its share of the connection bound.
#[derive(Debug)]
pub struct VendorConn {
    pub stream: MeteredStream,
    /// Whether it carried a request before (a stale keep-alive connection may fail the next one
    /// without it being anyone's fault).
    pub reused: bool,
    _permit: OwnedSemaphorePermit,
    /// For captured connections: the local port, registered as the meter's own until closed.
    _own_port: Option<OwnPort>,
}

/// What keeps a vendor connection's share of the bound (and its registered port) while its
/// halves are used apart; drop it after them.
#[derive(Debug)]
pub struct Lease {
    _permit: OwnedSemaphorePermit,
    _own_port: Option<OwnPort>,
}

impl VendorConn {
    pub fn attribute_to(&mut self, attribution: &Arc<Attribution>) {
        self.stream.attribute_to(attribution);
    }

    /// The two counted halves, and the lease to drop after them.
    pub fn into_halves(self) -> (MeteredIo<OwnedReadHalf>, MeteredIo<OwnedWriteHalf>, Lease) {
        let MeteredStream { read, write } = self.stream;
        (
            read,
            write,
            Lease {
                _permit: self._permit,
                _own_port: self._own_port,
            },
        )
    }
}

impl Vendors {
    pub fn new(
        vendors: &[VendorConfig],
        limits: &LimitsConfig,
        max_connections: usize,
        security: SecurityConfig,
        outbound: Arc<Outbound>,
        own: Arc<OwnAddresses>,
    ) -> Vendors {
        Vendors {
            list: vendors
                .iter()
                .map(|v| Vendor {
                    name: Name::new(&v.name),
                    pool: Pool::new(v.max_idle_connections, limits.vendor_idle_timeout),
                    config: v.clone(),
                })
                .collect(),
            budget: Arc::new(Semaphore::new(max_connections)),
            outbound,
            connect_timeout: limits.connect_timeout,
            response_timeout: limits.response_timeout,
            security,
            own,
        }
    }

    /// A share of the connection bound: closes idle pooled connections, oldest first, when
    /// none is free.
    fn permit(&self) -> Result<OwnedSemaphorePermit, Failure> {
        loop {
            if let Ok(permit) = self.budget.clone().try_acquire_owned() {
                return Ok(permit);
            }
            let oldest = self.list.iter().find(|v| v.pool.idle_count() > 0);
            match oldest {
                Some(vendor) => {
                    vendor.pool.close_oldest();
                }
                None => return Err(Failure::Rejected(RejectReason::VendorConnectionLimit)),
            }
        }
    }

    /// Opens a counted TCP connection toward `vendor` (or, for `direct`, toward `target`).
    pub async fn dial(
        &self,
        vendor: &Vendor,
        target: &Authority,
        attribution: Arc<Attribution>,
    ) -> Result<VendorConn, Error> {
        let permit = self.permit()?;
        let addresses = match &vendor.config.upstream {
            Upstream::HttpProxy { address, .. } => resolve(address, self.connect_timeout).await?,
            Upstream::Direct => self.allowed(resolve(target, self.connect_timeout).await?)?,
        };
        let stream = self.connect_first(&addresses).await?;
        Ok(VendorConn {
            stream: MeteredStream::new(stream, attribution),
            reused: false,
            _permit: permit,
            _own_port: None,
        })
    }

    /// Opens a counted connection for a captured crawler connection to `to`, registering its
    /// local port so that a connection redirected back to the meter is recognised as its own.
    pub async fn dial_captured(
        &self,
        to: SocketAddr,
        attribution: Arc<Attribution>,
    ) -> Result<VendorConn, Error> {
        let permit = self.permit()?;
        let connecting = self.outbound.connect_registered(to);
        let (stream, own) = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(Error::new(Failure::Upstream(classify_connect(&e)), e)),
            Err(_) => return Err(Failure::Upstream(UpstreamErrorReason::ConnectTimeout).into()),
        };
        let _ = stream.set_nodelay(true);
        Ok(VendorConn {
            stream: MeteredStream::new(stream, attribution),
            reused: false,
            _permit: permit,
            _own_port: Some(own),
        })
    }

    /// The addresses a `direct` destination may be dialled at: public ones (or allow-listed),
    /// never the meter's own.
    fn allowed(&self, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failure> {
        let mut refusal = RejectReason::DestinationNotAllowed;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| {
                if self.own.contains(*a) {
                    refusal = RejectReason::Loop;
                    return false;
                }
                policy::check_address(&self.security, a.ip()).is_ok()
            })
            .collect();
        if allowed.is_empty() {
            Err(Failure::Rejected(refusal))
        } else {
            Ok(allowed)
        }
    }

    /// Connects to the first address that accepts, within the connect timeout.
    async fn connect_first(&self, addresses: &[SocketAddr]) -> Result<TcpStream, Error> {
        let attempt = async {
            let mut last = None;
            for &address in addresses {
                match self.outbound.connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(stream)) => {
                // Requests and CONNECT heads are small writes that must leave at once.
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(Some(e))) => Err(Error::new(Failure::Upstream(classify_connect(&e)), e)),
            Ok(Err(None)) => Err(Failure::Upstream(UpstreamErrorReason::Resolve).into()),
            Err(_) => Err(Failure::Upstream(UpstreamErrorReason::ConnectTimeout).into()),
        }
    }

    /// A connection for a plain-HTTP request to `target`: a pooled one when there is one, else
    /// a new one. It counts to `attribution` from its first byte.
    pub async fn http_connection(
        &self,
        vendor: &Vendor,
        target: &Authority,
        attribution: &Arc<Attribution>,
    ) -> Result<VendorConn, Error> {
        if let Some(mut conn) = vendor.pool.checkout(&vendor.pool_key(target)) {
            conn.attribute_to(attribution);
            return Ok(conn);
        }
        self.dial(vendor, target, attribution.clone()).await
    }

    /// Opens a tunnel to `target`: a CONNECT through the vendor, or a TCP connection for
    /// `direct`. Returns the connection and the bytes the vendor sent after its answer.
    pub async fn open_tunnel(
        &self,
        vendor: &Vendor,
        target: &Authority,
        attribution: Arc<Attribution>,
        client_authorization: Option<&[u8]>,
    ) -> Result<(VendorConn, Bytes), Error> {
        let mut conn = self.dial(vendor, target, attribution).await?;
        if vendor.is_direct() {
            return Ok((conn, Bytes::new()));
        }
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(value) = vendor.proxy_authorization(client_authorization) {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let handshake = async {
            conn.stream
                .write
                .write_all(&head)
                .await
                .map_err(|e| Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e))?;
            let mut buf = BytesMut::new();
            let response = read_response_head(
                &mut conn.stream.read,
                &mut buf,
                RequestKind::Connect,
                CONNECT_ANSWER_READ,
            )
            .await?;
            match response.status {
                // The destination's first bytes, if any (the relay's `Start` copies them out).
                200..=299 => {
                    buf.advance(response.len);
                    Ok(buf.freeze())
                }
                407 => Err(Failure::Upstream(UpstreamErrorReason::VendorAuth).into()),
                status => Err(Failure::TunnelRefused(status).into()),
            }
        };
        match tokio::time::timeout(self.response_timeout, handshake).await {
            Ok(Ok(leftover)) => Ok((conn, leftover)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Failure::Upstream(UpstreamErrorReason::Timeout).into()),
        }
    }
}

impl Vendor {
    pub fn is_direct(&self) -> bool {
        matches!(self.config.upstream, Upstream::Direct)
    }

    /// The `Proxy-Authorization` sent to the vendor: the client's own when the vendor is set to
    /// forward it, else the configured credentials.
    pub fn proxy_authorization(&self, client: Option<&[u8]>) -> Option<HeaderValue> {
        let Upstream::HttpProxy { credentials, .. } = &self.config.upstream else {
            return None;
        };
        if self.config.forward_client_credentials {
            return client.and_then(|c| HeaderValue::from_bytes(c).ok());
        }
        credentials.as_ref().and_then(|c| {
            let mut value = HeaderValue::from_str(c.proxy_authorization()).ok()?;
            value.set_sensitive(true);
            Some(value)
        })
    }

    /// The pool key of requests to `target`: one pool for a proxy, one per destination for
    /// `direct`.
    pub fn pool_key(&self, target: &Authority) -> PoolKey {
        if self.is_direct() {
            Some(target.clone())
        } else {
            None
        }
    }
}

/// Resolves a host to socket addresses (IP literals need no lookup), within `timeout`.
async fn resolve(target: &Authority, timeout: Duration) -> Result<Vec<SocketAddr>, Error> {
    match &target.host {
        Host::V4(ip) => Ok(vec![SocketAddr::new((*ip).into(), target.port)]),
        Host::V6(ip) => Ok(vec![SocketAddr::new((*ip).into(), target.port)]),
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((&**name, target.port));
            let resolve = |e| Error::new(Failure::Upstream(UpstreamErrorReason::Resolve), e);
            let found: Vec<SocketAddr> = tokio::time::timeout(timeout, lookup)
                .await
                .map_err(|_| Error::from(Failure::Upstream(UpstreamErrorReason::Resolve)))?
                .map_err(resolve)?
                .collect();
            if found.is_empty() {
                Err(Failure::Upstream(UpstreamErrorReason::Resolve).into())
            } else {
                Ok(found)
            }
        }
    }
}

/// Reads a response head from the vendor into `buf` (which may already hold the start of it),
/// answering a request of `kind`, reserving `read_size` bytes per read. The head is
/// `buf[..head.len]`; what follows it stays in `buf`.
pub async fn read_response_head<R: tokio::io::AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    kind: RequestKind,
    read_size: usize,
) -> Result<ResponseHead, Error> {
    let protocol = || Error::from(Failure::Upstream(UpstreamErrorReason::Protocol));
    loop {
        match parse_response_head(buf, MAX_RESPONSE_HEAD, kind) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(_) => return Err(protocol()),
        }
        buf.reserve(read_size);
        match read.read_buf(buf).await {
            Ok(0) => {
                return Err(Failure::Upstream(UpstreamErrorReason::Reset).into());
            }
            Ok(_) => {}
            Err(e) => return Err(Error::new(Failure::Upstream(UpstreamErrorReason::Reset), e)),
        }
    }
}
