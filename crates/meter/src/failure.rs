//! Classification of everything that can go wrong with a request, done once.
//!
//! A [`Failure`] is a small `Copy` value naming the side at fault. One function maps it to the
//! status the client receives and another to the metric label, so the answer and the telemetry
//! cannot disagree. An [`Error`] keeps the cause (the socket error, say) beside its
//! classification, all the way to the exchange's one access-log line. Messages sent to clients
//! are built from the classification and from values the meter has already validated (vendor
//! names); they never contain credentials, header values or the text of lower-level errors.

use std::io;

use pt_metrics::labels::{RejectReason, UpstreamErrorReason};
use pt_sniff::request::RequestError;

/// How a request or tunnel ended: the access log's `outcome`, documented in docs/metrics.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with the vendor's (or destination's) status, and completed.
    Ok,
    /// Refused by the meter before anything was forwarded (`reason`: the rejection).
    Rejected,
    /// The vendor leg failed before an answer; the meter answered 502, 503 or 504 itself.
    VendorError,
    /// The vendor refused the tunnel or the credentials; the client got the refusal.
    VendorRefused,
    /// The vendor closed or failed without answering, and no status reached the client
    /// (a captured connection: the crawler sees the close).
    VendorClosed,
    /// The answer started, then the vendor cut it short (a reset, a body shorter than
    /// announced, a TLS record cut in half).
    VendorCut,
    /// The client went away before the answer.
    ClientGone,
    /// The client went away after the answer started (an aborted download).
    ClientCut,
    /// The client's request body broke its framing mid-way.
    BadFraming,
    /// Closed by an idle timeout.
    Idle,
    /// Ended by the meter's shutdown after the grace period.
    Shutdown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::VendorError => "vendor_error",
            Outcome::VendorRefused => "vendor_refused",
            Outcome::VendorClosed => "vendor_closed",
            Outcome::VendorCut => "vendor_cut",
            Outcome::ClientGone => "client_gone",
            Outcome::ClientCut => "client_cut",
            Outcome::BadFraming => "bad_framing",
            Outcome::Idle => "idle",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Why a request did not get (or finish) a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The meter refused the client's request; nothing was forwarded.
    Rejected(RejectReason),
    /// The client's request head was malformed (with its own status: 400, 414, 431, 417, 505).
    Malformed(RequestError),
    /// The vendor leg failed.
    Upstream(UpstreamErrorReason),
    /// The vendor refused a CONNECT with this status (other than 407).
    TunnelRefused(u16),
    /// The client went away or its connection failed; no answer can reach it.
    ClientGone,
}

impl Failure {
    /// The status answered to the client.
    pub fn status(self) -> u16 {
        match self {
            Failure::Rejected(reason) => match reason {
                RejectReason::BadRequest
                | RejectReason::BadFraming
                | RejectReason::UnknownVendor
                | RejectReason::NoVendor => 400,
                RejectReason::HeadTooLarge => 431,
                RejectReason::AuthRequired | RejectReason::AuthFailed => 407,
                RejectReason::SourceNotAllowed
                | RejectReason::PortNotAllowed
                | RejectReason::DestinationNotAllowed
                | RejectReason::Loop => 403,
                RejectReason::MethodNotAllowed => 405,
                RejectReason::Overloaded
                | RejectReason::ShuttingDown
                | RejectReason::VendorConnectionLimit => 503,
            },
            Failure::Malformed(error) => error.status(),
            Failure::Upstream(reason) => match reason {
                UpstreamErrorReason::ConnectTimeout | UpstreamErrorReason::Timeout => 504,
                UpstreamErrorReason::LocalResources => 503,
                _ => 502,
            },
            Failure::TunnelRefused(status) => status,
            Failure::ClientGone => 400,
        }
    }

    /// The refusal label, when the meter refused.
    pub fn reject_reason(self) -> Option<RejectReason> {
        match self {
            Failure::Rejected(r) => Some(r),
            Failure::Malformed(e) if matches!(e.status(), 414 | 431) => {
                Some(RejectReason::HeadTooLarge)
            }
            Failure::Malformed(_) => Some(RejectReason::BadRequest),
            _ => None,
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

    /// The `reason` label value (and the `X-Proxy-Telemetry-Error` header of error answers).
    pub fn reason(self) -> &'static str {
        match (self.reject_reason(), self.upstream_reason()) {
            (Some(r), _) => r.as_str(),
            (_, Some(r)) => r.as_str(),
            _ => "client_gone",
        }
    }

    /// A human sentence for the error body, with the vendor name when one was chosen.
    pub fn explain(self, vendor: Option<&str>) -> String {
        let via = vendor.map(|v| format!(" via {v}")).unwrap_or_default();
        let vendor = vendor.unwrap_or("the vendor");
        match self {
            Failure::Rejected(r) => match r {
                RejectReason::BadRequest => "malformed request, or a form this forward proxy does not serve (use absolute-form http:// URLs or CONNECT)".into(),
                RejectReason::HeadTooLarge => "the request head is larger than the limit".into(),
                RejectReason::BadFraming => "the request body's chunked framing is malformed".into(),
                RejectReason::UnknownVendor => "the requested proxy vendor is not configured".into(),
                RejectReason::NoVendor => "no proxy vendor was named and no default is configured".into(),
                RejectReason::AuthRequired => "proxy authentication required".into(),
                RejectReason::AuthFailed => "proxy authentication failed".into(),
                RejectReason::SourceNotAllowed => "this client address may not use the proxy".into(),
                RejectReason::PortNotAllowed => "the destination port is not allowed".into(),
                RejectReason::MethodNotAllowed => "TRACE is not forwarded".into(),
                RejectReason::DestinationNotAllowed => "the destination address is not allowed".into(),
                RejectReason::Loop => "the destination is this proxy itself".into(),
                RejectReason::Overloaded => "the proxy is at its connection limit".into(),
                RejectReason::ShuttingDown => "the proxy is shutting down".into(),
                RejectReason::VendorConnectionLimit => "the proxy is at its limit of vendor connections".into(),
            },
            Failure::Malformed(error) => format!("malformed request: {error}"),
            Failure::Upstream(r) => match r {
                UpstreamErrorReason::ConnectRefused => format!("{vendor} refused the connection"),
                UpstreamErrorReason::Unreachable => format!("{vendor} is unreachable"),
                UpstreamErrorReason::LocalResources => "the proxy could not open a connection (out of resources)".into(),
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
                format!("{vendor} refused the tunnel with status {status}")
            }
            Failure::ClientGone => "the client request failed".into(),
        }
    }

    /// Whether the answer carries a `Proxy-Authenticate` challenge.
    pub fn challenges(self) -> bool {
        matches!(
            self,
            Failure::Rejected(RejectReason::AuthRequired | RejectReason::AuthFailed)
        )
    }
}

/// A failure with what caused it.
#[derive(Debug, thiserror::Error)]
#[error("{}{}", failure.reason(), cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
pub struct Error {
    pub failure: Failure,
    #[source]
    pub cause: Option<io::Error>,
}

impl Error {
    pub fn new(failure: Failure, cause: io::Error) -> Error {
        Error {
            failure,
            cause: Some(cause),
        }
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        Error {
            failure,
            cause: None,
        }
    }
}

/// Maps a connect-phase error (socket creation or `connect`) to its reason.
pub fn classify_connect(error: &io::Error) -> UpstreamErrorReason {
    use rustix::io::Errno;
    if error.kind() == io::ErrorKind::TimedOut {
        return UpstreamErrorReason::ConnectTimeout;
    }
    match error.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::HOSTUNREACH | Errno::NETUNREACH | Errno::ADDRNOTAVAIL | Errno::NETDOWN) => {
            UpstreamErrorReason::Unreachable
        }
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
            UpstreamErrorReason::LocalResources
        }
        _ => UpstreamErrorReason::ConnectRefused,
    }
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
            (Failure::Rejected(RejectReason::Loop), 403, "loop"),
            (
                Failure::Rejected(RejectReason::MethodNotAllowed),
                405,
                "method_not_allowed",
            ),
            (
                Failure::Rejected(RejectReason::Overloaded),
                503,
                "overloaded",
            ),
            (
                Failure::Rejected(RejectReason::VendorConnectionLimit),
                503,
                "vendor_connection_limit",
            ),
            (
                Failure::Malformed(RequestError::LineTooLong),
                414,
                "head_too_large",
            ),
            (
                Failure::Malformed(RequestError::LengthAndCoding),
                400,
                "bad_request",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::VendorAuth),
                502,
                "vendor_auth",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::LocalResources),
                503,
                "local_resources",
            ),
            (
                Failure::Upstream(UpstreamErrorReason::Timeout),
                504,
                "timeout",
            ),
            (Failure::TunnelRefused(403), 403, "tunnel_refused"),
            (Failure::ClientGone, 400, "client_gone"),
        ];
        for (failure, status, reason) in cases {
            assert_eq!(failure.status(), status, "{failure:?}");
            assert_eq!(failure.reason(), reason, "{failure:?}");
        }
    }

    #[test]
    fn connect_errors_name_their_cause() {
        let os = |errno: rustix::io::Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        use rustix::io::Errno;
        assert_eq!(
            classify_connect(&os(Errno::CONNREFUSED)),
            UpstreamErrorReason::ConnectRefused
        );
        assert_eq!(
            classify_connect(&os(Errno::HOSTUNREACH)),
            UpstreamErrorReason::Unreachable
        );
        assert_eq!(
            classify_connect(&os(Errno::MFILE)),
            UpstreamErrorReason::LocalResources
        );
        let error = Error::new(
            Failure::Upstream(UpstreamErrorReason::ConnectRefused),
            os(Errno::CONNREFUSED),
        );
        assert!(
            error.to_string().starts_with("connect_refused: "),
            "{error}"
        );
    }
}
