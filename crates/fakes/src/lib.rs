//! Stand-ins for the world around a meter, on any address: what `demo`, `fake-vendor` and
//! `fake-origin` run, and what the tests meter against.
//!
//! - [`pki`]: a CA and server certificates made at run time for any host names.
//! - [`origin`]: origin sites over HTTP/1.1, and HTTPS with HTTP/1.1 and HTTP/2 by ALPN, serving
//!   bodies of requested sizes and recording what they received.
//! - [`vendor`]: fake proxy vendors (CONNECT and absolute-form, Basic credentials, a host-name map
//!   to the origins) that record every byte of every connection, split into exchanges by their
//!   own reading of the stream, plus fault modes (407, reset mid-body, blackhole); also as SOCKS5
//!   and HTTPS proxies.
//!
//! They behave like the real thing on purpose, and they are shipped: starting one returns an
//! error (a port in use, say) rather than panicking.

pub mod origin;
pub mod pki;
pub mod vendor;

/// The data behind a lock even when a thread panicked holding it: the fakes' books are
/// append-only records, valid at every step.
fn unpoisoned<T>(lock: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
