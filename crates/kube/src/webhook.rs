//! The injector's HTTPS endpoint, as the Kubernetes API server calls it: `POST /mutate` with
//! an `AdmissionReview`, `GET /healthz` for probes.
//!
//! The certificate and key are read from files (a Secret generated at install, or one that
//! cert-manager renews) and re-read when they change, so a renewal needs no restart.
//! Everything is bounded: connections, header time, body size and time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::inject::Injector;

/// The API server sends one review per request and keeps a few connections; this bounds a
/// misbehaving caller, not the API server.
const MAX_CONNECTIONS: usize = 256;
/// An AdmissionReview holds the object (etcd limits objects to 1.5 MiB) and, for updates, the
/// old one; anything larger is not a review.
const MAX_REVIEW_BYTES: usize = 4 << 20;
/// The API server gives a webhook at most 30 s (`timeoutSeconds`); a request that takes longer
/// to arrive has been abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the certificate files are checked for a renewal.
const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A server certificate read from PEM files and re-read when they change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    check_every: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCertificate {
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<ReloadingCertificate, WebhookError> {
        let loaded = read_pair(cert, key, &provider)?;
        Ok(ReloadingCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            check_every: RELOAD_CHECK,
            state: Mutex::new(Loaded {
                key: loaded,
                modified: (modified(cert), modified(key)),
                checked: Instant::now(),
            }),
        })
    }

    /// The current key, after re-reading the files if they changed since the last check.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= self.check_every {
            state.checked = Instant::now();
            let now = (modified(&self.cert), modified(&self.key));
            if now != state.modified {
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                        state.key = key;
                        state.modified = now;
                    }
                    // A renewal caught half-written: keep serving the old pair, retry later.
                    Err(error) => tracing::warn!(%error, "certificate not reloaded"),
                }
            }
        }
        Some(state.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, WebhookError> {
    let failed = |path: &Path, reason: String| WebhookError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(failed(cert, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| failed(key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| failed(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| failed(key, format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// The TLS configuration of the webhook: HTTP/1.1, the reloading certificate.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCertificate::load(cert, key, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves reviews until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (acceptor, injector, stop) = (acceptor.clone(), injector.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let injector = injector.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(request, &injector).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(request: Request<Incoming>, injector: &Injector) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    let text = |status, body: String| reply(status, "text/plain; charset=utf-8", body.into());
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, "/mutate") => {
            let body = Limited::new(request.into_body(), MAX_REVIEW_BYTES).collect();
            let body = match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(error)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "cannot read the review (at most {MAX_REVIEW_BYTES} bytes): {error}\n"
                        ),
                    );
                }
                Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "review too slow\n".into()),
            };
            match injector.review(&body) {
                Ok(json) => reply(StatusCode::OK, "application/json", json.into()),
                Err(error) => {
                    tracing::warn!(%error, "bad admission review");
                    text(StatusCode::BAD_REQUEST, format!("{error}\n"))
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /mutate or GET /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pt_testkit::pki::TestPki;

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_torn_one_is_not() {
        let dir = std::env::temp_dir().join(format!("pt-webhook-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (first, second) = (TestPki::new(&["a.test"]), TestPki::new(&["a.test"]));
        std::fs::write(&cert, &first.cert_pem).unwrap();
        std::fs::write(&key, &first.key_pem).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut resolver = ReloadingCertificate::load(&cert, &key, provider).unwrap();
        resolver.check_every = Duration::ZERO;
        let served = leaf(&resolver.current().unwrap());

        // cert-manager writes the certificate first: with the old key it does not match.
        std::fs::write(&cert, &second.cert_pem).unwrap();
        assert_eq!(
            leaf(&resolver.current().unwrap()),
            served,
            "a torn pair is not served"
        );

        std::fs::write(&key, &second.key_pem).unwrap();
        let renewed = leaf(&resolver.current().unwrap());
        assert_ne!(renewed, served, "the renewed pair is served");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
