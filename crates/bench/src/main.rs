//! Client workloads of the proxy benchmark (`bench/run.sh`), one subcommand each, every result
//! one JSON line on stdout. Each workload reaches its target one of three ways: through a
//! forward proxy (`--proxy`, absolute-form or CONNECT), through an L4 proxy that forwards a plain
//! TCP connection to a fixed backend (`--l4`), or directly (neither).
//!
//! TLS certificates are not verified: the only server is the benchmark's own nginx on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod fleet;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(clap::Args, Clone)]
struct Route {
    /// A forward proxy (absolute-form requests, CONNECT tunnels).
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// An L4 proxy forwarding to the target (no CONNECT).
    #[arg(long)]
    l4: Option<SocketAddr>,
    /// The origin, `ip:port`.
    #[arg(long)]
    target: SocketAddr,
}

#[derive(Subcommand)]
enum Workload {
    /// Open-loop requests at a fixed rate over keep-alive connections; latency from the
    /// scheduled send time.
    Paced {
        #[command(flatten)]
        route: Route,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// New tunnels (or L4 connections) as fast as `concurrency` workers can: each carries one
    /// small request and closes.
    Churn {
        #[command(flatten)]
        route: Route,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// One large download through a tunnel (or L4 connection, or directly), optionally in TLS.
    Transfer {
        #[command(flatten)]
        route: Route,
        #[arg(long)]
        path: String,
        #[arg(long)]
        tls: bool,
    },
    /// HTTP/2 inside TLS inside tunnels: `tunnels` × `streams` request loops.
    H2Tunnel {
        #[command(flatten)]
        route: Route,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 8)]
        tunnels: usize,
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Serves a synthetic fleet of meters' `/metrics` for a real Prometheus, with a file-based
    /// service discovery document of the live targets (bench/scale_prometheus.py).
    FleetServe {
        #[command(flatten)]
        fleet: fleet::Fleet,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The `file_sd_configs` document to keep up to date.
        #[arg(long)]
        file_sd: std::path::PathBuf,
    },
    /// Writes a synthetic fleet's samples over a time range, as scraped every `step`, for
    /// `promtool tsdb create-blocks-from openmetrics`.
    FleetHistory {
        #[command(flatten)]
        fleet: fleet::Fleet,
        /// Unix seconds.
        #[arg(long)]
        from: f64,
        #[arg(long)]
        to: f64,
        #[arg(long, default_value_t = 15.0)]
        step: f64,
        /// The `instance` label of the samples.
        #[arg(long, default_value = "10.0.0.1:9091")]
        instance: String,
        /// Only these sample names (what the scrape configuration's relabelling keeps),
        /// comma-separated; default: every one.
        #[arg(long, value_delimiter = ',')]
        keep: Option<Vec<String>>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Opens `tunnels` idle tunnels, prints when they are open, holds them for `duration`.
    Hold {
        #[command(flatten)]
        route: Route,
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.workload {
            Workload::Paced {
                route,
                path,
                rate,
                duration,
                connections,
            } => paced(route, path, rate, duration, connections).await,
            Workload::Churn {
                route,
                concurrency,
                duration,
            } => churn(route, concurrency, duration).await,
            Workload::Transfer { route, path, tls } => transfer(route, path, tls).await,
            Workload::H2Tunnel {
                route,
                path,
                tunnels,
                streams,
                duration,
            } => h2_tunnel(route, path, tunnels, streams, duration).await,
            Workload::Hold {
                route,
                tunnels,
                duration,
            } => hold(route, tunnels, duration).await,
            Workload::FleetServe {
                fleet,
                listen,
                file_sd,
            } => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                fleet::serve(fleet, listener, file_sd).await?;
                Ok(String::new())
            }
            Workload::FleetHistory {
                fleet,
                from,
                to,
                step,
                instance,
                keep,
                out,
            } => {
                let keep = keep.map(|names| names.into_iter().collect());
                let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
                let samples =
                    fleet::history(&fleet, from, to, step, &instance, keep.as_ref(), &mut file)?;
                std::io::Write::flush(&mut file)?;
                Ok(serde_json::json!({ "samples": samples }).to_string())
            }
        }
    })?;
    println!("{result}");
    Ok(())
}

/// A TCP connection to the target: through the proxy's CONNECT, the L4 proxy, or directly.
async fn open(route: &Route) -> anyhow::Result<TcpStream> {
    let first_hop = route.proxy.or(route.l4).unwrap_or(route.target);
    let mut stream = TcpStream::connect(first_hop).await.context("connect")?;
    stream.set_nodelay(true)?;
    if route.proxy.is_some() {
        let target = route.target;
        stream
            .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                bail!("the proxy closed during CONNECT");
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
            bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
        }
    }
    Ok(stream)
}

/// Accepts any server certificate (the benchmark's own nginx only).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<T>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("origin.bench")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, io)
        .await?)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("invariant: static bounds")
}

async fn paced(
    route: Route,
    path: String,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<String> {
    // Plain HTTP: absolute-form through a proxy, origin-form otherwise.
    let uri = match route.proxy {
        Some(_) => format!("http://{}{path}", route.target),
        None => path.clone(),
    };
    let first_hop = route.proxy.or(route.l4).unwrap_or(route.target);
    let (free_tx, free_rx) = tokio::sync::mpsc::channel(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(first_hop).await?;
        stream.set_nodelay(true)?;
        free_tx.send(pt_load::client::http1(stream).await?).await?;
    }
    let free_rx = Arc::new(tokio::sync::Mutex::new(free_rx));
    let latencies = Arc::new(std::sync::Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at >= start + duration {
            break;
        }
        tokio::time::sleep_until(at).await;
        i += 1;
        let (free_rx, free_tx, latencies, errors, uri, target) = (
            free_rx.clone(),
            free_tx.clone(),
            latencies.clone(),
            errors.clone(),
            uri.clone(),
            route.target,
        );
        tasks.spawn(async move {
            let Some(mut sender) = free_rx.lock().await.recv().await else {
                return;
            };
            let request = http::Request::get(&uri)
                .header(http::header::HOST, target.to_string())
                .body(pt_load::client::empty())
                .expect("invariant: valid request");
            let ok = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(())
            }
            .await;
            match ok {
                Ok(()) => {
                    let micros = u64::try_from(at.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = latencies.lock().expect("histogram").record(micros);
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = free_tx.send(sender).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let h = latencies.lock().expect("histogram");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "requests": h.len(), "errors": errors.load(Ordering::Relaxed),
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0,
    })
    .to_string())
}

async fn churn(route: Route, concurrency: usize, duration: Duration) -> anyhow::Result<String> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (route, done, errors) = (route.clone(), done.clone(), errors.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let result = async {
                    let mut stream = open(&route).await?;
                    stream
                        .write_all(
                            b"GET /1b HTTP/1.1\r\nHost: origin.bench\r\nConnection: close\r\n\r\n",
                        )
                        .await?;
                    let mut sink = Vec::with_capacity(512);
                    stream.read_to_end(&mut sink).await?;
                    if !sink.starts_with(b"HTTP/1.1 200") {
                        bail!("unexpected answer");
                    }
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "tunnels": n, "errors": errors.load(Ordering::Relaxed),
        "per_second": n as f64 / started.elapsed().as_secs_f64(),
    })
    .to_string())
}

async fn download<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, path: &str) -> anyhow::Result<u64> {
    io.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: origin.bench\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

async fn transfer(route: Route, path: String, use_tls: bool) -> anyhow::Result<String> {
    let stream = open(&route).await?;
    let started = Instant::now();
    let bytes = if use_tls {
        download(tls(stream, b"http/1.1").await?, &path).await?
    } else {
        download(stream, &path).await?
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({ "bytes": bytes, "seconds": seconds, "mb_per_second": bytes as f64 / seconds / 1e6 }).to_string())
}

async fn h2_tunnel(
    route: Route,
    path: String,
    tunnels: usize,
    streams: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..tunnels {
        let stream = open(&route).await?;
        let tls = tls(stream, b"h2").await?;
        let sender = pt_load::client::http2(tls).await?;
        for _ in 0..streams {
            let (mut sender, done, path) = (sender.clone(), done.clone(), path.clone());
            tasks.spawn(async move {
                while Instant::now() < deadline {
                    let request = http::Request::get(format!("https://origin.bench{path}"))
                        .body(pt_load::client::empty())
                        .expect("invariant: valid request");
                    let Ok(response) = sender.send_request(request).await else {
                        return;
                    };
                    if response.into_body().collect().await.is_err() {
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed);
    Ok(serde_json::json!({ "requests": n, "per_second": n as f64 / started.elapsed().as_secs_f64() }).to_string())
}

async fn hold(route: Route, tunnels: usize, duration: Duration) -> anyhow::Result<String> {
    let mut open_tunnels = Vec::with_capacity(tunnels);
    for _ in 0..tunnels {
        open_tunnels.push(open(&route).await?);
    }
    eprintln!("ready: {tunnels} tunnels open");
    tokio::time::sleep(duration).await;
    Ok(serde_json::json!({ "tunnels": open_tunnels.len() }).to_string())
}
