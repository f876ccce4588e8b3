//! The synthetic crawler fleet.
//!
//! - [`client`]: HTTP through a forward proxy in every form crawlers use (absolute-form HTTP/1.1,
//!   h2c, CONNECT over HTTP/1.1 and HTTP/2 CONNECT streams, with TLS HTTP/1.1 or HTTP/2 inside),
//!   counting the exact bytes written to and read from the proxy.
//! - [`plan`]: pods, rate, vendors and weights, the target mix.
//! - [`engine`]: open-loop scheduling per pod, connection reuse, bookkeeping.
//! - [`ledger`]: the ground truth a checker reconciles a meter against.
//! - [`report`]: live statistics and the final summary.
//!
//! The main trade-off: requests are scheduled open-loop (at fixed instants, whatever the
//! latency) so the meter is measured under the load asked for, not under the load it allows.

pub mod client;
pub mod engine;
pub mod ledger;
pub mod plan;
pub mod report;
