//! Zero code changes on Kubernetes: how crawler traffic reaches the meter without anyone
//! editing a crawler, and how a shared meter knows which pod a connection comes from.
//!
//! - [`iptables`]: the redirect rules of transparent mode, installed by the sidecar's init
//!   container (`proxy-telemetry init-iptables`), idempotent, with a matching cleanup.
//! - [`inject`] and [`webhook`]: the mutating admission webhook that adds that init container
//!   and the meter as a native sidecar to pods created in labelled namespaces.
//! - [`pods`]: a shared meter's pod attribution, a watch of pods indexed by IP.
//! - [`workload`]: the Deployment, StatefulSet, Job or CronJob a pod belongs to.
//!
//! The meter side of transparent mode (original destination, vendor endpoints, relaying the
//! crawler's own protocol) lives in `pt-meter`; this crate holds what touches the host or the
//! Kubernetes API.

pub mod inject;
pub mod iptables;
pub mod pods;
pub mod webhook;
pub mod workload;

/// The kube-rs client crate, for callers that build a client for [`pods::watch`].
pub use kube;
