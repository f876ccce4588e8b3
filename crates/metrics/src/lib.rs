//! The vocabulary of proxy telemetry: metric families, label types and cardinality caps.
//!
//! The meter writes these families and the checker reads them, both through the constants in
//! [`spec`], so renaming a family or a label breaks both at compile time rather than a dashboard
//! at run time. Label values are typed ([`labels`]): enums for fixed vocabularies, and capped
//! strings ([`caps`]) for vendor, pod and destination names, so no label can grow without bound.
//!
//! Cardinality is kept in check by splitting the telemetry in two groups: per-pod families carry
//! no destination, per-destination families carry no pod. The trade-off is that "requests of pod
//! P to destination D" is not a metric; it is in the access log.

pub mod caps;
pub mod exposition;
pub mod labels;
pub mod pods;
pub mod prices;
pub mod registry;
pub mod spec;
pub mod workload;

pub use caps::Name;
pub use registry::{Metrics, MetricsOptions};
