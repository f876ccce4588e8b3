//! Pure parsers for the untrusted bytes a metering proxy must classify before it forwards anything.
//!
//! Everything here is synchronous, allocation-bounded and free of IO so that it can be fuzzed
//! (`fuzz/`) and property-tested; the proxy crate owns the sockets and the timeouts. The main
//! trade-off: the parsers are strict (a CONNECT target must be `host:port` with a DNS-shaped host
//! or an IP literal) because a lenient parser is where SSRF and header-injection bugs hide, and a
//! crawler never needs anything outside that grammar.
//!
//! - [`authority`]: CONNECT targets and URI hosts, with the WHATWG IPv4 number forms
//!   (`2130706433`, `0x7f.1`) recognised as the addresses they are.
//! - [`client_hello`]: an incremental TLS ClientHello reader yielding SNI and ALPN.
//! - [`destination`]: the bounded `destination` label value of a host (registrable domain).
//! - [`http1`]: HTTP/1.1 heads and body framing, for metering proxy traffic the meter only
//!   observes (transparent mode).
//! - [`request`]: HTTP/1.1 forward-proxy request heads, parsed strictly, for requests the meter
//!   answers itself.
//! - [`net`]: CIDR blocks and the address classes a proxy must refuse by default.
//! - [`socks5`]: SOCKS5 handshakes (RFC 1928, RFC 1929), for the same observation.
//! - [`h2`]: the start of an HTTP/2 connection, up to its first request's header block.
//! - [`tls_records`]: TLS record boundaries, to tell a tunnel that ended cleanly from one cut.

pub mod authority;
pub mod client_hello;
pub mod destination;
#[doc(hidden)]
pub mod fuzzing;
pub mod h2;
pub mod http1;
pub mod net;
pub mod request;
pub mod socks5;
pub mod tls_records;

pub use authority::{Authority, AuthorityError, Host};
pub use client_hello::{ClientHello, Sniff};
