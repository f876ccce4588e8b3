//! Zero code changes on Kubernetes: how crawler traffic reaches the meter without anyone
//! editing a crawler, and how a shared meter knows which pod a connection comes from.
//!
//! - [`iptables`]: the redirect rules of transparent mode, installed by the sidecar's init
//!   container (`proxy-telemetry init-iptables`), idempotent, with a matching cleanup.
//!
//! The meter side of transparent mode (original destination, vendor endpoints, relaying the
//! crawler's own protocol) lives in `pt-meter`; this crate holds what touches the host or the
//! Kubernetes API.

pub mod iptables;
