//! Label sets and the fixed vocabularies of label values.
//!
//! Field names are the label names of [`crate::spec::label`]; a unit test renders each set and
//! compares.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write;

use crate::caps::Name;

/// Implements `EncodeLabelValue` through an `as_str` method.
macro_rules! label_value {
    ($ty:ty) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

/// How the client reached the meter for this request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.x request in absolute form.
    Http1,
    /// An HTTP/2 request (h2c, prior knowledge).
    H2,
    /// A tunnel: CONNECT over HTTP/1.1 or an HTTP/2 CONNECT stream.
    Connect,
    /// A SOCKS5 CONNECT the crawler sent its vendor (transparent mode).
    Socks5,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Http1,
        Protocol::H2,
        Protocol::Connect,
        Protocol::Socks5,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Connect => "connect",
            Protocol::Socks5 => "socks5",
        }
    }
}
label_value!(Protocol);

/// The class of the status the client received, or `error` when none could be given.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No status reached the client because it went away first.
    Error,
    /// No status reached the client because the vendor closed or failed without answering and
    /// the meter could not answer in its place (a captured connection, transparent mode).
    NoResponse,
}

impl StatusClass {
    pub const ALL: [StatusClass; 7] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Error,
        StatusClass::NoResponse,
    ];

    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Error,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Error => "error",
            StatusClass::NoResponse => "no_response",
        }
    }
}
label_value!(StatusClass);

/// Why the vendor leg failed. Each value has one HTTP status toward the client (see the meter).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamErrorReason {
    /// The vendor (or, for `direct`, the destination) refused the TCP connection.
    ConnectRefused,
    /// No route to the vendor (or destination): host or network unreachable.
    Unreachable,
    /// The meter could not open a socket (out of file descriptors or memory).
    LocalResources,
    /// The TCP connection was not established within the connect timeout.
    ConnectTimeout,
    /// A `direct` destination name did not resolve.
    Resolve,
    /// The vendor answered 407: the meter's vendor credentials are wrong or missing.
    VendorAuth,
    /// The vendor answered a CONNECT with a non-2xx status.
    TunnelRefused,
    /// The vendor reset or closed the connection mid-exchange.
    Reset,
    /// The vendor did not answer within the response timeout.
    Timeout,
    /// The vendor sent something that is not valid HTTP.
    Protocol,
    /// An idle tunnel was closed by the tunnel idle timeout.
    TunnelIdle,
}

impl UpstreamErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorReason::ConnectRefused => "connect_refused",
            UpstreamErrorReason::Unreachable => "unreachable",
            UpstreamErrorReason::LocalResources => "local_resources",
            UpstreamErrorReason::ConnectTimeout => "connect_timeout",
            UpstreamErrorReason::Resolve => "resolve",
            UpstreamErrorReason::VendorAuth => "vendor_auth",
            UpstreamErrorReason::TunnelRefused => "tunnel_refused",
            UpstreamErrorReason::Reset => "reset",
            UpstreamErrorReason::Timeout => "timeout",
            UpstreamErrorReason::Protocol => "protocol",
            UpstreamErrorReason::TunnelIdle => "tunnel_idle",
        }
    }
}
label_value!(UpstreamErrorReason);

/// Why the meter refused a client request before forwarding anything.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// Malformed request, or a request form a forward proxy does not serve.
    BadRequest,
    /// A request line or head longer than `limits.max_header_bytes`, or more header fields than
    /// `limits.max_headers` (414 / 431).
    HeadTooLarge,
    /// A request body whose chunked framing broke after its head was forwarded: the vendor
    /// connection is closed and the client answered 400 if it can still be.
    BadFraming,
    /// The bound on vendor-side connections (`limits.max_vendor_connections`) is reached and
    /// no idle one could be closed to make room.
    VendorConnectionLimit,
    /// The vendor named by the header or username is not configured.
    UnknownVendor,
    /// No vendor could be chosen (no header, no mapping, no default).
    NoVendor,
    /// Client credentials are required but missing.
    AuthRequired,
    /// Client credentials are wrong.
    AuthFailed,
    /// The client's address is not in the allowed sources.
    SourceNotAllowed,
    /// The destination port is not allowed for this kind of request.
    PortNotAllowed,
    /// TRACE (405): the vendor would reflect the request it received, with the vendor
    /// credentials the meter adds.
    MethodNotAllowed,
    /// The destination is a loopback, private, link-local or otherwise refused address.
    DestinationNotAllowed,
    /// The connection limit is reached.
    Overloaded,
    /// The meter is draining for shutdown.
    ShuttingDown,
    /// A request to the meter's own listeners or admin endpoint (whatever the allow-list says),
    /// a transparent connection that was not redirected to the meter, or one that the meter
    /// itself opened and that was redirected back to it (its own traffic must be excluded from
    /// redirection).
    Loop,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::HeadTooLarge => "head_too_large",
            RejectReason::BadFraming => "bad_framing",
            RejectReason::VendorConnectionLimit => "vendor_connection_limit",
            RejectReason::UnknownVendor => "unknown_vendor",
            RejectReason::NoVendor => "no_vendor",
            RejectReason::AuthRequired => "auth_required",
            RejectReason::AuthFailed => "auth_failed",
            RejectReason::SourceNotAllowed => "source_not_allowed",
            RejectReason::PortNotAllowed => "port_not_allowed",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::DestinationNotAllowed => "destination_not_allowed",
            RejectReason::Overloaded => "overloaded",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::Loop => "loop",
        }
    }
}
label_value!(RejectReason);

/// What the client spoke inside a tunnel, from its first bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TunnelInner {
    /// TLS whose ClientHello offers `h2`.
    TlsH2,
    /// TLS offering `http/1.1` but not `h2`.
    TlsHttp1,
    /// TLS offering other protocols, or no ALPN at all.
    TlsOther,
    /// Not TLS (plain TCP, HTTP, ...).
    NotTls,
    /// Nothing conclusive arrived before the sniff timeout, or the hello was malformed.
    Unknown,
}

impl TunnelInner {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelInner::TlsH2 => "tls_h2",
            TunnelInner::TlsHttp1 => "tls_http1",
            TunnelInner::TlsOther => "tls_other",
            TunnelInner::NotTls => "not_tls",
            TunnelInner::Unknown => "unknown",
        }
    }
}
label_value!(TunnelInner);

/// What a crawler spoke to a vendor endpoint whose connection the meter captured
/// (transparent mode), from its first bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ClientProtocol {
    /// HTTP/1.x proxy requests (absolute-form and CONNECT).
    Http1,
    /// SOCKS5.
    Socks5,
    /// TLS to the vendor endpoint itself (an HTTPS proxy): metered as bytes only.
    Tls,
    /// Anything else, or nothing before the sniff timeout: metered as bytes only.
    Other,
}

impl ClientProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProtocol::Http1 => "http1",
            ClientProtocol::Socks5 => "socks5",
            ClientProtocol::Tls => "tls",
            ClientProtocol::Other => "other",
        }
    }
}
label_value!(ClientProtocol);

pub use crate::pods::PodIdentity;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub proxy_vendor: Name,
    pub source_namespace: Name,
    pub source_pod: Name,
    pub source_workload: Name,
}

impl PodLabels {
    pub fn new(vendor: &Name, pod: &PodIdentity) -> PodLabels {
        PodLabels {
            proxy_vendor: vendor.clone(),
            source_namespace: pod.namespace.clone(),
            source_pod: pod.pod.clone(),
            source_workload: pod.workload.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub proxy_vendor: Name,
    pub source_namespace: Name,
    pub source_pod: Name,
    pub source_workload: Name,
    pub protocol: Protocol,
    pub status_class: StatusClass,
}

impl RequestLabels {
    pub fn new(pod: PodLabels, protocol: Protocol, status_class: StatusClass) -> RequestLabels {
        RequestLabels {
            proxy_vendor: pod.proxy_vendor,
            source_namespace: pod.source_namespace,
            source_pod: pod.source_pod,
            source_workload: pod.source_workload,
            protocol,
            status_class,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransparentLabels {
    pub proxy_vendor: Name,
    pub client_protocol: ClientProtocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub proxy_vendor: Name,
    pub destination: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub proxy_vendor: Name,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub proxy_vendor: Name,
    pub reason: UpstreamErrorReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabels {
    pub proxy_vendor: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub proxy_vendor: Name,
    pub inner: TunnelInner,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: Name,
}
