//! The vendor leg: dialling a vendor (or, for `direct`, the destination), the CONNECT handshake,
//! and HTTP/1.1 connections for plain-HTTP forwarding.
//!
//! Every socket toward a vendor is wrapped in [`MeteredIo`] before its first byte, so the CONNECT
//! request, the vendor's answer, and everything after are counted. The CONNECT handshake is
//! written and parsed here (not by hyper) because the bytes the vendor sends after its `200` head
//! belong to the tunnel and must reach the client, and because its request is built from values
//! already validated by `pt-sniff` (no client header is copied into it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pt_config::{Upstream, VendorConfig};
use pt_metrics::caps::Name;
use pt_metrics::labels::{RejectReason, UpstreamErrorReason};
use pt_sniff::{Authority, Host};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::counting_io::{MeteredIo, Tally};
use crate::failure::{Failure, classify_connect};
use crate::outbound::Outbound;
use crate::policy;
use crate::pool::{Pool, PoolKey, VendorConn};
use crate::shared::Shared;

/// Largest CONNECT response head accepted from a vendor. Real ones are under 200 bytes; some
/// vendors add a few headers of their own.
const MAX_CONNECT_RESPONSE_HEAD: usize = 16 * 1024;
/// Most headers parsed in a CONNECT response head.
const MAX_CONNECT_RESPONSE_HEADERS: usize = 64;

/// A configured vendor at run time.
#[derive(Debug)]
pub struct Vendor {
    pub name: Name,
    pub config: VendorConfig,
    pub pool: Pool,
}

/// An established tunnel toward the destination.
#[derive(Debug)]
pub struct Established {
    pub io: MeteredIo<TcpStream>,
    /// Bytes the vendor sent after its CONNECT answer: the destination's first bytes.
    pub leftover: Bytes,
}

impl Vendor {
    pub fn new(config: VendorConfig, idle_timeout: Duration) -> Vendor {
        Vendor {
            name: Name::new(&config.name),
            pool: Pool::new(config.max_idle_connections, idle_timeout),
            config,
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self.config.upstream, Upstream::Direct)
    }

    /// The `Proxy-Authorization` sent to the vendor: the client's own when the vendor is set to
    /// forward it, else the configured credentials.
    pub fn proxy_authorization(&self, client: Option<&HeaderValue>) -> Option<HeaderValue> {
        let Upstream::HttpProxy { credentials, .. } = &self.config.upstream else {
            return None;
        };
        if self.config.forward_client_credentials {
            return client.cloned();
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

    /// Opens a counted TCP connection toward the vendor (or, for `direct`, the destination).
    pub async fn connect(
        &self,
        shared: &Shared,
        target: &Authority,
        tally: Arc<Tally>,
    ) -> Result<MeteredIo<TcpStream>, Failure> {
        let limits = &shared.config.limits;
        let stream = tokio::time::timeout(limits.connect_timeout, async {
            let addresses = match &self.config.upstream {
                Upstream::HttpProxy { address, .. } => resolve(address).await?,
                Upstream::Direct => {
                    let resolved = resolve(target).await?;
                    let allowed: Vec<SocketAddr> = resolved
                        .into_iter()
                        .filter(|a| policy::check_address(&shared.config.security, a.ip()).is_ok())
                        .collect();
                    if allowed.is_empty() {
                        return Err(Failure::Rejected(RejectReason::DestinationNotAllowed));
                    }
                    allowed
                }
            };
            connect_first(&shared.outbound, &addresses).await
        })
        .await
        .map_err(|_| Failure::Upstream(UpstreamErrorReason::ConnectTimeout))??;
        // Requests and CONNECT heads are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        Ok(MeteredIo::new(stream, tally))
    }

    /// Opens a tunnel to `target`: a CONNECT through the vendor, or a TCP connection for
    /// `direct`.
    pub async fn open_tunnel(
        &self,
        shared: &Shared,
        target: &Authority,
        tally: Arc<Tally>,
        client_authorization: Option<&HeaderValue>,
    ) -> Result<Established, Failure> {
        let mut io = self.connect(shared, target, tally).await?;
        if self.is_direct() {
            return Ok(Established {
                io,
                leftover: Bytes::new(),
            });
        }
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(value) = self.proxy_authorization(client_authorization) {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let timeout = shared.config.limits.response_timeout;
        tokio::time::timeout(timeout, async {
            io.write_all(&head)
                .await
                .map_err(|_| Failure::Upstream(UpstreamErrorReason::Reset))?;
            let (status, leftover) = read_connect_response(&mut io).await?;
            match status {
                s if s.is_success() => Ok(leftover),
                StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    Err(Failure::Upstream(UpstreamErrorReason::VendorAuth))
                }
                s => Err(Failure::TunnelRefused(s)),
            }
        })
        .await
        .map_err(|_| Failure::Upstream(UpstreamErrorReason::Timeout))?
        .map(|leftover| Established { io, leftover })
    }

    /// A new HTTP/1.1 connection for plain-HTTP requests to `target`, counted with `tally`.
    pub async fn http_connection(
        &self,
        shared: &Shared,
        target: &Authority,
        tally: Arc<Tally>,
    ) -> Result<VendorConn, Failure> {
        let io = self.connect(shared, target, tally.clone()).await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .title_case_headers(true)
            .handshake::<_, Incoming>(TokioIo::new(io))
            .await
            .map_err(|e| crate::failure::classify_hyper(&e))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(VendorConn::new(sender, tally, task.abort_handle()))
    }
}

/// Resolves a host to socket addresses (IP literals need no lookup).
async fn resolve(target: &Authority) -> Result<Vec<SocketAddr>, Failure> {
    match &target.host {
        Host::V4(ip) => Ok(vec![SocketAddr::new((*ip).into(), target.port)]),
        Host::V6(ip) => Ok(vec![SocketAddr::new((*ip).into(), target.port)]),
        Host::Name(name) => {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((&**name, target.port))
                .await
                .map_err(|_| Failure::Upstream(UpstreamErrorReason::Resolve))?
                .collect();
            if found.is_empty() {
                Err(Failure::Upstream(UpstreamErrorReason::Resolve))
            } else {
                Ok(found)
            }
        }
    }
}

/// Connects to the first address that accepts.
async fn connect_first(
    outbound: &Outbound,
    addresses: &[SocketAddr],
) -> Result<TcpStream, Failure> {
    let mut last = UpstreamErrorReason::ConnectRefused;
    for &address in addresses {
        match outbound.connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = classify_connect(&e),
        }
    }
    Err(Failure::Upstream(last))
}

/// Reads the vendor's answer to CONNECT; returns its status and the bytes after its head.
async fn read_connect_response(
    io: &mut MeteredIo<TcpStream>,
) -> Result<(StatusCode, Bytes), Failure> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|_| Failure::Upstream(UpstreamErrorReason::Reset))?;
        if n == 0 {
            return Err(Failure::Upstream(UpstreamErrorReason::Reset));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response
                    .code
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or(Failure::Upstream(UpstreamErrorReason::Protocol))?;
                let leftover = buf.split_off(head_len).freeze();
                return Ok((status, leftover));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_CONNECT_RESPONSE_HEAD => continue,
            _ => return Err(Failure::Upstream(UpstreamErrorReason::Protocol)),
        }
    }
}
