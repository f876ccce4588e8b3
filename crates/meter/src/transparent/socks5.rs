//! SOCKS5 between a crawler and its vendor, relayed unchanged and metered per CONNECT.
//!
//! The handshake is lock-step (RFC 1928 §3–6, RFC 1929): greeting, method choice, optional
//! username/password and its verdict, request, reply. Each message is read whole and forwarded
//! before the next is awaited, so a crawler that sends several at once waits a round trip per
//! message, as the protocol intends anyway. The credentials message is forwarded without being
//! parsed beyond its lengths. A CONNECT becomes an [`Exchange`] counted with the vendor's reply
//! (mapped to an HTTP status for `status_class`) that owns every byte of the connection, the
//! handshake before it included; after a successful reply the connection is a
//! tunnel, relayed by [`tunnel::pipe`] with SNI and ALPN sniffing. BIND, UDP ASSOCIATE, GSSAPI,
//! refused credentials and anything malformed are relayed as bytes (still counted).

use bytes::BytesMut;
use pt_metrics::labels::{Protocol, UpstreamErrorReason};
use pt_sniff::socks5::{self, Command, METHOD_USERNAME_PASSWORD};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Captured, Inbound, VendorRead, VendorWrite, open_tunnel};
use crate::copy::CopyError;
use crate::exchange::Exchange;

/// "No authentication required" (RFC 1928 §3).
const METHOD_NONE: u8 = 0;

pub(super) async fn relay(
    captured: &Captured,
    client: TcpStream,
    (vendor_read, mut vendor_write): (VendorRead, VendorWrite),
    first: BytesMut,
) -> Result<(), CopyError> {
    let (client_read, mut client_write) = client.into_split();
    let mut client = Inbound::new(client_read, first);
    let mut vendor = Inbound::new(vendor_read, BytesMut::new());
    let opened = handshake(
        captured,
        &mut client,
        &mut client_write,
        &mut vendor,
        &mut vendor_write,
    )
    .await?;
    match opened {
        Some(exchange) => {
            open_tunnel(
                captured,
                exchange,
                (client, client_write),
                (vendor.io, vendor_write),
                vendor.buf.freeze(),
            )
            .await;
            Ok(())
        }
        None => tokio::try_join!(
            client.forward_rest(&mut vendor_write),
            vendor.forward_rest(&mut client_write)
        )
        .map(|_| ()),
    }
}

/// Reads one whole message and forwards it. `Ok(None)`: the stream ended or the message was not
/// understood, and the connection continues as bytes.
async fn pass<R, W, T>(
    from: &mut Inbound<R>,
    to: &mut W,
    parse: impl Fn(&[u8]) -> socks5::Parsed<T>,
) -> Result<Option<T>, CopyError>
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

/// Follows the handshake; the exchange of an opened CONNECT tunnel, or `None` when the
/// connection continues as bytes.
async fn handshake<CR, CW, VR, VW>(
    captured: &Captured,
    client: &mut Inbound<CR>,
    client_write: &mut CW,
    vendor: &mut Inbound<VR>,
    vendor_write: &mut VW,
) -> Result<Option<Exchange>, CopyError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
{
    if pass(client, vendor_write, socks5::greeting)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    match pass(vendor, client_write, socks5::method_choice).await? {
        Some(METHOD_NONE) => {}
        Some(METHOD_USERNAME_PASSWORD) => {
            if pass(client, vendor_write, socks5::credentials)
                .await?
                .is_none()
            {
                return Ok(None);
            }
            match pass(vendor, client_write, socks5::credentials_status).await? {
                Some(true) => {}
                Some(false) => {
                    captured
                        .shared
                        .metrics
                        .upstream_error(&captured.vendor, UpstreamErrorReason::VendorAuth);
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
        // No acceptable method (0xFF), GSSAPI, or a vendor's own method.
        _ => return Ok(None),
    }
    let request = match client.message(socks5::request).await {
        Ok(Some((request, len))) => (request, len),
        Ok(None) | Err(None) => return Ok(None),
        Err(Some(error)) => return Err(error),
    };
    let (socks5::Request { command, target }, len) = request;
    let (Command::Connect, Some(target)) = (command, target) else {
        return Ok(None);
    };
    let mut exchange = captured.exchange(Protocol::Socks5, &target, "CONNECT", None);
    captured.tally.hand_over_to(exchange.attribution().clone());
    client.forward(len, vendor_write).await?;
    match vendor.message(socks5::reply).await {
        Ok(Some((code, len))) => {
            exchange.responded(socks5::reply_status(code));
            vendor.forward(len, client_write).await?;
            Ok((code == 0).then_some(exchange))
        }
        Ok(None) => {
            exchange.vendor_went_away(UpstreamErrorReason::Reset);
            Ok(None)
        }
        Err(None) => {
            exchange.vendor_went_away(UpstreamErrorReason::Protocol);
            Ok(None)
        }
        Err(Some(error)) => {
            exchange.vendor_went_away(UpstreamErrorReason::Reset);
            Err(error)
        }
    }
}
