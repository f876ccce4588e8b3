//! Test support: the world around a meter, on loopback.
//!
//! - [`pki`]: a CA and server certificates made at run time for any host names.
//! - [`origin`]: origin sites over HTTP/1.1, and HTTPS with HTTP/1.1 and HTTP/2 by ALPN, serving
//!   bodies of requested sizes and recording what they received.
//! - [`vendor`]: fake proxy vendors (CONNECT and absolute-form, Basic credentials, a host-name map
//!   to the local origins) that record every byte of every connection, split into exchanges by
//!   their own reading of the stream, plus fault modes (407, reset mid-body, blackhole); also
//!   as SOCKS5 and HTTPS proxies.
//! - [`meter`]: a meter started from YAML on `127.0.0.1:0`, scraped over HTTP.
//! - [`netns`]: network namespaces joined by a veth pair, for iptables tests (root).
//! - [`paths`]: one crawler action per protocol path the meter serves, for test templates.
//! - [`process`]: child processes stopped on drop, free loopback ports.
//!
//! The demo uses the same origins and vendors: they behave like the real thing on purpose.

pub mod meter;
pub mod netns;
pub mod origin;
pub mod paths;
pub mod pki;
pub mod process;
pub mod vendor;
