//! The metering proxy on the vendor leg.
//!
//! Crawlers send plain HTTP (absolute-form HTTP/1.1 or h2c) and tunnels (CONNECT over HTTP/1.1,
//! or HTTP/2 CONNECT streams) to the meter; the meter forwards them to the chosen proxy vendor
//! and counts every request and every byte per vendor, pod and destination.
//!
//! The design in one paragraph: bytes are counted in one place, [`counting_io::MeteredIo`] on the
//! vendor-facing socket, on every read and write, into label handles resolved once per request
//! ([`exchange::Exchange`]), without a lock. Every front end ([`http1`], [`h2`], [`transparent`])
//! describes its requests the same way and passes them through one lifecycle ([`lifecycle`]):
//! admit, route, policy, exchange, outcome, with refusals counted in one place. Tunnels of every
//! kind go through one relay ([`relay`]). Plain-HTTP requests use the meter's own keep-alive pool
//! ([`vendor::pool`]) so a pooled connection's bytes are attributed to the request using it.
//! Everything is bounded, and a bound reclaims idle resources before it refuses work
//! ([`slots`], [`vendor`]). Metering fails open (caps fold labels into `other`, a full log queue
//! drops lines, nothing blocks traffic); security fails closed (no open proxy, no private
//! destinations, never the meter itself, credentials only on the vendor leg, [`policy`]).
//!
//! The module graph reads top-down: [`listener`] → [`http1`] / [`h2`] → [`lifecycle`],
//! [`tunnel`] → [`relay`], [`vendor`] → [`exchange`] → [`metering`] → [`counting_io`].
//!
//! Entry point: [`start`], which binds the listeners and returns a [`RunningMeter`].

pub mod access_log;
mod activity;
mod admin;
mod context;
pub mod counting_io;
mod drain;
mod exchange;
pub mod failure;
mod h2;
mod http1;
pub mod identity;
mod lifecycle;
mod listener;
mod metering;
mod outbound;
mod policy;
mod relay;
mod routing;
mod slots;
mod transparent;
mod tunnel;
mod vendor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use pt_config::MeterConfig;
use pt_metrics::{Metrics, MetricsOptions, Name};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use access_log::{AccessSink, MemoryAccessLog, NoAccessLog, StdoutAccessLog};
pub use admin::OPENMETRICS;

use context::Context;
use drain::Drain;
use metering::Metering;
use policy::OwnAddresses;

/// After the grace period, how long aborted tunnels and connections get to unwind (their
/// sockets close and the last unread bytes are counted) before the admin endpoint stops.
const ABORT_SETTLE: Duration = Duration::from_secs(1);
/// File descriptors kept out of the connection bounds: listeners, the admin endpoint, the
/// runtime's own, name resolution, the access log, a Kubernetes watch.
const RESERVED_FDS: usize = 64;

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
    /// The bounds in force: client connections and vendor connections.
    pub connection_limits: (usize, usize),
    registry: Arc<Registry>,
    ctx: Arc<Context>,
    grace_period: Duration,
    final_scrape_delay: Duration,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
}

/// Binds every listener and starts serving, with the pod resolver the config describes.
pub async fn start(
    config: MeterConfig,
    access_log: Arc<dyn AccessSink>,
) -> Result<RunningMeter, StartError> {
    let identity = identity::resolver(&config.identity).ok_or(StartError::NoPodResolver)?;
    start_with(config, access_log, identity).await
}

/// The connection bounds: the configured ones, within what the file-descriptor limit allows
/// (raised to its hard limit first, as nginx's `worker_rlimit_nofile` would).
fn connection_limits(config: &MeterConfig) -> (usize, usize) {
    let fds = raise_fd_limit();
    let usable = fds.saturating_sub(RESERVED_FDS).max(2);
    let clients = config.limits.max_connections.min(usable / 2).max(1);
    if clients < config.limits.max_connections {
        tracing::warn!(
            configured = config.limits.max_connections,
            allowed = clients,
            fd_limit = fds,
            "limits.max_connections lowered to half of what the file-descriptor limit allows"
        );
    }
    let room = usable.saturating_sub(clients).max(1);
    let vendors = match config.limits.max_vendor_connections {
        Some(configured) if configured > room => {
            tracing::warn!(
                configured,
                allowed = room,
                fd_limit = fds,
                "limits.max_vendor_connections lowered to what the file-descriptor limit allows"
            );
            room
        }
        Some(configured) => configured,
        None => room,
    };
    (clients, vendors)
}

/// Raises the soft limit on open files to the hard limit; returns the limit in force.
fn raise_fd_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut raised = limit;
    raised.current = limit.maximum;
    let current = if raised.current != limit.current && setrlimit(Resource::Nofile, raised).is_ok()
    {
        limit.maximum
    } else {
        limit.current
    };
    current.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The configured prices, as the facts the meter exports.
fn vendor_prices(config: &MeterConfig) -> Vec<pt_metrics::prices::VendorPrices> {
    config
        .vendors
        .iter()
        .filter_map(|v| Some((v, v.pricing.as_ref()?)))
        .map(|(v, p)| pt_metrics::prices::VendorPrices {
            vendor: Name::new(&v.name),
            currency: Name::new(&p.currency),
            sent_byte: if p.bills_sent_bytes {
                p.byte_price
            } else {
                0.0
            },
            received_byte: p.byte_price,
            request: p.request_price,
            successful_requests_only: p.successful_requests_only,
            monthly_fee: p.monthly_fee,
            included_bytes: p.included_bytes,
            cycle_start_day: p.cycle_start_day,
            monthly_budget: p.monthly_budget,
        })
        .collect()
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
    pt_metrics::prices::register(&mut registry, &vendor_prices(&config));
    let bind = |address: SocketAddr| async move {
        listener::bind(address)
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
    let local =
        |listener: &TcpListener, fallback: SocketAddr| listener.local_addr().unwrap_or(fallback);
    let admin_address = local(&admin_listener, config.admin_address);
    let proxy_addresses: Vec<SocketAddr> = listeners
        .iter()
        .map(|(listener, _)| local(listener, config.admin_address))
        .collect();
    let transparent_addresses: Vec<SocketAddr> = transparent_listeners
        .iter()
        .zip(&config.transparent.listeners)
        .map(|(listener, &configured)| local(listener, configured))
        .collect();

    let mut own = proxy_addresses.clone();
    own.extend(&transparent_addresses);
    own.push(admin_address);
    let own = Arc::new(OwnAddresses::new(own));
    let outbound = Arc::new(outbound::Outbound::new(config.transparent.outbound_mark));
    let (max_clients, max_vendor_connections) = connection_limits(&config);
    let ctx = Arc::new(Context {
        gate: lifecycle::Gate::new(&config, identity, own.clone()),
        metering: Arc::new(Metering::new(
            metrics,
            access_log,
            config.metrics.metering,
            config.access_log,
            config.metrics.destination_key,
        )),
        vendors: vendor::Vendors::new(
            &config.vendors,
            &config.limits,
            max_vendor_connections,
            config.security.clone(),
            outbound.clone(),
            own,
        ),
        drain: Arc::new(Drain::default()),
        slots: slots::Slots::new(max_clients),
        allowed_sources: config.clients.allowed_sources.clone(),
        limits: config.limits.clone(),
    });

    let registry = Arc::new(registry);
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        registry.clone(),
        ctx.drain.clone(),
        admin_stop.clone(),
    ));
    for (listener, vendor) in listeners {
        tokio::spawn(listener::accept_loop(ctx.clone(), listener, vendor));
    }
    if let Some(ttl) = config.metrics.pod_series_ttl {
        tokio::spawn(expire_pods(ctx.clone(), ttl));
    }
    if !transparent_listeners.is_empty() {
        let state = Arc::new(transparent::Transparent {
            endpoints: transparent::Endpoints::new(&config.vendors),
            outbound,
            listeners: transparent_addresses.clone(),
            meter_unmatched: config.transparent.meter_unmatched,
        });
        if state.endpoints.has_names() {
            // Resolve once before serving, so the first captured connections are recognised.
            let _ = tokio::time::timeout(config.limits.connect_timeout, state.endpoints.refresh())
                .await;
            tokio::spawn(refresh_endpoints(
                ctx.clone(),
                state.clone(),
                config.transparent.resolve_interval,
            ));
        }
        for listener in transparent_listeners {
            tokio::spawn(transparent::accept_loop(
                ctx.clone(),
                state.clone(),
                listener,
            ));
        }
    }
    Ok(RunningMeter {
        proxy_addresses,
        transparent_addresses,
        admin_address,
        connection_limits: (max_clients, max_vendor_connections),
        registry,
        ctx,
        grace_period: config.shutdown.grace_period,
        final_scrape_delay: config.shutdown.final_scrape_delay,
        admin_stop,
        admin_task,
    })
}

/// Stops exporting departed pods, checking a few times per TTL so that a pod goes within a
/// quarter of the TTL after it expires (and never more often than every 10 s).
async fn expire_pods(ctx: Arc<Context>, ttl: Duration) {
    let every = (ttl / 4).max(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = ctx.drain.stopped.cancelled() => return,
        }
        let gone = ctx.metering.metrics.expire_pods(ttl);
        if gone > 0 {
            tracing::debug!(gone, "departed pods' series removed");
        }
    }
}

/// Resolves vendor endpoint names again every `interval` until draining.
async fn refresh_endpoints(
    ctx: Arc<Context>,
    state: Arc<transparent::Transparent>,
    interval: Duration,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = ctx.drain.draining.cancelled() => return,
        }
        state.endpoints.refresh().await;
    }
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
        self.ctx.drain.is_ready()
    }

    /// Drains and stops: readiness goes false and listeners close at once; requests and tunnels
    /// in flight may finish during the grace period; then whatever remains is closed, and after
    /// `final_scrape_delay` the admin endpoint stops too.
    pub async fn shutdown(self) {
        let drain = &self.ctx.drain;
        drain.start();
        let grace = self.grace_period;
        if tokio::time::timeout(grace, drain.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "grace period over; closing the remaining connections and tunnels"
            );
            drain.stopped.cancel();
            let _ = tokio::time::timeout(ABORT_SETTLE, drain.tasks.wait()).await;
        }
        self.ctx.metering.flush();
        tokio::time::sleep(self.final_scrape_delay).await;
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
    }
}
