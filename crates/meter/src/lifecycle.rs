//! One request lifecycle for every front end: admit → route → policy → exchange → outcome.
//!
//! HTTP/1.1 forwarding, CONNECT, HTTP/2 requests and HTTP/2 CONNECT all describe a request the
//! same way ([`Request`]) and pass it through [`admit`]: the client's credentials, the vendor
//! choice, the destination policy (ports, address classes, the meter's own sockets), then the
//! pod identity and the [`Exchange`] that accounts for it from there on (its outcome, counted
//! once). A refusal is counted and logged in exactly one place, [`refuse`], which front ends
//! also call for requests they could not even parse; [`Refused`] carries the answer to give.

use std::net::SocketAddr;
use std::sync::Arc;

use pt_config::{MeterConfig, SecurityConfig, VendorIndex};
use pt_metrics::caps::Name;
use pt_metrics::labels::Protocol;
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

/// A request as every front end describes it.
#[derive(Debug)]
pub struct Request<'a> {
    pub protocol: Protocol,
    pub method: &'a str,
    pub target: &'a Authority,
    /// The values of `Proxy-Authorization`.
    pub proxy_authorization: &'a [&'a [u8]],
    /// The values of the vendor-selection header.
    pub vendor_header: &'a [&'a [u8]],
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
    request: &Request<'_>,
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
    let credentials = match client_credentials(request.proxy_authorization) {
        Ok(c) => c,
        // A malformed header only matters when the meter requires client credentials.
        Err(f) if gate.password.is_some() => return Err(refused(f, None)),
        Err(_) => None,
    };
    authenticate(gate.password.as_ref(), credentials.as_ref()).map_err(|f| refused(f, None))?;
    let username = credentials.as_ref().map(|c| c.username.as_str());
    let index = gate
        .router
        .choose(conn.listener_vendor, request.vendor_header, username)
        .map_err(|f| refused(f, None))?;
    let vendor = &vendors.list[index];
    let ports = if request.is_tunnel() {
        &gate.security.connect_ports
    } else {
        &gate.security.http_ports
    };
    let own = match request.target.host.ip() {
        Some(ip) => gate.own.check(SocketAddr::new(ip, request.target.port)),
        None => Ok(()),
    };
    own.and_then(|()| policy::check_port(ports, request.target.port))
        .and_then(|()| policy::check_host(&gate.security, &request.target.host))
        .map_err(|f| refused(f, Some(vendor)))?;

    let identity = gate
        .identity
        .resolve(&metering.metrics, conn.peer, username);
    let client_authorization = if vendor.config.forward_client_credentials {
        request.proxy_authorization.first().map(|v| v.to_vec())
    } else {
        None
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
            url: request.url.clone(),
            client: conn.peer,
        },
    );
    Ok(Admitted {
        vendor,
        exchange,
        client_authorization,
    })
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
