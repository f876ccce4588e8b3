//! One request lifecycle for every front end: admit → route → policy → exchange → outcome.
//!
//! HTTP/1.1 forwarding, CONNECT, HTTP/2 requests, HTTP/2 CONNECT and the requests of captured
//! connections (transparent HTTP/1.1, CONNECT and SOCKS5) all describe a request the same way
//! ([`Request`]) and pass it through [`admit`]: the client's credentials, the vendor choice, the
//! destination policy (ports, address classes, the meter's own sockets), then the pod identity
//! and the [`Exchange`] that accounts for it from there on (its outcome, counted once). A refusal
//! is counted and logged in exactly one place, [`refuse`], which front ends also call for
//! requests they could not even parse; [`Refused`] carries the answer to give.
//!
//! How a request reached the meter ([`Route`]) decides the first three steps. A request sent to
//! the meter as a proxy is checked on all of them. A captured request was addressed to a vendor
//! by the crawler itself and only redirected to the meter on its way: its vendor is the endpoint
//! the crawler dialled, its credentials are the vendor's (they pass through unread, so they
//! cannot reach a log or a label), and the meter connects only to that vendor endpoint, never to
//! the destination, so there is no destination for the meter's policy to guard: the crawler
//! would reach it through the vendor just the same without a meter. Such a request is admitted
//! (and metered) as it is; refusing it would only break crawling.

use std::net::SocketAddr;
use std::sync::Arc;

use pt_config::{MeterConfig, SecurityConfig, VendorIndex};
use pt_metrics::caps::Name;
use pt_metrics::labels::{Protocol, RejectReason};
use pt_sniff::Authority;
use secrecy::SecretString;

use crate::exchange::{Exchange, ExchangeSpec};
use crate::failure::Failure;
use crate::identity::PodResolver;
use crate::metering::{Metering, Refusal};
use crate::policy::{self, OwnAddresses};
use crate::routing::{Router, authenticate, client_credentials};
use crate::vendor::{Vendor, Vendors};

/// What admission needs: who may use the meter, how a vendor is chosen, where traffic may go.
#[derive(Debug)]
pub struct Gate {
    password: Option<SecretString>,
    router: Router,
    identity: Arc<dyn PodResolver>,
    security: SecurityConfig,
    pub own: Arc<OwnAddresses>,
    /// The vendor-selection header, lower case; `None` when selection by header is off.
    pub vendor_header: Option<String>,
}

impl Gate {
    pub fn new(
        config: &MeterConfig,
        identity: Arc<dyn PodResolver>,
        own: Arc<OwnAddresses>,
    ) -> Gate {
        Gate {
            password: config.clients.password.clone(),
            router: Router::new(config),
            identity,
            security: config.security.clone(),
            own,
            vendor_header: config.routing.vendor_header.clone(),
        }
    }
}

impl Gate {
    /// The pod behind a connection (and, for identities by proxy username, a username).
    pub fn identify(
        &self,
        metrics: &pt_metrics::Metrics,
        peer: SocketAddr,
        username: Option<&str>,
    ) -> pt_metrics::labels::PodIdentity {
        self.identity.resolve(metrics, peer, username)
    }
}

/// What the meter knows about a client connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The vendor of the listener the connection arrived on, if it is dedicated to one.
    pub listener_vendor: Option<VendorIndex>,
}

/// How a request reached the meter, and so how its vendor is chosen and what is checked.
#[derive(Clone, Copy, Debug)]
pub enum Route<'a> {
    /// Sent to the meter as a proxy: the client's credentials, the listener and the
    /// vendor-selection header choose the vendor; the destination policy applies.
    Proxy {
        /// The values of `Proxy-Authorization`.
        proxy_authorization: &'a [&'a [u8]],
        /// The values of the vendor-selection header.
        vendor_header: &'a [&'a [u8]],
    },
    /// Sent by the crawler to this vendor's endpoint and captured on its way (see the module
    /// documentation for why nothing more is checked).
    Captured(VendorIndex),
}

/// A request as every front end describes it.
#[derive(Debug)]
pub struct Request<'a> {
    pub protocol: Protocol,
    pub method: &'a str,
    pub target: &'a Authority,
    pub route: Route<'a>,
    /// The URL for the access log (without userinfo and query), for plain HTTP.
    pub url: Option<String>,
}

impl Request<'_> {
    fn is_tunnel(&self) -> bool {
        self.protocol == Protocol::Connect
    }
}

/// An admitted request.
#[derive(Debug)]
pub struct Admitted<'v> {
    pub vendor: &'v Vendor,
    pub exchange: Exchange,
    /// The client's own `Proxy-Authorization`, kept only for vendors that forward it.
    pub client_authorization: Option<Vec<u8>>,
}

/// A refused request, already counted and logged: the answer to give.
#[derive(Debug)]
pub struct Refused {
    pub failure: Failure,
    pub vendor: Option<Name>,
}

/// Admits a request, or refuses it (counted and logged here).
pub fn admit<'v>(
    gate: &Gate,
    metering: &Arc<Metering>,
    vendors: &'v Vendors,
    conn: &ConnInfo,
    request: Request<'_>,
) -> Result<Admitted<'v>, Refused> {
    let refused = |failure: Failure, vendor: Option<&Vendor>| {
        refuse(
            metering,
            conn,
            request.protocol,
            request.method,
            Some(request.target),
            vendor.map(|v| &v.name),
            failure,
        )
    };
    let (vendor, identity, client_authorization) = match request.route {
        Route::Proxy {
            proxy_authorization,
            vendor_header,
        } => {
            // A vendor answers TRACE with the request it received, the vendor credentials the
            // meter added included. (A captured request carries the crawler's own.)
            if request.method.eq_ignore_ascii_case("TRACE") {
                return Err(refused(
                    Failure::Rejected(RejectReason::MethodNotAllowed),
                    None,
                ));
            }
            let credentials = match client_credentials(proxy_authorization) {
                Ok(c) => c,
                // A malformed header only matters when the meter requires client credentials.
                Err(f) if gate.password.is_some() => return Err(refused(f, None)),
                Err(_) => None,
            };
            authenticate(gate.password.as_ref(), credentials.as_ref())
                .map_err(|f| refused(f, None))?;
            let username = credentials.as_ref().map(|c| c.username.as_str());
            let index = gate
                .router
                .choose(conn.listener_vendor, vendor_header, username)
                .map_err(|f| refused(f, None))?;
            let vendor = &vendors.list[index];
            check_destination(gate, &request).map_err(|f| refused(f, Some(vendor)))?;
            let identity = gate
                .identity
                .resolve(&metering.metrics, conn.peer, username);
            let client_authorization = vendor
                .config
                .forward_client_credentials
                .then(|| proxy_authorization.first().map(|v| v.to_vec()))
                .flatten();
            (vendor, identity, client_authorization)
        }
        Route::Captured(index) => {
            let identity = gate.identity.resolve(&metering.metrics, conn.peer, None);
            (&vendors.list[index], identity, None)
        }
    };
    let exchange = Exchange::new(
        metering.clone(),
        ExchangeSpec {
            vendor: vendor.name.clone(),
            identity,
            protocol: request.protocol,
            host: &request.target.host,
            port: request.target.port,
            method: request.method,
            url: request.url,
            client: conn.peer,
        },
    );
    Ok(Admitted {
        vendor,
        exchange,
        client_authorization,
    })
}

/// The destination policy for a request sent to the meter as a proxy: the ports its kind may
/// reach, the meter's own sockets, and the address classes the security settings allow.
fn check_destination(gate: &Gate, request: &Request<'_>) -> Result<(), Failure> {
    let ports = if request.is_tunnel() {
        &gate.security.connect_ports
    } else {
        &gate.security.http_ports
    };
    if let Some(ip) = request.target.host.ip() {
        gate.own.check(SocketAddr::new(ip, request.target.port))?;
    }
    policy::check_port(ports, request.target.port)?;
    policy::check_host(&gate.security, &request.target.host)
}

/// Counts and logs a refusal: the one place refusals are recorded.
pub fn refuse(
    metering: &Metering,
    conn: &ConnInfo,
    protocol: Protocol,
    method: &str,
    target: Option<&Authority>,
    vendor: Option<&Name>,
    failure: Failure,
) -> Refused {
    if let Some(reason) = failure.reject_reason() {
        metering.refuse(&Refusal {
            reason,
            status: failure.status(),
            client: conn.peer,
            protocol: protocol.as_str(),
            method,
            host: target.map(|t| (&t.host, t.port)),
            vendor: vendor.map(Name::as_str),
        });
    }
    Refused {
        failure,
        vendor: vendor.cloned(),
    }
}
