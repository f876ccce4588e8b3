//! Every metric family the meter exports: name, type, labels and help, in one table.
//!
//! `docs/metrics.md` documents the same table for humans; a test in the meter crate scrapes a
//! live registry and checks that the two agree.

/// The Prometheus type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilySpec {
    /// The family name as registered and as it appears in `# TYPE` lines.
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl FamilySpec {
    /// The name of the sample carrying the value a query uses: `<name>_total` for counters,
    /// the name itself for gauges, `<name>_count` for histograms.
    pub fn series(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.to_owned(),
            Kind::Histogram => format!("{}_count", self.name),
        }
    }
}

/// Label names, shared by the label-set types and the checker's queries.
pub mod label {
    pub const PROXY_VENDOR: &str = "proxy_vendor";
    pub const SOURCE_NAMESPACE: &str = "source_namespace";
    pub const SOURCE_POD: &str = "source_pod";
    pub const SOURCE_WORKLOAD: &str = "source_workload";
    pub const CLIENT_PROTOCOL: &str = "client_protocol";
    pub const PROTOCOL: &str = "protocol";
    pub const STATUS_CLASS: &str = "status_class";
    pub const DESTINATION: &str = "destination";
    pub const REASON: &str = "reason";
    pub const INNER: &str = "inner";
    pub const VERSION: &str = "version";
    pub const CURRENCY: &str = "currency";
    pub const DIRECTION: &str = "direction";
    pub const REQUESTS: &str = "requests";
}

use label::*;

const POD: &[&str] = &[PROXY_VENDOR, SOURCE_NAMESPACE, SOURCE_POD, SOURCE_WORKLOAD];
const DEST: &[&str] = &[PROXY_VENDOR, DESTINATION];

pub const REQUESTS: FamilySpec = FamilySpec {
    name: "proxy_requests",
    kind: Kind::Counter,
    labels: &[
        PROXY_VENDOR,
        SOURCE_NAMESPACE,
        SOURCE_POD,
        SOURCE_WORKLOAD,
        PROTOCOL,
        STATUS_CLASS,
    ],
    help: "Requests and tunnels carried to a proxy vendor, counted when the response head (or tunnel verdict) arrives or the attempt fails",
};

pub const SENT_BYTES: FamilySpec = FamilySpec {
    name: "proxy_sent_bytes",
    kind: Kind::Counter,
    labels: POD,
    help: "Bytes written to the vendor socket: request lines, headers, bodies, CONNECT handshakes and tunnel payload",
};

pub const RECEIVED_BYTES: FamilySpec = FamilySpec {
    name: "proxy_received_bytes",
    kind: Kind::Counter,
    labels: POD,
    help: "Bytes read from the vendor socket, plus bytes left unread in its receive queue when the meter closed it",
};

pub const DESTINATION_REQUESTS: FamilySpec = FamilySpec {
    name: "proxy_destination_requests",
    kind: Kind::Counter,
    labels: DEST,
    help: "Requests and tunnels per vendor and destination (registrable domain; at most K per vendor, the rest in 'other')",
};

pub const DESTINATION_SENT_BYTES: FamilySpec = FamilySpec {
    name: "proxy_destination_sent_bytes",
    kind: Kind::Counter,
    labels: DEST,
    help: "Bytes written to the vendor socket, per vendor and destination",
};

pub const DESTINATION_RECEIVED_BYTES: FamilySpec = FamilySpec {
    name: "proxy_destination_received_bytes",
    kind: Kind::Counter,
    labels: DEST,
    help: "Bytes read from the vendor socket, per vendor and destination",
};

pub const REQUEST_DURATION: FamilySpec = FamilySpec {
    name: "proxy_request_duration_seconds",
    kind: Kind::Histogram,
    labels: &[PROXY_VENDOR, PROTOCOL],
    help: "Time from the client's request to the vendor's response head, or to the tunnel being established",
};

pub const UPSTREAM_ERRORS: FamilySpec = FamilySpec {
    name: "proxy_upstream_errors",
    kind: Kind::Counter,
    labels: &[PROXY_VENDOR, REASON],
    help: "Failures on the vendor leg, by reason",
};

pub const REJECTED_REQUESTS: FamilySpec = FamilySpec {
    name: "proxy_rejected_requests",
    kind: Kind::Counter,
    labels: &[REASON],
    help: "Client requests and connections refused by the meter before anything was forwarded, by reason",
};

pub const ACTIVE_TUNNELS: FamilySpec = FamilySpec {
    name: "proxy_active_tunnels",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR],
    help: "Tunnels open through each vendor: CONNECT over HTTP/1.1 and HTTP/2, and captured CONNECT and SOCKS5 tunnels",
};

pub const TUNNELS: FamilySpec = FamilySpec {
    name: "proxy_tunnels",
    kind: Kind::Counter,
    labels: &[PROXY_VENDOR, INNER],
    help: "Established tunnels by what the client spoke inside: the ALPN its TLS ClientHello offered, or not TLS",
};

pub const TRANSPARENT_CONNECTIONS: FamilySpec = FamilySpec {
    name: "proxy_transparent_connections",
    kind: Kind::Counter,
    labels: &[PROXY_VENDOR, CLIENT_PROTOCOL],
    help: "Connections to vendor endpoints captured by the transparent listener, by what the crawler spoke (proxy_vendor 'unknown': other destinations, when metered)",
};

pub const DESTINATION_LABELS: FamilySpec = FamilySpec {
    name: "proxy_destination_labels",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR],
    help: "Distinct destination label values in use per vendor; at the limit, new destinations count as 'other'",
};

pub const DESTINATION_LABEL_LIMIT: FamilySpec = FamilySpec {
    name: "proxy_destination_label_limit",
    kind: Kind::Gauge,
    labels: &[],
    help: "The configured maximum of destination label values per vendor (0: destination families off)",
};

pub const OPEN_CONNECTIONS: FamilySpec = FamilySpec {
    name: "proxy_open_connections",
    kind: Kind::Gauge,
    labels: &[],
    help: "Client connections open to the meter",
};

pub const BUILD_INFO: FamilySpec = FamilySpec {
    name: "proxy_build_info",
    kind: Kind::Gauge,
    labels: &[VERSION],
    help: "Always 1; the version of the meter that exports these series",
};

/// The prices of `vendors[].pricing`, exported as facts so that one file holds a price: recording
/// rules multiply them with the counters, `report` reads them back.
pub const PRICE_PER_BYTE: FamilySpec = FamilySpec {
    name: "proxy_vendor_price_per_byte",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR, CURRENCY, DIRECTION],
    help: "Price of one billed byte beyond the included traffic, per direction of the vendor leg (0: that direction is not billed); from the configuration",
};

pub const PRICE_PER_REQUEST: FamilySpec = FamilySpec {
    name: "proxy_vendor_price_per_request",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR, CURRENCY, label::REQUESTS],
    help: "Price of one billed request; requests=\"successful\": only 2xx/3xx answers are billed; from the configuration",
};

pub const MONTHLY_FEE: FamilySpec = FamilySpec {
    name: "proxy_vendor_monthly_fee",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR, CURRENCY],
    help: "Fee charged once per billing cycle; from the configuration",
};

pub const INCLUDED_BYTES: FamilySpec = FamilySpec {
    name: "proxy_vendor_included_bytes",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR],
    help: "Billed bytes per cycle the monthly fee includes; from the configuration",
};

pub const MONTHLY_BUDGET: FamilySpec = FamilySpec {
    name: "proxy_vendor_monthly_budget",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR, CURRENCY],
    help: "The spend per billing cycle budget alerts compare with; from the configuration",
};

pub const BILLING_CYCLE_START_DAY: FamilySpec = FamilySpec {
    name: "proxy_vendor_billing_cycle_start_day",
    kind: Kind::Gauge,
    labels: &[PROXY_VENDOR],
    help: "Day of the month (UTC) the vendor's billing cycle starts; from the configuration",
};

/// Every family, in the order of the reference documentation.
pub const ALL: &[FamilySpec] = &[
    REQUESTS,
    SENT_BYTES,
    RECEIVED_BYTES,
    DESTINATION_REQUESTS,
    DESTINATION_SENT_BYTES,
    DESTINATION_RECEIVED_BYTES,
    REQUEST_DURATION,
    UPSTREAM_ERRORS,
    REJECTED_REQUESTS,
    ACTIVE_TUNNELS,
    TUNNELS,
    TRANSPARENT_CONNECTIONS,
    DESTINATION_LABELS,
    DESTINATION_LABEL_LIMIT,
    OPEN_CONNECTIONS,
    BUILD_INFO,
    PRICE_PER_BYTE,
    PRICE_PER_REQUEST,
    MONTHLY_FEE,
    INCLUDED_BYTES,
    MONTHLY_BUDGET,
    BILLING_CYCLE_START_DAY,
];
