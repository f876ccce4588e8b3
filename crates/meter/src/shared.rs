//! State shared by every connection of one meter: configuration, metrics, vendors, shutdown.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::metrics::counter::Counter;
use pt_config::MeterConfig;
use pt_metrics::Metrics;
use pt_metrics::caps::Name;
use pt_metrics::labels::DestinationLabels;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessSink;
use crate::identity::PodResolver;
use crate::outbound::Outbound;
use crate::routing::Router;
use crate::vendor::Vendor;

#[derive(Debug)]
pub struct Shared {
    pub config: MeterConfig,
    pub metrics: Metrics,
    pub router: Router,
    pub identity: Arc<dyn PodResolver>,
    /// Opens the meter's outbound sockets (with the configured mark).
    pub outbound: Arc<Outbound>,
    pub vendors: Vec<Vendor>,
    pub access_log: Arc<dyn AccessSink>,
    /// Cancelled when draining starts: stop accepting, ask connections to close when idle.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: abort whatever is still running.
    pub stopped: CancellationToken,
    /// Client connections and tunnels, awaited while draining.
    pub tasks: TaskTracker,
    pub ready: AtomicBool,
}

impl Shared {
    /// The byte counters of a destination label.
    pub fn destination_byte_counters(
        &self,
        vendor: &Name,
        destination: &Name,
    ) -> (Counter, Counter) {
        let labels = DestinationLabels {
            proxy_vendor: vendor.clone(),
            destination: destination.clone(),
        };
        let _ = self.metrics.destination_requests.get_or_create(&labels);
        (
            self.metrics
                .destination_sent_bytes
                .get_or_create_owned(&labels),
            self.metrics
                .destination_received_bytes
                .get_or_create_owned(&labels),
        )
    }
}
