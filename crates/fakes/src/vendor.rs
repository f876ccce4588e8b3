//! Fake proxy vendors that behave like real ones and keep books of every byte.
//!
//! A [`FakeVendor`] is an HTTP proxy: CONNECT tunnels and absolute-form requests, Basic
//! credentials checked (407 with a challenge otherwise), destination names resolved through a
//! built-in map to local [`Origin`]s. Every accepted connection is wrapped in a recorder that
//! counts the bytes read from and written to the meter, and splits a keep-alive connection into
//! exchanges by its own reading of the stream: a read that follows a write starts the next
//! request (HTTP/1.1 without pipelining alternates request and response). That split is
//! independent of how the meter attributes bytes, so it can check the meter.
//!
//! Fault modes answer like broken vendors do: always 407, reset in the middle of a response
//! body, or accept and never answer.
//!
//! A vendor can also listen as a SOCKS5 proxy (RFC 1928, username/password per RFC 1929) and
//! as an HTTPS proxy (TLS to the proxy itself), for crawlers that reach their vendors that way;
//! those connections are booked the same way, their bytes as they cross the socket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::origin::Origin;

/// How the vendor misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answers every request with 407 and a challenge.
    AlwaysDenyAuth,
    /// Answers `200` with `Content-Length: 1000000`, sends [`RESET_AFTER`] body bytes, then
    /// resets the connection. CONNECT gets `200`, then the same bytes, then a reset.
    ResetMidBody,
    /// Reads whatever comes and never answers.
    Blackhole,
    /// Answers each request `200` with a 5-byte body and keeps the connection, but closes it
    /// (FIN, no answer) when the second request on it arrives: a keep-alive timeout that fires
    /// just as the client reuses the connection.
    DropSecondRequest,
    /// Answers `200` with a 5-byte body and no `Connection: close`, then closes the connection,
    /// as tinyproxy does.
    CloseAfterResponse,
    /// Answers `200` announcing 1,000 body bytes, sends [`TRUNCATED_AFTER`] and closes (FIN).
    Truncated,
    /// Answers every request with this status and a short body, keeping the connection.
    Status(u16),
}

/// Body bytes a [`Fault::Truncated`] vendor sends before closing.
pub const TRUNCATED_AFTER: usize = 400;

/// Body bytes a [`Fault::ResetMidBody`] vendor sends before resetting.
pub const RESET_AFTER: usize = 1000;

/// One request/response turn on a connection, as the vendor saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeBytes {
    /// The request target (absolute URI or CONNECT authority), when hyper parsed one.
    pub target: String,
    pub from_meter: u64,
    pub to_meter: u64,
}

/// Books of one accepted connection.
#[derive(Debug, Default)]
pub struct ConnectionBook {
    pub from_meter: AtomicU64,
    pub to_meter: AtomicU64,
    /// True when the connection became a tunnel.
    pub tunnel: AtomicBool,
    last_was_write: AtomicBool,
    exchanges: Mutex<Vec<ExchangeBytes>>,
    targets: Mutex<Vec<String>>,
}

impl ConnectionBook {
    /// The exchanges of a keep-alive connection, each with its request target.
    pub fn exchanges(&self) -> Vec<ExchangeBytes> {
        let mut exchanges = crate::unpoisoned(&self.exchanges).clone();
        let targets = crate::unpoisoned(&self.targets);
        for (exchange, target) in exchanges.iter_mut().zip(targets.iter()) {
            exchange.target = target.clone();
        }
        exchanges
    }

    fn read(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.from_meter.fetch_add(n, Ordering::SeqCst);
        let mut exchanges = crate::unpoisoned(&self.exchanges);
        if exchanges.is_empty() || self.last_was_write.swap(false, Ordering::SeqCst) {
            exchanges.push(ExchangeBytes::default());
        }
        if let Some(current) = exchanges.last_mut() {
            current.from_meter += n;
        }
    }

    fn wrote(&self, n: u64) {
        self.to_meter.fetch_add(n, Ordering::SeqCst);
        self.last_was_write.store(true, Ordering::SeqCst);
        let mut exchanges = crate::unpoisoned(&self.exchanges);
        if exchanges.is_empty() {
            exchanges.push(ExchangeBytes::default());
        }
        if let Some(current) = exchanges.last_mut() {
            current.to_meter += n;
        }
    }
}

/// A header-level record of a request the vendor received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    /// Every header as `name: value`.
    pub headers: Vec<String>,
}

/// Where every host not in the name map goes: an origin's HTTP and HTTPS `host:port`,
/// resolved when dialled (a Kubernetes Service name, say).
#[derive(Clone, Debug)]
struct Upstream {
    http: String,
    https: String,
}

#[derive(Debug)]
struct State {
    credentials: Option<String>,
    fault: Fault,
    names: HashMap<String, Origin>,
    upstream: Option<Upstream>,
    connections: Mutex<Vec<Arc<ConnectionBook>>>,
    requests: Mutex<Vec<SeenRequest>>,
}

/// A running fake vendor.
#[derive(Debug, Clone)]
pub struct FakeVendor {
    pub address: SocketAddr,
    /// The SOCKS5 listener, when asked for.
    pub socks5_address: Option<SocketAddr>,
    /// The HTTPS-proxy listener, when asked for.
    pub https_address: Option<SocketAddr>,
    state: Arc<State>,
}

/// Builder of a [`FakeVendor`].
#[derive(Debug, Default)]
pub struct VendorBuilder {
    credentials: Option<(String, String)>,
    fault: Fault,
    names: HashMap<String, Origin>,
    upstream: Option<Upstream>,
    listen: Option<SocketAddr>,
    socks5: bool,
    https: Option<Arc<rustls::ServerConfig>>,
}

/// What a listener of the vendor speaks.
#[derive(Clone)]
enum Speaks {
    Http,
    Socks5,
    Https(tokio_rustls::TlsAcceptor),
}

impl VendorBuilder {
    /// Requires `Proxy-Authorization: Basic` with these credentials.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Resolves `host` to `origin` (port 80 to its HTTP port, 443 to its HTTPS port).
    pub fn route(mut self, host: &str, origin: &Origin) -> Self {
        self.names.insert(host.to_owned(), origin.clone());
        self
    }

    /// Sends every host the name map does not know to this origin (`host:port` for HTTP and
    /// for HTTPS), like a vendor reaching the Internet.
    pub fn upstream(mut self, http: &str, https: &str) -> Self {
        self.upstream = Some(Upstream {
            http: http.to_owned(),
            https: https.to_owned(),
        });
        self
    }

    /// Listens on `address` instead of `127.0.0.1:0`.
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = Some(address);
        self
    }

    /// Also listens as a SOCKS5 proxy, on the same IP and a free port.
    pub fn socks5(mut self) -> Self {
        self.socks5 = true;
        self
    }

    /// Also listens as an HTTPS proxy with this certificate, on the same IP and a free port.
    pub fn https(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.https = Some(config);
        self
    }

    pub async fn start(self) -> io::Result<FakeVendor> {
        let address = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let mut extra = Vec::new();
        if self.socks5 {
            extra.push(Speaks::Socks5);
        }
        if let Some(config) = self.https {
            extra.push(Speaks::Https(tokio_rustls::TlsAcceptor::from(config)));
        }
        let mut extra_listeners = Vec::new();
        for speaks in extra {
            let listener = TcpListener::bind(SocketAddr::new(address.ip(), 0)).await?;
            extra_listeners.push((listener, speaks));
        }
        let state = Arc::new(State {
            credentials: self.credentials.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
            fault: self.fault,
            names: self.names,
            upstream: self.upstream,
            connections: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        tokio::spawn(accept(listener, state.clone(), Speaks::Http));
        let (mut socks5_address, mut https_address) = (None, None);
        for (listener, speaks) in extra_listeners {
            let bound = listener.local_addr().ok();
            match speaks {
                Speaks::Socks5 => socks5_address = bound,
                Speaks::Https(_) => https_address = bound,
                Speaks::Http => {}
            }
            tokio::spawn(accept(listener, state.clone(), speaks));
        }
        Ok(FakeVendor {
            address,
            socks5_address,
            https_address,
            state,
        })
    }
}

impl FakeVendor {
    pub fn builder() -> VendorBuilder {
        VendorBuilder::default()
    }

    /// Every connection accepted so far.
    pub fn connections(&self) -> Vec<Arc<ConnectionBook>> {
        crate::unpoisoned(&self.state.connections).clone()
    }

    /// Bytes read from the meter over all connections.
    pub fn bytes_from_meter(&self) -> u64 {
        self.connections()
            .iter()
            .map(|c| c.from_meter.load(Ordering::SeqCst))
            .sum()
    }

    /// Bytes written to the meter over all connections.
    pub fn bytes_to_meter(&self) -> u64 {
        self.connections()
            .iter()
            .map(|c| c.to_meter.load(Ordering::SeqCst))
            .sum()
    }

    /// Every request seen, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        crate::unpoisoned(&self.state.requests).clone()
    }

    /// The exchanges of every non-tunnel connection.
    pub fn exchanges(&self) -> Vec<ExchangeBytes> {
        self.connections()
            .iter()
            .filter(|c| !c.tunnel.load(Ordering::SeqCst))
            .flat_map(|c| c.exchanges())
            .collect()
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, speaks: Speaks) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Like real proxies: small answers leave at once (no Nagle / delayed-ACK stalls).
        let _ = stream.set_nodelay(true);
        let book = Arc::new(ConnectionBook::default());
        crate::unpoisoned(&state.connections).push(book.clone());
        let io = Recorder {
            io: stream,
            book: book.clone(),
        };
        let state = state.clone();
        let speaks = speaks.clone();
        tokio::spawn(async move {
            match (speaks, state.fault) {
                (Speaks::Socks5, _) => {
                    let _ = serve_socks5(io, &state, &book).await;
                }
                (Speaks::Https(acceptor), _) => {
                    if let Ok(tls) = acceptor.accept(io).await {
                        serve(tls, state, book).await;
                    }
                }
                (Speaks::Http, Fault::None) => serve(io, state, book).await,
                (Speaks::Http, fault) => misbehave(io, fault).await,
            }
        });
    }
}

/// A SOCKS5 proxy connection: handshake, CONNECT, then a tunnel.
async fn serve_socks5(mut io: Recorder, state: &State, book: &ConnectionBook) -> io::Result<()> {
    book.tunnel.store(true, Ordering::SeqCst);
    let mut greeting = [0u8; 2];
    io.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    io.read_exact(&mut methods).await?;
    let wanted = if state.credentials.is_some() { 2 } else { 0 };
    if greeting[0] != 5 || !methods.contains(&wanted) {
        return io.write_all(&[5, 0xFF]).await;
    }
    io.write_all(&[5, wanted]).await?;
    let mut username = String::new();
    if let Some(expected) = &state.credentials {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let mut user = vec![0u8; usize::from(head[1])];
        io.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        io.read_exact(&mut plen).await?;
        let mut password = vec![0u8; usize::from(plen[0])];
        io.read_exact(&mut password).await?;
        username = String::from_utf8_lossy(&user).into_owned();
        let given = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode([user.as_slice(), b":", password.as_slice()].concat())
        );
        if &given != expected {
            return io.write_all(&[1, 1]).await;
        }
        io.write_all(&[1, 0]).await?;
    }
    let mut request = [0u8; 4];
    io.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut octets = [0u8; 4];
            io.read_exact(&mut octets).await?;
            std::net::Ipv4Addr::from(octets).to_string()
        }
        4 => {
            let mut octets = [0u8; 16];
            io.read_exact(&mut octets).await?;
            format!("[{}]", std::net::Ipv6Addr::from(octets))
        }
        3 => {
            let mut len = [0u8; 1];
            io.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            io.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return io.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await,
    };
    let mut port = [0u8; 2];
    io.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    let target = format!("{host}:{port}");
    crate::unpoisoned(&book.targets).push(target.clone());
    crate::unpoisoned(&state.requests).push(SeenRequest {
        method: "SOCKS5".into(),
        target,
        headers: vec![format!("socks5-username: {username}")],
    });
    let reply = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    if request[1] != 1 {
        return io.write_all(&reply(7)).await;
    }
    let Some(destination) = resolve(state, &host, port).await else {
        return io.write_all(&reply(4)).await;
    };
    let Ok(mut upstream) = TcpStream::connect(destination).await else {
        return io.write_all(&reply(5)).await;
    };
    let _ = upstream.set_nodelay(true);
    io.write_all(&reply(0)).await?;
    tokio::io::copy_bidirectional(&mut io, &mut upstream)
        .await
        .map(|_| ())
}

type VendorBody = BoxBody<Bytes, hyper::Error>;

async fn serve<I>(io: I, state: Arc<State>, book: Arc<ConnectionBook>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let book = book.clone();
        async move { Ok::<_, Infallible>(handle(request, &state, &book).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

fn plain(status: StatusCode, body: &'static str) -> Response<VendorBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

async fn handle(
    mut request: Request<Incoming>,
    state: &State,
    book: &ConnectionBook,
) -> Response<VendorBody> {
    let target = request.uri().to_string();
    crate::unpoisoned(&book.targets).push(target.clone());
    crate::unpoisoned(&state.requests).push(SeenRequest {
        method: request.method().to_string(),
        target,
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect(),
    });
    if let Some(expected) = &state.credentials {
        let given = request
            .headers()
            .get(PROXY_AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if given != Some(expected.as_bytes()) {
            let mut response = plain(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "fake vendor: credentials required\n",
            );
            response.headers_mut().insert(
                PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-vendor\""),
            );
            return response;
        }
    }
    let Some(authority) = request.uri().authority().cloned() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "fake vendor: absolute-form or CONNECT only\n",
        );
    };
    let default_port = if request.method() == Method::CONNECT {
        443
    } else {
        80
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let Some(destination) = resolve(state, authority.host(), port).await else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "fake vendor: unknown destination\n",
        );
    };
    if request.method() == Method::CONNECT {
        book.tunnel.store(true, Ordering::SeqCst);
        let Ok(mut upstream) = TcpStream::connect(destination).await else {
            return plain(
                StatusCode::BAD_GATEWAY,
                "fake vendor: destination refused\n",
            );
        };
        let _ = upstream.set_nodelay(true);
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
        return Response::new(Empty::new().map_err(|n| match n {}).boxed());
    }
    forward(request, destination).await
}

/// The origin address of `host:port`: through the name map, an IP literal as written, or the
/// upstream origin for any other name.
async fn resolve(state: &State, host: &str, port: u16) -> Option<SocketAddr> {
    if let Some(origin) = state.names.get(host) {
        return match port {
            80 => Some(origin.http),
            443 => Some(origin.https),
            _ => None,
        };
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse() {
        return Some(SocketAddr::new(ip, port));
    }
    let upstream = state.upstream.as_ref()?;
    let target = match port {
        80 => &upstream.http,
        443 => &upstream.https,
        _ => return None,
    };
    tokio::net::lookup_host(target.as_str()).await.ok()?.next()
}

/// Sends an absolute-form request on to the origin in origin-form, as a vendor does.
async fn forward(request: Request<Incoming>, destination: SocketAddr) -> Response<VendorBody> {
    let Ok(stream) = TcpStream::connect(destination).await else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "fake vendor: destination refused\n",
        );
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return plain(StatusCode::BAD_GATEWAY, "fake vendor: handshake failed\n");
    };
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| Uri::from(p.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.headers.remove(PROXY_AUTHORIZATION);
    parts.headers.remove("proxy-connection");
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => plain(StatusCode::BAD_GATEWAY, "fake vendor: origin failed\n"),
    }
}

/// Reads one request head (and whatever came with it); `None` at the end of the stream.
async fn read_head(io: &mut Recorder) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// How long a closing fake vendor keeps booking what still arrives: a meter closes its side as
/// soon as it reads the FIN, within milliseconds even on a loaded machine.
const CLOSE_BOOKING: Duration = Duration::from_secs(5);

/// After its FIN, books what the meter still sends until the meter closes too: a request the
/// meter wrote before it saw the FIN reached this host, and a tap on the wire counts it. (Closing
/// at once would reset such bytes unread, and the book would depend on which side was faster.)
async fn book_until_closed(io: &mut Recorder) {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + CLOSE_BOOKING;
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, io.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// The answer of the raw fault modes.
const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// The fault modes, on the raw (recorded) socket.
async fn misbehave(mut io: Recorder, fault: Fault) {
    let mut buf = [0u8; 4096];
    let Some(head) = read_head(&mut io).await else {
        return;
    };
    match fault {
        Fault::None => {}
        Fault::AlwaysDenyAuth => {
            let _ = io
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"fake-vendor-challenge\"\r\n\
                      Content-Length: 0\r\n\r\n",
                )
                .await;
            // Let the meter read the answer before the connection closes.
            let _ = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
        }
        Fault::ResetMidBody => {
            let answer: &[u8] = if head.starts_with(b"CONNECT") {
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
            };
            let _ = io.write_all(answer).await;
            let _ = io.write_all(&[b'x'; RESET_AFTER]).await;
            let _ = io.flush().await;
            // Give the meter time to read what was sent, so the reset loses no counted byte,
            // and book what the meter sent meanwhile (it reached this host, like a tap sees it).
            let quiet = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(n)) = tokio::time::timeout_at(quiet, io.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
            let _ = socket2::SockRef::from(&io.io).set_linger(Some(Duration::ZERO));
        }
        Fault::Blackhole => loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        },
        Fault::DropSecondRequest => {
            if io.write_all(HELLO).await.is_ok() && read_head(&mut io).await.is_some() {
                let _ = io.shutdown().await;
                book_until_closed(&mut io).await;
            }
        }
        Fault::CloseAfterResponse => {
            let _ = io.write_all(HELLO).await;
            let _ = io.shutdown().await;
            book_until_closed(&mut io).await;
        }
        Fault::Truncated => {
            let _ = io
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                .await;
            let _ = io.write_all(&[b't'; TRUNCATED_AFTER]).await;
            let _ = io.shutdown().await;
        }
        Fault::Status(status) => {
            let mut next = Some(head);
            while next.is_some() {
                let answer = format!("HTTP/1.1 {status} Fault\r\nContent-Length: 6\r\n\r\nfault\n");
                if io.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                next = read_head(&mut io).await;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The vendor side of a connection, booking every byte. Its own wrapper rather than the
    /// meter's `ObservedIo`: the vendor's book is what the meter's counters are checked against.
    struct Recorder {
        #[pin]
        io: TcpStream,
        book: Arc<ConnectionBook>,
    }
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        this.book.read((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        this.book.wrote(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
