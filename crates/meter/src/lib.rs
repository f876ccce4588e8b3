//! The metering proxy on the vendor leg.
//!
//! Crawlers send plain HTTP (absolute-form HTTP/1.1 or h2c) and tunnels (CONNECT over HTTP/1.1,
//! or HTTP/2 CONNECT streams) to the meter; the meter forwards them to the chosen proxy vendor
//! and counts every request and every byte per vendor, pod and destination.
//!
//! The design in one paragraph: bytes are counted in one place, [`counting_io::MeteredIo`] on the
//! vendor-facing socket, on every read and write; label handles are resolved once per request
//! ([`exchange::Exchange`]) so the byte path only adds to atomics. Plain-HTTP requests use the
//! meter's own keep-alive pool ([`pool`]) so a pooled connection's bytes are attributed to the
//! request using it. Metering fails open (caps fold labels into `other`, a full log queue drops
//! lines, nothing blocks traffic); security fails closed (no open proxy, no private
//! destinations, credentials only on the vendor leg, [`policy`]).
//!
//! Entry point: [`start`], which binds the listeners and returns a [`RunningMeter`].

pub mod access_log;
mod activity;
mod admin;
mod admission;
mod body;
mod copy;
pub mod counting_io;
mod exchange;
pub mod failure;
mod forward;
pub mod identity;
mod outbound;
mod policy;
mod pool;
mod routing;
mod server;
mod shared;
mod transparent;
mod tunnel;
mod vendor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use pt_config::MeterConfig;
use pt_metrics::{Metrics, MetricsOptions, Name};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access_log::{AccessSink, MemoryAccessLog, NoAccessLog, StdoutAccessLog};
pub use admin::OPENMETRICS;

/// The body type of every answer the meter gives a client.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// After the grace period, how long aborted tunnels and connections get to unwind (their
/// sockets close and the last unread bytes are counted) before the admin endpoint stops.
const ABORT_SETTLE: Duration = Duration::from_secs(1);

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("identity.from: kubernetes needs a pod resolver (see pt-kube)")]
    NoPodResolver,
}

/// A meter that is serving.
#[derive(Debug)]
pub struct RunningMeter {
    /// Bound proxy listener addresses, in config order (port 0 in the config is resolved here).
    pub proxy_addresses: Vec<SocketAddr>,
    /// Bound transparent listener addresses, in config order.
    pub transparent_addresses: Vec<SocketAddr>,
    pub admin_address: SocketAddr,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
}

use shared::Shared;

/// Binds every listener and starts serving, with the pod resolver the config describes.
pub async fn start(
    config: MeterConfig,
    access_log: Arc<dyn AccessSink>,
) -> Result<RunningMeter, StartError> {
    let identity = identity::resolver(&config.identity).ok_or(StartError::NoPodResolver)?;
    start_with(config, access_log, identity).await
}

/// Binds every listener and starts serving, resolving pods with `identity`.
pub async fn start_with(
    config: MeterConfig,
    access_log: Arc<dyn AccessSink>,
    identity: Arc<dyn identity::PodResolver>,
) -> Result<RunningMeter, StartError> {
    let mut registry = Registry::default();
    let vendor_names: Vec<Name> = config.vendors.iter().map(|v| Name::new(&v.name)).collect();
    let metrics = Metrics::new(
        &mut registry,
        &vendor_names,
        &MetricsOptions {
            max_destinations_per_vendor: config.metrics.max_destinations_per_vendor,
            max_pods: config.metrics.max_pods,
        },
    );
    let bind = |address: SocketAddr| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })
    };
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        listeners.push((bind(listener.address).await?, listener.vendor));
    }
    let mut transparent_listeners = Vec::new();
    for &address in &config.transparent.listeners {
        transparent_listeners.push(bind(address).await?);
    }
    let admin_listener = bind(config.admin_address).await?;

    let vendors = config
        .vendors
        .iter()
        .map(|v| vendor::Vendor::new(v.clone(), config.limits.vendor_idle_timeout))
        .collect();
    let outbound = Arc::new(outbound::Outbound::new(config.transparent.outbound_mark));
    let shared = Arc::new(Shared {
        router: routing::Router::new(&config),
        identity,
        outbound: outbound.clone(),
        metrics,
        vendors,
        access_log,
        draining: CancellationToken::new(),
        stopped: CancellationToken::new(),
        tasks: TaskTracker::new(),
        ready: AtomicBool::new(true),
        config,
    });

    let registry = Arc::new(registry);
    let admin_address = local_address(&admin_listener, shared.config.admin_address);
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        registry.clone(),
        shared.clone(),
        admin_stop.clone(),
    ));

    let builder = Arc::new(server::http_builder(&shared.config.limits));
    let limit = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let mut proxy_addresses = Vec::new();
    for (listener, vendor) in listeners {
        proxy_addresses.push(local_address(&listener, shared.config.admin_address));
        tokio::spawn(server::accept_loop(
            shared.clone(),
            listener,
            vendor,
            limit.clone(),
            builder.clone(),
        ));
    }
    let transparent_addresses: Vec<SocketAddr> = transparent_listeners
        .iter()
        .zip(&shared.config.transparent.listeners)
        .map(|(listener, &configured)| local_address(listener, configured))
        .collect();
    if !transparent_listeners.is_empty() {
        let state = Arc::new(transparent::Transparent {
            endpoints: transparent::Endpoints::new(&shared.config.vendors),
            outbound,
            listeners: transparent_addresses.clone(),
        });
        if state.endpoints.has_names() {
            // Resolve once before serving, so the first captured connections are recognised.
            let _ = tokio::time::timeout(
                shared.config.limits.connect_timeout,
                state.endpoints.refresh(),
            )
            .await;
            tokio::spawn(refresh_endpoints(shared.clone(), state.clone()));
        }
        for listener in transparent_listeners {
            tokio::spawn(transparent::accept_loop(
                shared.clone(),
                state.clone(),
                listener,
                limit.clone(),
            ));
        }
    }
    Ok(RunningMeter {
        proxy_addresses,
        transparent_addresses,
        admin_address,
        registry,
        shared,
        admin_stop,
        admin_task,
    })
}

/// Resolves vendor endpoint names again every `transparent.resolve_interval` until draining.
async fn refresh_endpoints(shared: Arc<Shared>, state: Arc<transparent::Transparent>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(shared.config.transparent.resolve_interval) => {}
            () = shared.draining.cancelled() => return,
        }
        state.endpoints.refresh().await;
    }
}

fn local_address(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

impl RunningMeter {
    /// The current metrics in the OpenMetrics text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Drains and stops: readiness goes false and listeners close at once; requests and tunnels
    /// in flight may finish during the grace period; then whatever remains is closed, and after
    /// `final_scrape_delay` the admin endpoint stops too.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        shared.ready.store(false, Ordering::Relaxed);
        shared.draining.cancel();
        shared.tasks.close();
        let grace = shared.config.shutdown.grace_period;
        if tokio::time::timeout(grace, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "grace period over; closing the remaining connections and tunnels"
            );
            shared.stopped.cancel();
            let _ = tokio::time::timeout(ABORT_SETTLE, shared.tasks.wait()).await;
        }
        shared.access_log.flush();
        tokio::time::sleep(shared.config.shutdown.final_scrape_delay).await;
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
    }
}
