//! Plain-HTTP forwarding: absolute-form HTTP/1.x and h2c requests, sent to the vendor as
//! HTTP/1.1 (absolute-form to a proxy vendor, origin-form for `direct`).
//!
//! Bodies stream both ways (a 1 GiB response is never buffered). Hop-by-hop headers, the vendor
//! selection header and the client's `Proxy-Authorization` are removed; the vendor's credentials
//! are added on the vendor leg only. A vendor's 407 becomes a 502 without the vendor's challenge.

use std::sync::Arc;

use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority as UriAuthority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pt_metrics::labels::{Protocol, RejectReason, UpstreamErrorReason};
use pt_sniff::Authority;
use pt_sniff::authority::parse_host;
use tokio::time::Instant;

use crate::ProxyBody;
use crate::access_log::redact_uri;
use crate::admission::{ConnInfo, admit, refuse};
use crate::body::ForwardedBody;
use crate::counting_io::Tally;
use crate::exchange::{Exchange, ExchangeSpec};
use crate::failure::{Failure, classify_hyper};
use crate::policy;
use crate::pool::VendorConn;
use crate::shared::Shared;
use crate::vendor::Vendor;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy-specific ones never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// Forwards one request; never fails (errors become answers).
pub async fn forward(
    shared: Arc<Shared>,
    conn: ConnInfo,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let protocol = if request.version() == Version::HTTP_2 {
        Protocol::H2
    } else {
        Protocol::Http1
    };
    let target = match target_of(request.uri()) {
        Ok(t) => t,
        Err(f) => return refuse(&shared, f, None),
    };
    let admission = match admit(&shared, &conn, request.headers()) {
        Ok(a) => a,
        Err(f) => return refuse(&shared, f, None),
    };
    let vendor = &shared.vendors[admission.vendor];
    if let Err(f) = policy::check_port(&shared.config.security.http_ports, target.port)
        .and_then(|()| policy::check_host(&shared.config.security, &target.host))
    {
        return refuse(&shared, f, Some(vendor.name.as_str()));
    }

    let mut exchange = Exchange::new(
        shared.clone(),
        ExchangeSpec {
            vendor: vendor.name.clone(),
            identity: admission.identity,
            protocol,
            host: target.host.clone(),
            port: target.port,
            method: request.method().to_string(),
            url: Some(redact_uri(request.uri())),
            client: conn.peer,
        },
        started,
    );
    let outgoing = match outgoing_request(
        &shared,
        vendor,
        &target,
        request,
        admission.client_authorization.as_ref(),
    ) {
        Ok(r) => r,
        Err(f) => {
            exchange.failed(f);
            return f.response(Some(vendor.name.as_str()));
        }
    };
    let key = vendor.pool_key(&target);
    match send(&shared, vendor, &target, &key, &exchange, outgoing).await {
        Ok((response, vendor_conn)) => {
            if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED && !vendor.is_direct()
            {
                vendor_conn.abort();
                let f = Failure::Upstream(UpstreamErrorReason::VendorAuth);
                exchange.failed(f);
                return f.response(Some(vendor.name.as_str()));
            }
            exchange.responded(response.status().as_u16());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(PROXY_AUTHENTICATE);
            let body = ForwardedBody::new(
                body,
                exchange,
                shared.clone(),
                admission.vendor,
                key,
                vendor_conn,
            );
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(f) => {
            exchange.failed(f);
            f.response(Some(vendor.name.as_str()))
        }
    }
}

/// The destination of an absolute-form (or h2 `:scheme`/`:authority`) request.
fn target_of(uri: &Uri) -> Result<Authority, Failure> {
    let bad = Failure::Rejected(RejectReason::BadRequest);
    if uri.scheme() != Some(&Scheme::HTTP) {
        // Origin-form requests are for origin servers, and https:// URLs must use CONNECT.
        return Err(bad);
    }
    let host = parse_host(uri.host().ok_or(bad)?).map_err(|_| bad)?;
    Ok(Authority {
        host,
        port: uri.port_u16().unwrap_or(80),
    })
}

/// Builds the request sent to the vendor.
fn outgoing_request(
    shared: &Shared,
    vendor: &Vendor,
    target: &Authority,
    request: Request<Incoming>,
    client_authorization: Option<&HeaderValue>,
) -> Result<Request<Incoming>, Failure> {
    let bad = Failure::Rejected(RejectReason::BadRequest);
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // The default port is left implicit, as clients write it; userinfo is never forwarded.
    let authority_text = match parts.uri.port_u16() {
        Some(port) => format!("{}:{port}", target.host),
        None => target.host.to_string(),
    };
    let authority: UriAuthority = authority_text.parse().map_err(|_| bad)?;
    parts.uri = if vendor.is_direct() {
        Uri::from(path)
    } else {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| bad)?
    };
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(PROXY_AUTHORIZATION);
    parts.headers.remove(EXPECT);
    if let Some(name) = &shared.config.routing.vendor_header {
        parts.headers.remove(name.as_str());
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad)?;
    parts.headers.insert(HOST, host);
    if let Some(value) = vendor.proxy_authorization(client_authorization) {
        parts.headers.insert(PROXY_AUTHORIZATION, value);
    }
    Ok(Request::from_parts(parts, body))
}

/// Removes hop-by-hop headers and the headers the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in [TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
}

/// Sends on a pooled connection (retrying once on a fresh one if a reused connection turned out
/// closed before the request left), up to the response head.
async fn send(
    shared: &Shared,
    vendor: &Vendor,
    target: &Authority,
    key: &crate::pool::PoolKey,
    exchange: &Exchange,
    mut request: Request<Incoming>,
) -> Result<(Response<Incoming>, VendorConn), Failure> {
    let deadline = Instant::now() + shared.config.limits.response_timeout;
    loop {
        let (mut conn, reused) = match vendor.pool.checkout(key).await {
            Some(conn) => (conn, true),
            None => {
                let tally = Tally::new(exchange.attribution().clone());
                (vendor.http_connection(shared, target, tally).await?, false)
            }
        };
        conn.tally.attribute_to(exchange.attribution().clone());
        let sent = tokio::time::timeout_at(deadline, conn.sender.try_send_request(request)).await;
        match sent {
            Ok(Ok(response)) => return Ok((response, conn)),
            Ok(Err(mut error)) => {
                let failure = classify_hyper(error.error());
                conn.abort();
                match error.take_message() {
                    // The request never left: a stale keep-alive connection. Try a fresh one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(failure),
                }
            }
            Err(_elapsed) => {
                conn.abort();
                return Err(Failure::Upstream(UpstreamErrorReason::Timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close, X-Secret-Hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn only_absolute_http_uris_have_a_target() {
        let target = |s: &str| target_of(&s.parse::<Uri>().unwrap());
        assert_eq!(
            target("http://Shop.Example:8080/x").unwrap().to_string(),
            "shop.example:8080"
        );
        assert_eq!(target("http://shop.example/").unwrap().port, 80);
        assert!(target("/relative").is_err());
        assert!(target("https://shop.example/").is_err());
    }
}
