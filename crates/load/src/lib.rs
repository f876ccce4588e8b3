//! The synthetic crawler fleet.
//!
//! [`client`] speaks HTTP through a forward proxy in every form crawlers use (absolute-form
//! HTTP/1.1, h2c, CONNECT over HTTP/1.1 and HTTP/2 CONNECT streams, with TLS HTTP/1.1 or HTTP/2
//! inside), counting the exact bytes written to and read from the proxy.

pub mod client;
