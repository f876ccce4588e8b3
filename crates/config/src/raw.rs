//! The configuration file as written: serde structs with the documented defaults.
//!
//! Values that need parsing (addresses, durations, CIDR blocks, URLs) are kept as strings here
//! and converted in [`crate::validate`], so that one pass can report every bad value with its
//! key path instead of stopping at the first. `docs/configuration.md` documents every key; a
//! test checks that each key of [`RawConfig`] appears there.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Client-facing proxy listeners.
    pub listeners: Vec<RawListener>,
    pub transparent: RawTransparent,
    pub admin: RawAdmin,
    pub vendors: Vec<RawVendor>,
    pub routing: RawRouting,
    pub clients: RawClients,
    pub identity: RawIdentity,
    pub metrics: RawMetrics,
    pub security: RawSecurity,
    pub limits: RawLimits,
    pub shutdown: RawShutdown,
    pub access_log: RawAccessLog,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listeners: vec![RawListener::default()],
            transparent: RawTransparent::default(),
            admin: RawAdmin::default(),
            vendors: Vec::new(),
            routing: RawRouting::default(),
            clients: RawClients::default(),
            identity: RawIdentity::default(),
            metrics: RawMetrics::default(),
            security: RawSecurity::default(),
            limits: RawLimits::default(),
            shutdown: RawShutdown::default(),
            access_log: RawAccessLog::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawListener {
    /// `ip:port` to accept crawler connections on (HTTP/1.1 and h2c on the same port).
    pub address: String,
    /// Dedicates the listener to one vendor: every request on it goes there.
    pub vendor: Option<String>,
}

impl Default for RawListener {
    fn default() -> Self {
        RawListener {
            address: "127.0.0.1:3128".into(),
            vendor: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawTransparent {
    /// Loopback `ip:port` addresses receiving connections that iptables redirected to the meter
    /// (`REDIRECT`); empty turns transparent mode off.
    pub listeners: Vec<String>,
    /// `SO_MARK` set on the meter's own outbound sockets so that the redirect rules can exclude
    /// them (needs `CAP_NET_ADMIN`); 0 sets none (exclude the meter's uid instead).
    pub outbound_mark: u32,
    /// Meter connections to destinations that are no vendor endpoint, under
    /// `proxy_vendor="unknown"` (bytes only); off: they pass through uncounted.
    pub meter_unmatched: bool,
    /// How often vendor endpoint host names are resolved again.
    pub resolve_interval: String,
}

impl Default for RawTransparent {
    fn default() -> Self {
        RawTransparent {
            listeners: Vec::new(),
            outbound_mark: 0,
            meter_unmatched: false,
            resolve_interval: "30s".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// `ip:port` of `/metrics`, `/healthz` and `/readyz`.
    pub address: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawVendor {
    /// The `proxy_vendor` label value and the name clients select it by.
    pub name: String,
    /// `http_proxy` (an upstream HTTP proxy) or `direct` (no proxy; for baselines and tests).
    pub kind: Option<String>,
    /// `http://host:port` of the vendor's proxy endpoint (`http_proxy` only).
    pub url: Option<String>,
    /// Basic-auth username toward the vendor.
    pub username: Option<String>,
    /// Environment variable holding the vendor password.
    pub password_env: Option<String>,
    /// File holding the vendor password (a trailing newline is ignored).
    pub password_file: Option<String>,
    /// Send the client's own `Proxy-Authorization` to this vendor instead of the configured
    /// credentials.
    pub forward_client_credentials: bool,
    /// Idle keep-alive connections kept to this vendor for plain-HTTP requests.
    pub max_idle_connections: Option<usize>,
    /// Further addresses crawlers reach this vendor at, for transparent mode: `host:port`,
    /// `ip:port` or `cidr:port` (`203.0.113.0/24:8000`, `[2001:db8::/32]:8000`). The `url`
    /// is always one.
    pub endpoints: Vec<String>,
    /// What the vendor charges (optional): docs/configuration.md, "Prices".
    pub pricing: Option<RawPricing>,
}

/// A vendor's prices as written. Amounts are in `currency`; GB means `unit`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPricing {
    /// ISO 4217 code (`USD`, `EUR`): required.
    pub currency: Option<String>,
    /// Price per GB billed beyond `included_gb`.
    pub per_gb: Option<f64>,
    /// What a GB is: `GB` (10^9 bytes, the default) or `GiB` (2^30 bytes).
    pub unit: Option<String>,
    /// `sent_and_received` (the default) or `received`.
    pub billed_bytes: Option<String>,
    /// Price per 1,000 billed requests.
    pub per_1k_requests: Option<f64>,
    /// `all` (the default) or `successful` (answered 2xx/3xx).
    pub billed_requests: Option<String>,
    /// Charged once per billing cycle.
    pub monthly_fee: Option<f64>,
    /// GB per cycle the monthly fee includes.
    pub included_gb: Option<f64>,
    /// Day of the month (1-28) a billing cycle starts, 00:00 UTC; default 1.
    pub cycle_start_day: Option<u8>,
    /// The spend per cycle the budget alerts compare with.
    pub monthly_budget: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouting {
    /// Request header naming the vendor (removed before forwarding); empty turns it off.
    pub vendor_header: String,
    /// Client `Proxy-Authorization` username → vendor name.
    pub usernames: BTreeMap<String, String>,
    /// Vendor for requests that name none. Exclusive with `weights`.
    pub default_vendor: Option<String>,
    /// Vendor name → weight, for requests that name none. Exclusive with `default_vendor`.
    pub weights: BTreeMap<String, u32>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            vendor_header: "X-Proxy-Vendor".into(),
            usernames: BTreeMap::new(),
            default_vendor: None,
            weights: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawClients {
    /// Environment variable holding the password clients must send (Basic, any username).
    pub password_env: Option<String>,
    /// File holding that password.
    pub password_file: Option<String>,
    /// CIDR blocks clients may connect from; empty means any.
    pub allowed_sources: Vec<String>,
    /// Accept client blocks that contain public addresses without a client password. Off, a
    /// listener reachable from outside loopback needs a password or private source blocks only:
    /// anything else is an open proxy on the Internet.
    pub insecure_allow_public_sources: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    /// Where `source_namespace` / `source_pod` / `source_workload` come from: `environment`
    /// (the Downward API variables below, for a sidecar), `kubernetes` (the pod whose IP the
    /// connection comes from, through a pod watch, for a shared meter), `proxy_username`
    /// (`namespace/pod` or `pod` in the client's Proxy-Authorization username) or `none`.
    pub from: String,
    /// Variable holding the pod name when `from: environment`.
    pub pod_env: String,
    /// Variable holding the namespace when `from: environment`.
    pub namespace_env: String,
    /// Variable holding the owning workload's name when `from: environment`.
    pub workload_env: String,
    /// Namespace for `proxy_username` identities that carry none.
    pub default_namespace: String,
    pub kubernetes: RawKubernetesIdentity,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            from: "environment".into(),
            pod_env: "POD_NAME".into(),
            namespace_env: "POD_NAMESPACE".into(),
            workload_env: "POD_WORKLOAD".into(),
            default_namespace: "unknown".into(),
            kubernetes: RawKubernetesIdentity::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawKubernetesIdentity {
    /// Variable holding this node's name: only pods on this node are watched (a per-node
    /// meter). Empty: every pod in the cluster (a gateway).
    pub node_env: String,
    /// Most pods indexed; later ones resolve to `unknown` until others go away (memory bound).
    pub max_pods: usize,
}

impl Default for RawKubernetesIdentity {
    fn default() -> Self {
        RawKubernetesIdentity {
            node_env: String::new(),
            max_pods: 20_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// `registrable_domain` (eTLD+1), `host` (full host name) or `off` (no destination families).
    pub destination_label: String,
    /// Distinct destinations per vendor before the rest fold into `other`.
    pub max_destinations_per_vendor: usize,
    /// Distinct (namespace, pod) identities before the rest fold into `other`.
    pub max_pods: usize,
    /// A pod no request has used for this long stops being exported (its series are removed and
    /// its place under `max_pods` freed); `0s` keeps every pod. Longer than the scrape interval.
    pub pod_series_ttl: String,
    /// Count requests and bytes. Off only to measure what metering costs (benchmarks).
    pub metering: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            destination_label: "registrable_domain".into(),
            max_destinations_per_vendor: 100,
            max_pods: 1000,
            pod_series_ttl: "10m".into(),
            metering: true,
        }
    }
}

/// A port (`443`) or an inclusive range (`"1024-65535"`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawPorts {
    One(u32),
    Range(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecurity {
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<RawPorts>,
    /// Ports absolute-form `http://` requests may reach.
    pub http_ports: Vec<RawPorts>,
    /// CIDR blocks exempt from the refusal of loopback, private, link-local and other
    /// non-public destination addresses.
    pub allowed_private_destinations: Vec<String>,
}

impl Default for RawSecurity {
    fn default() -> Self {
        RawSecurity {
            connect_ports: vec![RawPorts::One(443)],
            http_ports: vec![RawPorts::One(80), RawPorts::Range("1024-65535".into())],
            allowed_private_destinations: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Client connections served at once. At the bound the longest-idle connection is closed
    /// to make room; only when none is idle is a new one answered 503.
    pub max_connections: usize,
    /// Connections toward vendors (every plain-HTTP request, tunnel and HTTP/2 stream needs one,
    /// pooled ones included). Unset: what the file-descriptor limit leaves after the client
    /// connections.
    pub max_vendor_connections: Option<usize>,
    /// Largest request head (request line and headers) in bytes; HTTP/1.1 answers 431 above it.
    pub max_header_bytes: usize,
    /// Most request header fields (HTTP/1.1).
    pub max_headers: usize,
    /// Time to receive a request head, counted from when the connection waits for one (so also
    /// the keep-alive idle timeout of HTTP/1.1 client connections).
    pub header_read_timeout: String,
    /// A client connection with no bytes read or written for this long is closed.
    pub client_idle_timeout: String,
    /// Time to establish the TCP connection to a vendor (or destination, for `direct`).
    pub connect_timeout: String,
    /// Time from sending a request (or CONNECT) to the vendor's response head.
    pub response_timeout: String,
    /// A tunnel with no bytes in either direction for this long is closed.
    pub tunnel_idle_timeout: String,
    /// How long a tunnel's first client bytes are awaited to read SNI and ALPN; the tunnel
    /// carries on unsniffed afterwards.
    pub sniff_timeout: String,
    /// Concurrent streams per HTTP/2 client connection.
    pub h2_max_concurrent_streams: u32,
    /// Idle keep-alive connections kept per vendor, unless the vendor sets its own.
    pub vendor_max_idle_connections: usize,
    /// Idle vendor connections older than this are closed instead of reused.
    pub vendor_idle_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 10_000,
            max_vendor_connections: None,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: "30s".into(),
            client_idle_timeout: "120s".into(),
            connect_timeout: "10s".into(),
            response_timeout: "60s".into(),
            tunnel_idle_timeout: "300s".into(),
            sniff_timeout: "2s".into(),
            h2_max_concurrent_streams: 100,
            vendor_max_idle_connections: 64,
            vendor_idle_timeout: "60s".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// After SIGTERM: how long in-flight requests and tunnels may take to finish.
    pub grace_period: String,
    /// After draining: how long `/metrics` stays up for a last scrape before exit.
    pub final_scrape_delay: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace_period: "30s".into(),
            final_scrape_delay: "0s".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccessLog {
    /// One JSON line per request and tunnel on standard output.
    pub enabled: bool,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog { enabled: true }
    }
}
