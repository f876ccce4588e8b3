//! The checks every request passes before anything is forwarded: client credentials, vendor
//! choice and pod identity. Refusals are counted in `proxy_rejected_requests_total`.

use std::net::SocketAddr;

use http::header::PROXY_AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Response};
use pt_config::VendorIndex;

use crate::ProxyBody;
use crate::failure::Failure;
use crate::identity::PodIdentity;
use crate::routing::{authenticate, client_credentials};
use crate::shared::Shared;

/// What the meter knows about a client connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The vendor of the listener the connection arrived on, if it is dedicated to one.
    pub listener_vendor: Option<VendorIndex>,
}

/// An admitted request.
#[derive(Debug)]
pub struct Admission {
    pub vendor: VendorIndex,
    pub identity: PodIdentity,
    /// The client's own Proxy-Authorization, kept only for vendors that forward it.
    pub client_authorization: Option<HeaderValue>,
}

/// Authenticates the client, chooses the vendor and resolves the pod.
pub fn admit(shared: &Shared, conn: &ConnInfo, headers: &HeaderMap) -> Result<Admission, Failure> {
    let credentials = match client_credentials(headers) {
        Ok(c) => c,
        // A malformed header only matters when the meter requires client credentials.
        Err(f) if shared.config.clients.password.is_some() => return Err(f),
        Err(_) => None,
    };
    authenticate(&shared.config, credentials.as_ref())?;
    let username = credentials.as_ref().map(|c| c.username.as_str());
    let vendor = shared
        .router
        .choose(&shared.config, conn.listener_vendor, headers, username)?;
    let identity = shared
        .identity
        .resolve(&shared.metrics, conn.peer, username);
    let client_authorization = if shared.vendors[vendor].config.forward_client_credentials {
        headers.get(PROXY_AUTHORIZATION).cloned()
    } else {
        None
    };
    Ok(Admission {
        vendor,
        identity,
        client_authorization,
    })
}

/// Counts a refusal and builds its answer.
pub fn refuse(shared: &Shared, failure: Failure, vendor: Option<&str>) -> Response<ProxyBody> {
    if let Failure::Rejected(reason) = failure {
        shared.metrics.reject(reason);
    }
    failure.response(vendor)
}
