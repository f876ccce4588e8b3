//! SOCKS5 between a crawler and its vendor, relayed unchanged and metered per CONNECT.
//!
//! The handshake is lock-step (RFC 1928 §3–6, RFC 1929): greeting, method choice, optional
//! username/password and its verdict, request, reply. Each message is read whole and forwarded
//! before the next is awaited, so a crawler that sends several at once waits a round trip per
//! message, as the protocol intends anyway. The credentials message is forwarded without being
//! parsed beyond its lengths. A CONNECT becomes an [`Exchange`] counted with the vendor's reply
//! (mapped to an HTTP status for `status_class`) that owns every byte of the connection, the
//! handshake before it included; after a successful reply the connection is a tunnel, relayed by
//! [`crate::tunnel::run`] with SNI and ALPN sniffing. Credentials the vendor refuses are an
//! exchange too (status 407, outcome `vendor_refused`), though its destination was never said.
//! BIND, UDP ASSOCIATE, GSSAPI and anything malformed are relayed as bytes (still counted).

use std::io;

use bytes::BytesMut;
use pt_metrics::labels::{Protocol, UpstreamErrorReason};
use pt_sniff::socks5::{self, Command, METHOD_USERNAME_PASSWORD};
use pt_sniff::{Authority, Host};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Captured, ClientRead, ClientWrite, Inbound, VendorRead, VendorWrite};
use crate::exchange::Exchange;
use crate::relay::Start;

/// "No authentication required" (RFC 1928 §3).
const METHOD_NONE: u8 = 0;
/// The status a refusal of the crawler's credentials is counted with (RFC 1929 §2: any non-zero
/// status is a failure; 407 is what an HTTP proxy would answer).
const CREDENTIALS_REFUSED: u16 = 407;

pub(super) async fn relay(
    captured: &Captured,
    (client_read, mut client_write): (ClientRead, ClientWrite),
    (vendor_read, mut vendor_write): (VendorRead, VendorWrite),
    first: BytesMut,
) {
    let mut client = Inbound::new(client_read, first);
    let mut vendor = Inbound::new(vendor_read, BytesMut::new());
    let opened = handshake(
        captured,
        &mut client,
        &mut client_write,
        &mut vendor,
        &mut vendor_write,
    )
    .await;
    match opened {
        Ok(Handshake::Tunnel(exchange)) => {
            // The read buffers are let go before the tunnel: they must not live as long as it.
            let start = Start::copied(&client.buf, &vendor.buf);
            drop((client.buf, vendor.buf));
            captured
                .open_tunnel(
                    exchange,
                    (client.io, client_write),
                    (vendor.io, vendor_write),
                    start,
                )
                .await;
        }
        Ok(Handshake::Bytes(exchange)) => {
            let _ = tokio::try_join!(
                client.forward_rest(&mut vendor_write, &captured.activity),
                vendor.forward_rest(&mut client_write, &captured.activity)
            );
            // The exchange (if the handshake got that far) owns the bytes until the end, and
            // its line is written after the vendor socket closed.
            drop((vendor, vendor_write));
            drop(exchange);
        }
        Err(_) => {}
    }
}

/// How a handshake ended.
enum Handshake {
    /// The vendor opened a tunnel.
    Tunnel(Exchange),
    /// The connection continues as bytes, counted to this exchange if there was one.
    Bytes(Option<Exchange>),
}

/// Reads one whole message and forwards it. `Ok(None)`: the stream ended or the message was not
/// understood, and the connection continues as bytes.
async fn pass<R, W, T>(
    from: &mut Inbound<R>,
    to: &mut W,
    parse: impl Fn(&[u8]) -> socks5::Parsed<T>,
) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match from.message(parse).await {
        Ok(Some((message, len))) => {
            from.forward(len, to).await?;
            Ok(Some(message))
        }
        Ok(None) | Err(None) => Ok(None),
        Err(Some(error)) => Err(error),
    }
}

/// Follows the handshake.
async fn handshake(
    captured: &Captured,
    client: &mut Inbound<ClientRead>,
    client_write: &mut ClientWrite,
    vendor: &mut Inbound<VendorRead>,
    vendor_write: &mut VendorWrite,
) -> io::Result<Handshake> {
    let bytes = Ok(Handshake::Bytes(None));
    if pass(client, vendor_write, socks5::greeting)
        .await?
        .is_none()
    {
        return bytes;
    }
    match pass(vendor, client_write, socks5::method_choice).await? {
        Some(METHOD_NONE) => {}
        Some(METHOD_USERNAME_PASSWORD) => {
            if pass(client, vendor_write, socks5::credentials)
                .await?
                .is_none()
            {
                return bytes;
            }
            match pass(vendor, client_write, socks5::credentials_status).await? {
                Some(true) => {}
                Some(false) => {
                    let exchange = credentials_refused(captured, vendor, vendor_write);
                    return Ok(Handshake::Bytes(exchange));
                }
                None => return bytes,
            }
        }
        // No acceptable method (0xFF), GSSAPI, or a vendor's own method.
        _ => return bytes,
    }
    let request = match client.message(socks5::request).await {
        Ok(Some((request, len))) => (request, len),
        Ok(None) | Err(None) => return bytes,
        Err(Some(error)) => return Err(error),
    };
    let (socks5::Request { command, target }, len) = request;
    let (Command::Connect, Some(target)) = (command, target) else {
        return bytes;
    };
    let Some(mut exchange) = captured.exchange(Protocol::Socks5, &target, "CONNECT", None) else {
        return bytes;
    };
    take_over(captured, &exchange, vendor, vendor_write);
    client.forward(len, vendor_write).await?;
    match vendor.message(socks5::reply).await {
        Ok(Some((code, len))) => {
            let status = socks5::reply_status(code);
            if code == 0 {
                exchange.responded(status);
            } else {
                exchange.vendor_refused(status, UpstreamErrorReason::TunnelRefused);
            }
            vendor.forward(len, client_write).await?;
            Ok(if code == 0 {
                Handshake::Tunnel(exchange)
            } else {
                Handshake::Bytes(Some(exchange))
            })
        }
        Ok(None) => {
            exchange.vendor_went_away(UpstreamErrorReason::Reset);
            Ok(Handshake::Bytes(Some(exchange)))
        }
        Err(None) => {
            exchange.vendor_went_away(UpstreamErrorReason::Protocol);
            Ok(Handshake::Bytes(Some(exchange)))
        }
        Err(Some(error)) => {
            exchange.vendor_went_away(UpstreamErrorReason::Reset);
            Err(error)
        }
    }
}

/// Points both directions of the vendor socket at `exchange`, which takes over the bytes the
/// handshake counted so far.
fn take_over(
    captured: &Captured,
    exchange: &Exchange,
    vendor: &mut Inbound<VendorRead>,
    vendor_write: &mut VendorWrite,
) {
    exchange.attribution().absorb(&captured.attribution);
    vendor.io.attribute_to(exchange.attribution().clone());
    vendor_write.attribute_to(exchange.attribution().clone());
}

/// The vendor refused the crawler's credentials: an exchange of its own, whose destination was
/// never said, answered 407 by the vendor.
fn credentials_refused(
    captured: &Captured,
    vendor: &mut Inbound<VendorRead>,
    vendor_write: &mut VendorWrite,
) -> Option<Exchange> {
    let unsaid = Authority {
        host: Host::Name(pt_metrics::caps::UNKNOWN.into()),
        port: 0,
    };
    let mut exchange = captured.exchange(Protocol::Socks5, &unsaid, "CONNECT", None)?;
    take_over(captured, &exchange, vendor, vendor_write);
    exchange.vendor_refused(CREDENTIALS_REFUSED, UpstreamErrorReason::VendorAuth);
    Some(exchange)
}
