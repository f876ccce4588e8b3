//! One crawler action per protocol path the meter serves, so a test can be written once and run
//! over all of them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use pt_load::client::{self, ClientBody, ClientError, ProxyEndpoint, WireCounters};

/// A way for a crawler to reach a destination through the meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Three keep-alive `GET http://host/...` requests of 0, 1,000 and 100,000 response bytes.
    AbsoluteGet,
    /// Two `POST`s with `Content-Length` bodies (10 KiB and 1 byte).
    AbsolutePostLength,
    /// One `POST` with a chunked body of three chunks.
    AbsolutePostChunked,
    /// `CONNECT host:443`, TLS offering `http/1.1`, three requests inside.
    ConnectTlsH1,
    /// `CONNECT host:443`, TLS offering `h2`, 16 concurrent streams inside.
    ConnectTlsH2,
    /// HTTP/2 with prior knowledge to the meter, five concurrent absolute requests.
    H2c,
    /// HTTP/2 CONNECT streams: two tunnels on one h2c connection, TLS HTTP/1.1 inside each.
    H2Connect,
}

impl Path {
    pub const ALL: [Path; 7] = [
        Path::AbsoluteGet,
        Path::AbsolutePostLength,
        Path::AbsolutePostChunked,
        Path::ConnectTlsH1,
        Path::ConnectTlsH2,
        Path::H2c,
        Path::H2Connect,
    ];

    /// The `protocol` label the meter gives this path's requests.
    pub fn protocol(self) -> &'static str {
        match self {
            Path::AbsoluteGet | Path::AbsolutePostLength | Path::AbsolutePostChunked => "http1",
            Path::H2c => "h2",
            Path::ConnectTlsH1 | Path::ConnectTlsH2 | Path::H2Connect => "connect",
        }
    }

    /// How many requests (or tunnels) the meter counts for one run.
    pub fn meter_requests(self) -> u64 {
        match self {
            Path::AbsoluteGet => 3,
            Path::AbsolutePostLength => 2,
            Path::AbsolutePostChunked => 1,
            Path::ConnectTlsH1 | Path::ConnectTlsH2 => 1,
            Path::H2c => 5,
            Path::H2Connect => 2,
        }
    }

    /// Runs the path against `host` (which the vendor resolves to a test origin). Returns the
    /// HTTP statuses the crawler got from the destination, one per request made.
    pub async fn run(
        self,
        proxy: &ProxyEndpoint,
        host: &str,
        roots: Arc<rustls::RootCertStore>,
        counters: Arc<WireCounters>,
    ) -> Result<Vec<u16>, ClientError> {
        let mut statuses = Vec::new();
        match self {
            Path::AbsoluteGet => {
                let mut sender = client::http1(proxy.dial(counters).await?).await?;
                for size in [0, 1000, 100_000] {
                    let request = absolute(
                        proxy,
                        Method::GET,
                        host,
                        &format!("/bytes/{size}"),
                        client::empty(),
                    );
                    statuses.push(send_h1(&mut sender, request).await?);
                }
            }
            Path::AbsolutePostLength => {
                let mut sender = client::http1(proxy.dial(counters).await?).await?;
                for body in [vec![b'p'; 10 * 1024], vec![b'q']] {
                    let request =
                        absolute(proxy, Method::POST, host, "/upload", client::full(body));
                    statuses.push(send_h1(&mut sender, request).await?);
                }
            }
            Path::AbsolutePostChunked => {
                let mut sender = client::http1(proxy.dial(counters).await?).await?;
                let chunks = vec![
                    Bytes::from_static(b"first,"),
                    Bytes::from(vec![b'c'; 5000]),
                    Bytes::from_static(b",last"),
                ];
                let request = absolute(
                    proxy,
                    Method::POST,
                    host,
                    "/upload",
                    client::chunked(chunks),
                );
                statuses.push(send_h1(&mut sender, request).await?);
            }
            Path::ConnectTlsH1 => {
                let tunnel =
                    client::tunnel_h1(proxy, proxy.dial(counters).await?, &format!("{host}:443"))
                        .await?;
                let tls = client::tls(
                    hyper_util::rt::TokioIo::new(tunnel),
                    host,
                    &["http/1.1"],
                    roots,
                )
                .await?;
                let mut sender = client::http1(tls).await?;
                for size in [10, 20_000, 0] {
                    statuses.push(send_h1(&mut sender, origin_get(host, size)).await?);
                }
            }
            Path::ConnectTlsH2 => {
                let tunnel =
                    client::tunnel_h1(proxy, proxy.dial(counters).await?, &format!("{host}:443"))
                        .await?;
                let tls =
                    client::tls(hyper_util::rt::TokioIo::new(tunnel), host, &["h2"], roots).await?;
                let sender = client::http2(tls).await?;
                statuses
                    .extend(concurrent_h2(&sender, 16, |i| origin_get_h2(host, 100 * i)).await?);
            }
            Path::H2c => {
                let sender = client::http2(proxy.dial(counters).await?).await?;
                statuses.extend(
                    concurrent_h2(&sender, 5, |i| {
                        let mut request = absolute(
                            proxy,
                            Method::GET,
                            host,
                            &format!("/bytes/{}", 777 * i),
                            client::empty(),
                        );
                        request.headers_mut().remove(http::header::HOST);
                        request
                    })
                    .await?,
                );
            }
            Path::H2Connect => {
                let mut sender = client::http2(proxy.dial(counters).await?).await?;
                for _ in 0..2 {
                    let tunnel =
                        client::tunnel_h2(proxy, &mut sender, &format!("{host}:443")).await?;
                    let tls = client::tls(
                        hyper_util::rt::TokioIo::new(tunnel),
                        host,
                        &["http/1.1"],
                        roots.clone(),
                    )
                    .await?;
                    let mut inner = client::http1(tls).await?;
                    statuses.push(send_h1(&mut inner, origin_get(host, 3333)).await?);
                }
            }
        }
        Ok(statuses)
    }
}

/// `METHOD http://host/path` with the proxy's headers.
pub fn absolute(
    proxy: &ProxyEndpoint,
    method: Method,
    host: &str,
    path: &str,
    body: ClientBody,
) -> Request<ClientBody> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .header(http::header::HOST, host)
        .body(body)
        .expect("invariant: test URIs are valid");
    proxy.decorate(request.headers_mut());
    request
}

/// `GET /bytes/size` in origin form, for use inside a tunnel.
fn origin_get(host: &str, size: u64) -> Request<ClientBody> {
    Request::get(format!("/bytes/{size}"))
        .header(http::header::HOST, host)
        .body(client::empty())
        .expect("invariant: test URIs are valid")
}

/// `GET https://host/bytes/size`, the form HTTP/2 inside a tunnel uses.
fn origin_get_h2(host: &str, size: u64) -> Request<ClientBody> {
    Request::get(format!("https://{host}/bytes/{size}"))
        .body(client::empty())
        .expect("invariant: test URIs are valid")
}

async fn send_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<ClientBody>,
    request: Request<ClientBody>,
) -> Result<u16, ClientError> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    client::drain(response.into_body()).await?;
    Ok(status)
}

async fn concurrent_h2(
    sender: &hyper::client::conn::http2::SendRequest<ClientBody>,
    streams: u64,
    request: impl Fn(u64) -> Request<ClientBody>,
) -> Result<Vec<u16>, ClientError> {
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut sender = sender.clone();
        let request = request(i);
        tasks.push(tokio::spawn(async move {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            client::drain(response.into_body()).await?;
            Ok::<_, ClientError>(status)
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("stream task")?);
    }
    Ok(statuses)
}
