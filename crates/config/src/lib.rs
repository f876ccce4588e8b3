//! The meter's configuration: one YAML file, environment overrides, and a validation pass that
//! reports every bad setting at once with its key path (`vendors[1].url: ...`).
//!
//! Loading runs in three steps: the YAML becomes a JSON tree; variables named
//! `PROXY_TELEMETRY__<KEY>__<KEY>...` replace values in that tree (so a Helm chart or `kubectl set
//! env` can change any setting); the tree is read into [`raw::RawConfig`] and validated into
//! [`MeterConfig`], whose fields are typed (`SocketAddr`, `Duration`, CIDR blocks) and whose
//! vendor references are indices that cannot dangle. Secrets (vendor and client passwords) are
//! read from the environment or files during validation and are only ever held as
//! [`secrecy::SecretString`], whose `Debug` is redacted.

pub mod env;
pub mod pricing;
pub mod raw;
mod validate;

pub use pricing::Pricing;

use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

pub use pt_sniff::Authority;
pub use pt_sniff::destination::DestinationKey;
pub use pt_sniff::net::Cidr;

/// The environment the configuration is read against (a snapshot, so tests can supply their own).
pub type Env = HashMap<String, String>;

/// An environment from name/value pairs, for tests.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A validated meter configuration.
#[derive(Clone, Debug)]
pub struct MeterConfig {
    pub listeners: Vec<ListenerConfig>,
    pub transparent: TransparentConfig,
    pub admin_address: SocketAddr,
    pub vendors: Vec<VendorConfig>,
    pub routing: RoutingConfig,
    pub clients: ClientsConfig,
    pub identity: IdentityConfig,
    pub metrics: MetricsConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub access_log: bool,
}

/// An index into [`MeterConfig::vendors`].
pub type VendorIndex = usize;

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// The vendor this listener is dedicated to.
    pub vendor: Option<VendorIndex>,
}

/// Transparent mode: connections redirected to the meter by iptables.
#[derive(Clone, Debug)]
pub struct TransparentConfig {
    /// Empty: transparent mode is off.
    pub listeners: Vec<SocketAddr>,
    /// `SO_MARK` for the meter's own outbound sockets.
    pub outbound_mark: Option<u32>,
    pub meter_unmatched: bool,
    pub resolve_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct VendorConfig {
    pub name: String,
    pub upstream: Upstream,
    pub forward_client_credentials: bool,
    pub max_idle_connections: usize,
    /// Where crawlers reach this vendor, for transparent mode (the `url` first).
    pub endpoints: Vec<Endpoint>,
    pub pricing: Option<Pricing>,
}

/// An address at which crawlers reach a vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A host name or IP and a port; names are resolved, and resolved again periodically.
    Host(Authority),
    /// Any address in a block, at one port.
    Net { net: Cidr, port: u16 },
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `host:port`, `ip:port`, `[v6]:port`, `cidr:port` or `[v6cidr]:port`.
    fn from_str(text: &str) -> Result<Endpoint, String> {
        let (address, port) = text
            .rsplit_once(':')
            .filter(|(a, _)| !a.is_empty())
            .ok_or_else(|| format!("'{text}' is not host:port or cidr:port"))?;
        let port = pt_sniff::authority::parse_port(port)
            .map_err(|_| format!("'{text}' has no valid port"))?;
        if address.contains('/') {
            let block = address
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(address);
            let net = block
                .parse::<Cidr>()
                .map_err(|_| format!("'{block}' is not a CIDR block"))?;
            return Ok(Endpoint::Net { net, port });
        }
        pt_sniff::authority::parse_host(address)
            .map(|host| Endpoint::Host(Authority { host, port }))
            .map_err(|e| format!("'{text}': {e}"))
    }
}

/// Where a vendor's traffic goes.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// An HTTP proxy: CONNECT for tunnels, absolute-form for plain HTTP.
    HttpProxy {
        address: Authority,
        credentials: Option<Credentials>,
    },
    /// No proxy: the meter resolves and dials the destination itself.
    Direct,
}

/// Basic credentials toward a vendor. `Debug` shows the username only.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    /// `Basic <base64(username:password)>`, computed once.
    proxy_authorization: SecretString,
}

impl Credentials {
    pub fn new(username: &str, password: &SecretString) -> Credentials {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose_secret()));
        Credentials {
            username: username.to_owned(),
            proxy_authorization: SecretString::from(format!("Basic {token}")),
        }
    }

    /// The `Proxy-Authorization` value. Callers must put it only on the vendor leg.
    pub fn proxy_authorization(&self) -> &str {
        self.proxy_authorization.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Lower-case header name, or `None` when vendor selection by header is off.
    pub vendor_header: Option<String>,
    pub usernames: HashMap<String, VendorIndex>,
    pub fallback: Fallback,
}

/// The vendor for requests that name none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    None,
    Vendor(VendorIndex),
    Weighted(Vec<(VendorIndex, u32)>),
}

#[derive(Clone, Debug)]
pub struct ClientsConfig {
    /// The password clients must present; `None` when client authentication is off.
    pub password: Option<SecretString>,
    pub allowed_sources: Vec<Cidr>,
    pub insecure_allow_public_sources: bool,
}

/// Where the `source_namespace` / `source_pod` / `source_workload` labels come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityConfig {
    /// The same identity for every request (a sidecar's own pod).
    Fixed {
        namespace: String,
        workload: String,
        pod: String,
    },
    /// The client's Proxy-Authorization username, `namespace/pod` or `pod`.
    ProxyUsername { default_namespace: String },
    /// The pod whose IP the connection comes from, through a Kubernetes pod watch.
    Kubernetes {
        /// Watch only the pods of this node.
        node: Option<String>,
        max_pods: usize,
    },
}

#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// `None` turns the destination families off.
    pub destination_key: Option<DestinationKey>,
    pub max_destinations_per_vendor: usize,
    pub max_pods: usize,
    /// `None`: pods are exported forever.
    pub pod_series_ttl: Option<Duration>,
    /// Off: no label resolution, no counter updates, no access log (benchmarks only).
    pub metering: bool,
}

/// A set of ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(pub Vec<RangeInclusive<u16>>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }
}

#[derive(Clone, Debug)]
pub struct SecurityConfig {
    pub connect_ports: PortSet,
    pub http_ports: PortSet,
    pub allowed_private_destinations: Vec<Cidr>,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_connections: usize,
    /// `None`: derived from the file-descriptor limit at start.
    pub max_vendor_connections: Option<usize>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub sniff_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub vendor_idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct ShutdownConfig {
    pub grace_period: Duration,
    pub final_scrape_delay: Duration,
}

/// One bad setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `vendors[1].url`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every bad setting found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(path: &str, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            path: path.to_owned(),
            message: message.into(),
        }])
    }
}

/// Reads, overrides and validates a configuration file.
pub fn load_file(path: &Path, env: &Env) -> Result<MeterConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    load_str(&text, env)
}

/// Parses, overrides and validates configuration text.
pub fn load_str(text: &str, env: &Env) -> Result<MeterConfig, ConfigErrors> {
    let raw = parse_raw(text, env)?;
    validate::validate(&raw, env)
}

/// Parses configuration text and applies environment overrides, without validating.
pub fn parse_raw(text: &str, env: &Env) -> Result<raw::RawConfig, ConfigErrors> {
    let mut tree: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| ConfigErrors::one("", format!("invalid YAML: {e}")))?
    };
    if tree.is_null() {
        tree = serde_json::Value::Object(Default::default());
    }
    env::apply_overrides(&mut tree, env)?;
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(&path, e.into_inner().to_string())
    })
}

/// The fully commented example configuration shipped with the project.
pub const EXAMPLE: &str = include_str!("../../../examples/meter.yaml");
