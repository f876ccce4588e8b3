//! A crawler's HTTP through a forward proxy, in every form the meter serves: absolute-form
//! HTTP/1.1, h2c with absolute `:scheme`/`:authority`, CONNECT over HTTP/1.1 and HTTP/2 CONNECT
//! streams, with TLS (HTTP/1.1 or HTTP/2 by ALPN) inside the tunnels.
//!
//! Every connection to the proxy is wrapped in [`CountingIo`], so a caller knows the exact bytes
//! it wrote to and read from the proxy: the client-side ground truth the load generator's ledger
//! records. hyper does the HTTP; this module only composes the layers.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use base64::Engine;
use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::{http1, http2};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The request body type of every client here.
pub type ClientBody = BoxBody<Bytes, io::Error>;

/// A body with a known length (sent with `Content-Length`).
pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of unknown length (sent with `Transfer-Encoding: chunked` on HTTP/1.1).
pub fn chunked(chunks: Vec<Bytes>) -> ClientBody {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, io::Error>(Frame::data(c)));
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Failures a crawler sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the proxy: {0}")]
    Connect(#[source] io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
    #[error("the proxy answered CONNECT with {0}")]
    Refused(StatusCode),
    #[error("invalid TLS server name")]
    ServerName,
}

/// Where the proxy is and what the crawler sends it on every request.
#[derive(Clone, Debug)]
pub struct ProxyEndpoint {
    pub address: SocketAddr,
    /// `Proxy-Authorization: Basic` username and password, if any.
    pub credentials: Option<(String, String)>,
    /// Extra headers on every request to the proxy, e.g. `X-Proxy-Vendor`.
    pub headers: HeaderMap,
}

impl ProxyEndpoint {
    pub fn new(address: SocketAddr) -> ProxyEndpoint {
        ProxyEndpoint {
            address,
            credentials: None,
            headers: HeaderMap::new(),
        }
    }

    pub fn with_credentials(mut self, username: &str, password: &str) -> ProxyEndpoint {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Adds a header sent on every request to the proxy (ignored if not a valid header).
    pub fn with_header(mut self, name: &str, value: &str) -> ProxyEndpoint {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.insert(name, value);
        }
        self
    }

    /// Adds the proxy headers (credentials, vendor header) to a request.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let Some((user, password)) = &self.credentials {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            if let Ok(value) = HeaderValue::from_str(&format!("Basic {token}")) {
                headers.insert(PROXY_AUTHORIZATION, value);
            }
        }
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
    }

    /// Opens a TCP connection to the proxy, counted in `counters`.
    pub async fn dial(
        &self,
        counters: Arc<WireCounters>,
    ) -> Result<CountingIo<TcpStream>, ClientError> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(CountingIo::new(stream, counters))
    }
}

/// Bytes a client wrote to and read from the proxy, and how many counted connections are open.
#[derive(Debug, Default)]
pub struct WireCounters {
    written: AtomicU64,
    read: AtomicU64,
    open: AtomicU64,
}

impl WireCounters {
    /// Counted connections not yet closed.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// A socket whose reads and writes add to [`WireCounters`]. Deliberately not the meter's
    /// `ObservedIo`: the ledger is the ground truth the meter is checked against, so it must
    /// not share the meter's counting code.
    #[derive(Debug)]
    pub struct CountingIo<T> {
        #[pin]
        io: T,
        counters: Arc<WireCounters>,
    }

    impl<T> PinnedDrop for CountingIo<T> {
        fn drop(this: Pin<&mut Self>) {
            this.project().counters.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> CountingIo<T> {
    pub fn new(io: T, counters: Arc<WireCounters>) -> CountingIo<T> {
        counters.open.fetch_add(1, Ordering::Relaxed);
        CountingIo { io, counters }
    }
}

impl<T: AsyncRead> AsyncRead for CountingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        this.counters
            .read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for CountingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write(cx, buf))?;
        this.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = ready!(this.io.poll_write_vectored(cx, bufs))?;
        this.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// An HTTP/1.1 connection, sending requests as given (absolute-form to a proxy).
pub async fn http1<T>(io: T) -> Result<http1::SendRequest<ClientBody>, ClientError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

/// An HTTP/2 connection with prior knowledge (h2c to the proxy, or h2 inside TLS).
pub async fn http2<T>(io: T) -> Result<http2::SendRequest<ClientBody>, ClientError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A `CONNECT authority` request carrying the proxy's headers.
pub fn connect_request(
    proxy: &ProxyEndpoint,
    authority: &str,
) -> Result<Request<ClientBody>, ClientError> {
    let uri: Uri = authority
        .parse()
        .map_err(|_| ClientError::Refused(StatusCode::BAD_REQUEST))?;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .body(empty())
        .map_err(|_| ClientError::Refused(StatusCode::BAD_REQUEST))?;
    request.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_str(authority)
            .map_err(|_| ClientError::Refused(StatusCode::BAD_REQUEST))?,
    );
    proxy.decorate(request.headers_mut());
    Ok(request)
}

/// Opens a tunnel with CONNECT over an HTTP/1.1 connection to the proxy.
pub async fn tunnel_h1(
    proxy: &ProxyEndpoint,
    io: CountingIo<TcpStream>,
    authority: &str,
) -> Result<Upgraded, ClientError> {
    let mut sender = http1(io).await?;
    let response = sender
        .send_request(connect_request(proxy, authority)?)
        .await?;
    if !response.status().is_success() {
        return Err(ClientError::Refused(response.status()));
    }
    Ok(hyper::upgrade::on(response).await?)
}

/// Opens a tunnel as an HTTP/2 CONNECT stream (RFC 9113 §8.5) on an h2c connection.
pub async fn tunnel_h2(
    proxy: &ProxyEndpoint,
    sender: &mut http2::SendRequest<ClientBody>,
    authority: &str,
) -> Result<Upgraded, ClientError> {
    let mut request = connect_request(proxy, authority)?;
    // HTTP/2 carries the authority as `:authority`; `Host` is not allowed on CONNECT streams.
    request.headers_mut().remove(http::header::HOST);
    *request.version_mut() = http::Version::HTTP_2;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(ClientError::Refused(response.status()));
    }
    Ok(hyper::upgrade::on(response).await?)
}

/// TLS over a tunnel, offering `alpn`, trusting `roots`.
pub async fn tls<T>(
    io: T,
    server_name: &str,
    alpn: &[&str],
    roots: Arc<rustls::RootCertStore>,
) -> Result<TlsStream<T>, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(io::Error::other(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| ClientError::ServerName)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, io)
        .await
        .map_err(ClientError::Tls)
}

/// The Mozilla root certificates, for https:// targets on the public Internet.
pub fn mozilla_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A trust store of the PEM certificates in `pem`.
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("invalid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(roots)
}

/// Reads a response body to its end, returning its length.
pub async fn drain(body: hyper::body::Incoming) -> Result<u64, ClientError> {
    let mut body = body;
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}
