//! Classification of everything that can go wrong with a request, done once.
//!
//! A [`Failure`] is a small `Copy` value naming the side at fault. One function maps it to the
//! HTTP status the client receives and another to the metric label, so the answer and the
//! telemetry cannot disagree. Messages sent to clients are built from the classification and from
//! values the meter has already validated (vendor names, parsed hosts); they never contain
//! credentials, header values or the text of lower-level errors.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use pt_metrics::labels::{RejectReason, UpstreamErrorReason};

use crate::ProxyBody;

/// Why a request did not get (or finish) a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The meter refused the client's request; nothing was forwarded.
    Rejected(RejectReason),
    /// The vendor leg failed.
    Upstream(UpstreamErrorReason),
    /// The vendor refused a CONNECT with this status (other than 407).
    TunnelRefused(StatusCode),
    /// The client went away or sent a broken body; no answer can reach it.
    ClientGone,
}

impl Failure {
    /// The status answered to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Failure::Rejected(reason) => match reason {
                RejectReason::BadRequest | RejectReason::UnknownVendor | RejectReason::NoVendor => {
                    StatusCode::BAD_REQUEST
                }
                RejectReason::AuthRequired | RejectReason::AuthFailed => {
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED
                }
                RejectReason::SourceNotAllowed
                | RejectReason::PortNotAllowed
                | RejectReason::DestinationNotAllowed
                | RejectReason::Loop => StatusCode::FORBIDDEN,
                RejectReason::Overloaded | RejectReason::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            Failure::Upstream(reason) => match reason {
                UpstreamErrorReason::ConnectTimeout | UpstreamErrorReason::Timeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            Failure::TunnelRefused(status) => status,
            Failure::ClientGone => StatusCode::BAD_REQUEST,
        }
    }

    /// The `reason` label value (and the `X-Proxy-Telemetry-Error` header of error answers).
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Rejected(r) => r.as_str(),
            Failure::Upstream(r) => r.as_str(),
            Failure::TunnelRefused(_) => UpstreamErrorReason::TunnelRefused.as_str(),
            Failure::ClientGone => "client_gone",
        }
    }

    /// The upstream-error label, when the vendor leg is at fault.
    pub fn upstream_reason(self) -> Option<UpstreamErrorReason> {
        match self {
            Failure::Upstream(r) => Some(r),
            Failure::TunnelRefused(_) => Some(UpstreamErrorReason::TunnelRefused),
            _ => None,
        }
    }

    /// A human sentence for the error body, with the vendor name when one was chosen.
    pub fn explain(self, vendor: Option<&str>) -> String {
        let via = vendor.map(|v| format!(" via {v}")).unwrap_or_default();
        let vendor = vendor.unwrap_or("the vendor");
        match self {
            Failure::Rejected(r) => match r {
                RejectReason::BadRequest => "malformed request, or a form this forward proxy does not serve (use absolute-form http:// URLs or CONNECT)".into(),
                RejectReason::UnknownVendor => "the requested proxy vendor is not configured".into(),
                RejectReason::NoVendor => "no proxy vendor was named and no default is configured".into(),
                RejectReason::AuthRequired => "proxy authentication required".into(),
                RejectReason::AuthFailed => "proxy authentication failed".into(),
                RejectReason::SourceNotAllowed => "this client address may not use the proxy".into(),
                RejectReason::PortNotAllowed => "the destination port is not allowed".into(),
                RejectReason::DestinationNotAllowed => "the destination address is not allowed (loopback, private, link-local or reserved)".into(),
                RejectReason::Overloaded => "the meter is at its connection limit".into(),
                RejectReason::ShuttingDown => "the meter is shutting down".into(),
                RejectReason::Loop => "the connection would loop back into the meter".into(),
            },
            Failure::Upstream(r) => match r {
                UpstreamErrorReason::ConnectRefused => format!("{vendor} refused the connection"),
                UpstreamErrorReason::ConnectTimeout => format!("connecting to {vendor} timed out"),
                UpstreamErrorReason::Resolve => format!("the destination name did not resolve{via}"),
                UpstreamErrorReason::VendorAuth => format!("{vendor} rejected the meter's credentials (407)"),
                UpstreamErrorReason::TunnelRefused => format!("{vendor} refused the tunnel"),
                UpstreamErrorReason::Reset => format!("{vendor} closed the connection mid-exchange"),
                UpstreamErrorReason::Timeout => format!("{vendor} did not answer in time"),
                UpstreamErrorReason::Protocol => format!("{vendor} sent an invalid HTTP response"),
                UpstreamErrorReason::TunnelIdle => "the tunnel was idle too long".into(),
            },
            Failure::TunnelRefused(status) => {
                format!("{vendor} refused the tunnel with status {}", status.as_u16())
            }
            Failure::ClientGone => "the client request failed".into(),
        }
    }

    /// The answer to the client: the status, a plain-text explanation and the reason header.
    pub fn response(self, vendor: Option<&str>) -> http::Response<ProxyBody> {
        let body = format!("proxy-telemetry: {}\n", self.explain(vendor));
        let mut response = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            "x-proxy-telemetry-error",
            HeaderValue::from_static(self.reason()),
        );
        if matches!(
            self,
            Failure::Rejected(RejectReason::AuthRequired | RejectReason::AuthFailed)
        ) {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"proxy-telemetry\""),
            );
        }
        response
    }
}

/// Maps a connect-phase IO error to its reason.
pub fn classify_connect(error: &std::io::Error) -> UpstreamErrorReason {
    use std::io::ErrorKind::*;
    match error.kind() {
        TimedOut => UpstreamErrorReason::ConnectTimeout,
        ConnectionRefused => UpstreamErrorReason::ConnectRefused,
        _ => UpstreamErrorReason::ConnectRefused,
    }
}

/// Maps a hyper client error (after the connection was established) to its reason.
pub fn classify_hyper(error: &hyper::Error) -> Failure {
    if error.is_user() || error.is_body_write_aborted() {
        // Our request body (the client's) failed or the client went away.
        return Failure::ClientGone;
    }
    if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        return Failure::Upstream(UpstreamErrorReason::Protocol);
    }
    if error.is_timeout() {
        return Failure::Upstream(UpstreamErrorReason::Timeout);
    }
    Failure::Upstream(UpstreamErrorReason::Reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_one_status_and_one_reason() {
        let cases = [
            (
                Failure::Rejected(RejectReason::UnknownVendor),
                400,
                "unknown_vendor",
            ),
            (
                Failure::Rejected(RejectReason::AuthRequired),
                407,
                "auth_required",
            ),
            (
                Failure::Rejected(RejectReason::DestinationNotAllowed),
                403,
                "destination_not_allowed",
            ),
            (
                Failure::Rejected(RejectReason::Overloaded),
                503,
                "overloaded",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::VendorAuth),
                502,
                "vendor_auth",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::ConnectRefused),
                502,
                "connect_refused",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::Timeout),
                504,
                "timeout",
            ),
            (Failure::Upstream(UpstreamErrorReason::Reset), 502, "reset"),
            (
                Failure::TunnelRefused(StatusCode::FORBIDDEN),
                403,
                "tunnel_refused",
            ),
        ];
        for (failure, status, reason) in cases {
            assert_eq!(failure.status().as_u16(), status, "{failure:?}");
            assert_eq!(failure.reason(), reason, "{failure:?}");
            let response = failure.response(Some("vendor-a"));
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()["x-proxy-telemetry-error"], reason);
        }
    }

    #[test]
    fn a_vendor_407_never_carries_the_vendors_challenge() {
        let response =
            Failure::Upstream(UpstreamErrorReason::VendorAuth).response(Some("vendor-a"));
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().get(header::PROXY_AUTHENTICATE).is_none());
    }
}
