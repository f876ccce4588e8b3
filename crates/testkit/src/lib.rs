//! Test support: the world around a meter, on loopback.
//!
//! - [`meter`]: a meter started from YAML on `127.0.0.1:0`, scraped over HTTP.
//! - [`books`]: a fake vendor's books against the meter's counters, to the byte.
//! - [`netns`]: network namespaces joined by a veth pair, for iptables tests (root).
//! - [`paths`]: one crawler action per protocol path the meter serves, for test templates.
//! - [`process`]: child processes stopped on drop, free loopback ports.
//! - [`tap`]: a byte-counting relay in front of a real vendor, the ground truth.
//! - [`origin`], [`vendor`], [`pki`]: the fakes of `pt-fakes` (shipped, for `demo` and the
//!   `fake-*` commands), re-exported so tests name one crate.
//!
//! Not linked into the shipped binary: its helpers panic, as test helpers do.

pub mod books;
pub mod meter;
pub mod netns;
pub mod paths;
pub mod process;
pub mod tap;

pub use books::VendorBooks;
pub use pt_fakes::{origin, pki, vendor};
