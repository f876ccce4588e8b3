//! [`RawConfig`] → [`MeterConfig`], collecting every error with its key path.

use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::raw::*;
use crate::*;

/// hyper's HTTP/1 read buffer cannot be smaller than 8 KiB (its `max_buf_size` minimum).
const MIN_HEADER_BYTES: usize = 8 * 1024;

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records the error of `result` under `path` and yields its value, if any.
    fn check<T, E: std::fmt::Display>(&mut self, path: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }
}

pub(crate) fn validate(raw: &RawConfig, env: &Env) -> Result<MeterConfig, ConfigErrors> {
    let mut errors = Errors::default();
    let vendors = vendors(
        &raw.vendors,
        raw.limits.vendor_max_idle_connections,
        env,
        &mut errors,
    );
    let names: HashMap<&str, VendorIndex> = raw
        .vendors
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let vendor_ref = |errors: &mut Errors, path: &str, name: &str| -> Option<VendorIndex> {
        let found = names.get(name).copied();
        if found.is_none() {
            errors.push(path, format!("no vendor is named '{name}'"));
        }
        found
    };

    let clients = clients(&raw.clients, env, &mut errors);
    let mut listeners = Vec::new();
    let mut seen = HashSet::new();
    if raw.listeners.is_empty() && raw.transparent.listeners.is_empty() {
        errors.push(
            "listeners",
            "at least one listener (or transparent listener) is required",
        );
    }
    for (i, l) in raw.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let address = errors.check(&format!("{path}.address"), parse_addr(&l.address));
        let vendor = l
            .vendor
            .as_deref()
            .and_then(|v| vendor_ref(&mut errors, &format!("{path}.vendor"), v));
        if let Some(address) = address {
            // Port 0 asks the system for a free port, so several such listeners never clash.
            if address.port() != 0 && !seen.insert(address) {
                errors.push(format!("{path}.address"), "address is used twice");
            }
            let public_sources = clients.allowed_sources.is_empty()
                || clients.allowed_sources.iter().any(has_public_addresses);
            let open = clients.password.is_none()
                && public_sources
                && !clients.insecure_allow_public_sources;
            if !address.ip().is_loopback() && open {
                errors.push(
                    format!("{path}.address"),
                    "a listener on a non-loopback address needs clients.password_env or \
                     clients.password_file, or clients.allowed_sources with private blocks \
                     only (no open proxy; clients.insecure_allow_public_sources overrides)",
                );
            }
            listeners.push(ListenerConfig { address, vendor });
        }
    }
    let admin_address = errors.check("admin.address", parse_addr(&raw.admin.address));
    let transparent = transparent(&raw.transparent, &mut seen, &mut errors);

    let routing = routing(&raw.routing, &mut errors, &vendor_ref);
    let identity = identity(&raw.identity, env, &mut errors);
    let metrics = metrics(&raw.metrics, &mut errors);
    let security = security(&raw.security, &mut errors);
    let limits = limits(&raw.limits, &mut errors);
    let shutdown = ShutdownConfig {
        grace_period: duration(
            &mut errors,
            "shutdown.grace_period",
            &raw.shutdown.grace_period,
            true,
        ),
        final_scrape_delay: duration(
            &mut errors,
            "shutdown.final_scrape_delay",
            &raw.shutdown.final_scrape_delay,
            true,
        ),
    };

    match (errors.0.is_empty(), admin_address) {
        (true, Some(admin_address)) => Ok(MeterConfig {
            listeners,
            transparent,
            admin_address,
            vendors,
            routing,
            clients,
            identity,
            metrics,
            security,
            limits,
            shutdown,
            access_log: raw.access_log.enabled,
        }),
        _ => Err(ConfigErrors(errors.0)),
    }
}

fn transparent(
    raw: &RawTransparent,
    seen: &mut HashSet<SocketAddr>,
    errors: &mut Errors,
) -> TransparentConfig {
    let mut listeners = Vec::new();
    for (i, text) in raw.listeners.iter().enumerate() {
        let path = format!("transparent.listeners[{i}]");
        let Some(address) = errors.check(&path, parse_addr(text)) else {
            continue;
        };
        if !address.ip().is_loopback() {
            // iptables REDIRECT in the OUTPUT chain delivers to 127.0.0.1 or ::1; a listener
            // elsewhere would only be reachable by other hosts, which have nothing to redirect.
            errors.push(&path, "must be a loopback address (127.0.0.1 or [::1])");
        } else if address.port() != 0 && !seen.insert(address) {
            errors.push(&path, "address is used twice");
        }
        listeners.push(address);
    }
    TransparentConfig {
        listeners,
        outbound_mark: (raw.outbound_mark != 0).then_some(raw.outbound_mark),
        meter_unmatched: raw.meter_unmatched,
        resolve_interval: duration(
            errors,
            "transparent.resolve_interval",
            &raw.resolve_interval,
            false,
        ),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an ip:port address"))
}

fn vendors(
    raw: &[RawVendor],
    default_max_idle: usize,
    env: &Env,
    errors: &mut Errors,
) -> Vec<VendorConfig> {
    if raw.is_empty() {
        errors.push("vendors", "at least one vendor is required");
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let path = format!("vendors[{i}]");
        if !valid_vendor_name(&v.name) {
            errors.push(
                format!("{path}.name"),
                "must be 1 to 63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit",
            );
        } else if !names.insert(v.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("'{}' is used twice", v.name),
            );
        }
        let password = secret(env, errors, &path, &v.password_env, &v.password_file);
        let upstream = match v.kind.as_deref().unwrap_or("http_proxy") {
            "http_proxy" => {
                let url = v.url.as_deref().unwrap_or_default();
                let target = errors.check(&format!("{path}.url"), parse_proxy_url(url));
                let credentials = match (&v.username, password) {
                    (Some(user), Some(password)) => {
                        if user.is_empty()
                            || user.contains(':')
                            || user.chars().any(char::is_control)
                        {
                            errors.push(
                                format!("{path}.username"),
                                "must be non-empty, without ':' or control characters",
                            );
                        }
                        Some(Credentials::new(user, &password))
                    }
                    (Some(_), None) if v.password_env.is_none() && v.password_file.is_none() => {
                        errors.push(
                            format!("{path}.username"),
                            "a username needs password_env or password_file",
                        );
                        None
                    }
                    (None, Some(_)) => {
                        errors.push(format!("{path}.username"), "a password needs a username");
                        None
                    }
                    // A configured password source that failed has been reported already.
                    (Some(_), None) | (None, None) => None,
                };
                target.map(|address| Upstream::HttpProxy {
                    address,
                    credentials,
                })
            }
            "direct" => {
                for (key, set) in [
                    ("url", v.url.is_some()),
                    ("username", v.username.is_some()),
                    ("password_env", v.password_env.is_some()),
                    ("password_file", v.password_file.is_some()),
                    ("forward_client_credentials", v.forward_client_credentials),
                ] {
                    if set {
                        errors.push(format!("{path}.{key}"), "not used by a direct vendor");
                    }
                }
                Some(Upstream::Direct)
            }
            other => {
                errors.push(
                    format!("{path}.kind"),
                    format!("'{other}' is not one of http_proxy, direct"),
                );
                None
            }
        };
        let mut endpoints: Vec<Endpoint> = match &upstream {
            Some(Upstream::HttpProxy { address, .. }) => vec![Endpoint::Host(address.clone())],
            _ => Vec::new(),
        };
        for (j, text) in v.endpoints.iter().enumerate() {
            let path = format!("{path}.endpoints[{j}]");
            if matches!(upstream, Some(Upstream::Direct)) {
                errors.push(path, "a direct vendor has no endpoints");
            } else if let Some(endpoint) = errors.check(&path, text.parse::<Endpoint>()) {
                endpoints.push(endpoint);
            }
        }
        let pricing = v
            .pricing
            .as_ref()
            .and_then(|raw| pricing(raw, &format!("{path}.pricing"), errors));
        if let Some(upstream) = upstream {
            out.push(VendorConfig {
                name: v.name.clone(),
                upstream,
                forward_client_credentials: v.forward_client_credentials,
                max_idle_connections: v.max_idle_connections.unwrap_or(default_max_idle),
                endpoints,
                pricing,
            });
        }
    }
    out
}

fn pricing(raw: &RawPricing, path: &str, errors: &mut Errors) -> Option<Pricing> {
    let before = errors.0.len();
    let currency = match raw.currency.as_deref() {
        Some(code) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) => code,
        Some(code) => {
            errors.push(
                format!("{path}.currency"),
                format!("'{code}' is not an ISO 4217 code such as USD or EUR"),
            );
            ""
        }
        None => {
            errors.push(
                format!("{path}.currency"),
                "required: the currency of every amount of this vendor (USD, EUR, ...)",
            );
            ""
        }
    };
    let mut amount = |key: &str, value: Option<f64>| -> f64 {
        match value {
            Some(v) if v.is_finite() && v >= 0.0 => v,
            Some(v) => {
                errors.push(
                    format!("{path}.{key}"),
                    format!("{v} is not an amount (a number, 0 or more)"),
                );
                0.0
            }
            None => 0.0,
        }
    };
    let per_gb = amount("per_gb", raw.per_gb);
    let per_1k_requests = amount("per_1k_requests", raw.per_1k_requests);
    let monthly_fee = amount("monthly_fee", raw.monthly_fee);
    let included_gb = amount("included_gb", raw.included_gb);
    let monthly_budget = raw
        .monthly_budget
        .map(|b| amount("monthly_budget", Some(b)));
    if monthly_budget == Some(0.0) {
        errors.push(
            format!("{path}.monthly_budget"),
            "must be more than 0 (leave it out for no budget)",
        );
    }
    if raw.per_gb.is_none() && raw.per_1k_requests.is_none() && raw.monthly_fee.is_none() {
        errors.push(
            path,
            "prices nothing: set per_gb, per_1k_requests or monthly_fee",
        );
    }
    if raw.included_gb.is_some() && raw.per_gb.is_none() {
        errors.push(
            format!("{path}.included_gb"),
            "included traffic needs per_gb, the price of the traffic beyond it",
        );
    }
    let unit = match raw.unit.as_deref().unwrap_or("GB") {
        "GB" => pricing::GB,
        "GiB" => pricing::GIB,
        other => {
            errors.push(
                format!("{path}.unit"),
                format!("'{other}' is not GB (10^9 bytes) or GiB (2^30 bytes)"),
            );
            pricing::GB
        }
    };
    let bills_sent_bytes = match raw.billed_bytes.as_deref().unwrap_or("sent_and_received") {
        "sent_and_received" => true,
        "received" => false,
        other => {
            errors.push(
                format!("{path}.billed_bytes"),
                format!("'{other}' is not sent_and_received or received"),
            );
            true
        }
    };
    let successful_requests_only = match raw.billed_requests.as_deref().unwrap_or("all") {
        "all" => false,
        "successful" => true,
        other => {
            errors.push(
                format!("{path}.billed_requests"),
                format!("'{other}' is not all or successful"),
            );
            false
        }
    };
    let cycle_start_day = raw.cycle_start_day.unwrap_or(1);
    if !(1..=28).contains(&cycle_start_day) {
        errors.push(
            format!("{path}.cycle_start_day"),
            "must be 1 to 28, a day every month has",
        );
    }
    (errors.0.len() == before).then(|| Pricing {
        currency: currency.to_owned(),
        byte_price: per_gb / unit as f64,
        bills_sent_bytes,
        request_price: per_1k_requests / 1000.0,
        successful_requests_only,
        monthly_fee,
        // Rounded to the byte: 0.1 GB is 100,000,000 bytes, not one less.
        included_bytes: (included_gb * unit as f64).round() as u64,
        cycle_start_day,
        monthly_budget,
    })
}

/// Vendor names become label values and header values: keep them plain.
fn valid_vendor_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// `http://host[:port][/]`, without credentials; the port defaults to 80.
fn parse_proxy_url(url: &str) -> Result<Authority, String> {
    if url.is_empty() {
        return Err("an http_proxy vendor needs a url such as http://proxy.example:8080".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// proxy URLs are supported")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(
            "credentials in the url are not allowed; use username with password_env or password_file"
                .into(),
        );
    }
    if authority.contains(['/', '?', '#']) {
        return Err("the url must not have a path, query or fragment".into());
    }
    let authority_with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    pt_sniff::authority::parse_authority(&authority_with_port)
        .map_err(|e| format!("bad proxy address: {e}"))
}

/// Reads a secret from `<path>.password_env` or `<path>.password_file`.
fn secret(
    env: &Env,
    errors: &mut Errors,
    path: &str,
    var: &Option<String>,
    file: &Option<String>,
) -> Option<SecretString> {
    match (var, file) {
        (Some(_), Some(_)) => {
            errors.push(
                format!("{path}.password_env"),
                "set password_env or password_file, not both",
            );
            None
        }
        (Some(var), None) => match env.get(var) {
            Some(value) if !value.is_empty() => Some(SecretString::from(value.clone())),
            _ => {
                errors.push(
                    format!("{path}.password_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(text) => {
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    errors.push(format!("{path}.password_file"), format!("{file} is empty"));
                    None
                } else {
                    Some(SecretString::from(value.to_owned()))
                }
            }
            // The error names the file, never its content.
            Err(e) => {
                errors.push(
                    format!("{path}.password_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn clients(raw: &RawClients, env: &Env, errors: &mut Errors) -> ClientsConfig {
    let password = secret(
        env,
        errors,
        "clients",
        &raw.password_env,
        &raw.password_file,
    );
    let allowed_sources = raw
        .allowed_sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            errors.check(&format!("clients.allowed_sources[{i}]"), s.parse::<Cidr>())
        })
        .collect();
    ClientsConfig {
        password,
        allowed_sources,
        insecure_allow_public_sources: raw.insecure_allow_public_sources,
    }
}

/// Address blocks with no public address in them: private, shared (CGNAT), loopback and
/// link-local space. Client sources within these cannot make the meter an open proxy.
const NON_PUBLIC_BLOCKS: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// Whether `block` holds addresses reachable from the Internet.
fn has_public_addresses(block: &Cidr) -> bool {
    !NON_PUBLIC_BLOCKS
        .iter()
        .filter_map(|b| b.parse::<Cidr>().ok())
        .any(|private| block.is_within(&private))
}

fn routing(
    raw: &RawRouting,
    errors: &mut Errors,
    vendor_ref: &dyn Fn(&mut Errors, &str, &str) -> Option<VendorIndex>,
) -> RoutingConfig {
    let vendor_header = if raw.vendor_header.is_empty() {
        None
    } else if raw
        .vendor_header
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Some(raw.vendor_header.to_ascii_lowercase())
    } else {
        errors.push(
            "routing.vendor_header",
            "must be a header name of letters, digits and '-'",
        );
        None
    };
    let usernames = raw
        .usernames
        .iter()
        .filter_map(|(user, vendor)| {
            vendor_ref(errors, &format!("routing.usernames.{user}"), vendor)
                .map(|i| (user.clone(), i))
        })
        .collect();
    let fallback = match (&raw.default_vendor, raw.weights.is_empty()) {
        (Some(_), false) => {
            errors.push("routing.weights", "set default_vendor or weights, not both");
            Fallback::None
        }
        (Some(name), true) => vendor_ref(errors, "routing.default_vendor", name)
            .map(Fallback::Vendor)
            .unwrap_or(Fallback::None),
        (None, false) => {
            let mut weighted = Vec::new();
            for (name, &weight) in &raw.weights {
                let path = format!("routing.weights.{name}");
                if weight == 0 {
                    errors.push(&path, "weights must be positive");
                }
                if let Some(i) = vendor_ref(errors, &path, name) {
                    weighted.push((i, weight));
                }
            }
            Fallback::Weighted(weighted)
        }
        (None, true) => Fallback::None,
    };
    RoutingConfig {
        vendor_header,
        usernames,
        fallback,
    }
}

fn identity(raw: &RawIdentity, env: &Env, errors: &mut Errors) -> IdentityConfig {
    let from_env = |var: &str| {
        env.get(var)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let unknown = || IdentityConfig::Fixed {
        namespace: "unknown".into(),
        workload: "unknown".into(),
        pod: "unknown".into(),
    };
    match raw.from.as_str() {
        "environment" => IdentityConfig::Fixed {
            namespace: from_env(&raw.namespace_env),
            workload: from_env(&raw.workload_env),
            pod: from_env(&raw.pod_env),
        },
        "proxy_username" => IdentityConfig::ProxyUsername {
            default_namespace: raw.default_namespace.clone(),
        },
        "kubernetes" => {
            let node = match raw.kubernetes.node_env.as_str() {
                "" => None,
                var => match env.get(var).filter(|v| !v.is_empty()) {
                    Some(node) => Some(node.clone()),
                    None => {
                        // Watching every pod of the cluster instead would silently cost each
                        // per-node meter the memory of the whole cluster.
                        errors.push(
                            "identity.kubernetes.node_env",
                            format!("environment variable {var} is not set or empty"),
                        );
                        None
                    }
                },
            };
            if raw.kubernetes.max_pods == 0 {
                errors.push("identity.kubernetes.max_pods", "must be at least 1");
            }
            IdentityConfig::Kubernetes {
                node,
                max_pods: raw.kubernetes.max_pods,
            }
        }
        "none" => unknown(),
        other => {
            errors.push(
                "identity.from",
                format!("'{other}' is not one of environment, kubernetes, proxy_username, none"),
            );
            unknown()
        }
    }
}

fn metrics(raw: &RawMetrics, errors: &mut Errors) -> MetricsConfig {
    let destination_key = match raw.destination_label.as_str() {
        "registrable_domain" => Some(DestinationKey::RegistrableDomain),
        "host" => Some(DestinationKey::Host),
        "off" => None,
        other => {
            errors.push(
                "metrics.destination_label",
                format!("'{other}' is not one of registrable_domain, host, off"),
            );
            None
        }
    };
    if destination_key.is_some() && raw.max_destinations_per_vendor == 0 {
        errors.push(
            "metrics.max_destinations_per_vendor",
            "must be at least 1 (set destination_label: off to turn the families off)",
        );
    }
    if raw.max_pods == 0 {
        errors.push("metrics.max_pods", "must be at least 1");
    }
    let ttl = duration(errors, "metrics.pod_series_ttl", &raw.pod_series_ttl, true);
    // Shorter than a scrape interval would drop a pod's last counts before Prometheus saw them.
    if !ttl.is_zero() && ttl < MIN_POD_SERIES_TTL {
        errors.push(
            "metrics.pod_series_ttl",
            format!(
                "must be 0s (keep every pod) or at least {}s, longer than any scrape interval",
                MIN_POD_SERIES_TTL.as_secs()
            ),
        );
    }
    MetricsConfig {
        max_destinations_per_vendor: if destination_key.is_some() {
            raw.max_destinations_per_vendor
        } else {
            0
        },
        destination_key,
        max_pods: raw.max_pods,
        pod_series_ttl: (!ttl.is_zero()).then_some(ttl),
        metering: raw.metering,
    }
}

/// Shortest time a departed pod's series stay: two minutes, more than the longest scrape
/// interval in common use (60 s) with room for a failed scrape.
const MIN_POD_SERIES_TTL: Duration = Duration::from_secs(120);

fn ports(raw: &[RawPorts], path: &str, errors: &mut Errors) -> PortSet {
    let mut set = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let range = match p {
            RawPorts::One(n) => u16::try_from(*n).ok().filter(|&n| n > 0).map(|n| n..=n),
            RawPorts::Range(text) => text.split_once('-').and_then(|(a, b)| {
                let a = pt_sniff::authority::parse_port(a.trim()).ok()?;
                let b = pt_sniff::authority::parse_port(b.trim()).ok()?;
                (a <= b).then_some(a..=b)
            }),
        };
        match range {
            Some(r) => set.push(r),
            None => errors.push(path, "expected a port from 1 to 65535 or a range \"a-b\""),
        }
    }
    PortSet(set)
}

fn security(raw: &RawSecurity, errors: &mut Errors) -> SecurityConfig {
    SecurityConfig {
        connect_ports: ports(&raw.connect_ports, "security.connect_ports", errors),
        http_ports: ports(&raw.http_ports, "security.http_ports", errors),
        allowed_private_destinations: raw
            .allowed_private_destinations
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                errors.check(
                    &format!("security.allowed_private_destinations[{i}]"),
                    s.parse::<Cidr>(),
                )
            })
            .collect(),
    }
}

fn duration(errors: &mut Errors, path: &str, text: &str, zero_ok: bool) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && !zero_ok => {
            errors.push(path, "must be longer than zero");
            d
        }
        Ok(d) => d,
        Err(_) => {
            errors.push(
                path,
                format!("'{text}' is not a duration such as 10s, 500ms or 2m"),
            );
            Duration::ZERO
        }
    }
}

fn limits(raw: &RawLimits, errors: &mut Errors) -> LimitsConfig {
    let mut d = |key: &str, text: &str| duration(errors, &format!("limits.{key}"), text, false);
    let limits = LimitsConfig {
        max_connections: raw.max_connections,
        max_vendor_connections: raw.max_vendor_connections,
        max_header_bytes: raw.max_header_bytes,
        max_headers: raw.max_headers,
        header_read_timeout: d("header_read_timeout", &raw.header_read_timeout),
        client_idle_timeout: d("client_idle_timeout", &raw.client_idle_timeout),
        connect_timeout: d("connect_timeout", &raw.connect_timeout),
        response_timeout: d("response_timeout", &raw.response_timeout),
        tunnel_idle_timeout: d("tunnel_idle_timeout", &raw.tunnel_idle_timeout),
        sniff_timeout: d("sniff_timeout", &raw.sniff_timeout),
        h2_max_concurrent_streams: raw.h2_max_concurrent_streams,
        vendor_idle_timeout: d("vendor_idle_timeout", &raw.vendor_idle_timeout),
    };
    if raw.max_connections == 0 {
        errors.push("limits.max_connections", "must be at least 1");
    }
    if raw.max_vendor_connections == Some(0) {
        errors.push("limits.max_vendor_connections", "must be at least 1");
    }
    // A client waiting for a slow vendor sees no bytes until the response head; the idle
    // watchdog must not close its connection before the response timeout does.
    if limits.client_idle_timeout <= limits.response_timeout {
        errors.push(
            "limits.client_idle_timeout",
            "must be longer than limits.response_timeout",
        );
    }
    if raw.max_header_bytes < MIN_HEADER_BYTES {
        errors.push(
            "limits.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}"),
        );
    }
    if raw.max_headers == 0 {
        errors.push("limits.max_headers", "must be at least 1");
    }
    if raw.h2_max_concurrent_streams == 0 {
        errors.push("limits.h2_max_concurrent_streams", "must be at least 1");
    }
    limits
}

#[cfg(test)]
mod tests {
    use crate::*;

    use crate::test_env as env;

    const MINIMAL: &str =
        "vendors:\n  - name: vendor-a\n    url: http://proxy.vendor-a.example:8000\n";

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let config = load_str(MINIMAL, &Env::new()).unwrap();
        assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:3128");
        assert_eq!(config.admin_address.to_string(), "127.0.0.1:9464");
        assert_eq!(
            config.routing.vendor_header.as_deref(),
            Some("x-proxy-vendor")
        );
        assert!(config.security.connect_ports.contains(443));
        assert!(!config.security.connect_ports.contains(22));
        assert!(config.security.http_ports.contains(80));
        assert!(config.security.http_ports.contains(8080));
        assert!(!config.security.http_ports.contains(25));
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(30));
        assert_eq!(config.metrics.max_destinations_per_vendor, 100);
        assert_eq!(
            config.identity,
            IdentityConfig::Fixed {
                namespace: "unknown".into(),
                workload: "unknown".into(),
                pod: "unknown".into()
            }
        );
        match &config.vendors[0].upstream {
            Upstream::HttpProxy {
                address,
                credentials,
            } => {
                assert_eq!(address.to_string(), "proxy.vendor-a.example:8000");
                assert!(credentials.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_sidecar_identity_comes_from_the_downward_api() {
        let config = load_str(
            MINIMAL,
            &env(&[
                ("POD_NAME", "crawler-7d9f"),
                ("POD_NAMESPACE", "crawlers"),
                ("POD_WORKLOAD", "crawler"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.identity,
            IdentityConfig::Fixed {
                namespace: "crawlers".into(),
                workload: "crawler".into(),
                pod: "crawler-7d9f".into()
            }
        );
    }

    #[test]
    fn transparent_mode_takes_loopback_listeners_and_vendor_endpoints() {
        let text = "listeners: []\ntransparent:\n  listeners: [\"127.0.0.1:15001\", \"[::1]:15001\"]\n  outbound_mark: 1337\nvendors:\n  - name: vendor-a\n    url: http://proxy.vendor-a.example:8000\n    endpoints: [\"203.0.113.0/24:8000\", \"[2001:db8::/32]:22225\", \"gate.vendor-a.example:7000\", \"198.51.100.7:1080\"]\n";
        let config = load_str(text, &Env::new()).unwrap();
        assert!(config.listeners.is_empty());
        assert_eq!(config.transparent.listeners.len(), 2);
        assert_eq!(config.transparent.outbound_mark, Some(1337));
        assert_eq!(config.transparent.resolve_interval, Duration::from_secs(30));
        let shown: Vec<String> = config.vendors[0]
            .endpoints
            .iter()
            .map(|e| match e {
                Endpoint::Host(a) => a.to_string(),
                Endpoint::Net { net, port } => format!("{net}:{port}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "proxy.vendor-a.example:8000",
                "203.0.113.0/24:8000",
                "2001:db8::/32:22225",
                "gate.vendor-a.example:7000",
                "198.51.100.7:1080"
            ]
        );
    }

    #[test]
    fn transparent_mistakes_are_reported_with_their_paths() {
        let text = "transparent:\n  listeners: [\"0.0.0.0:15001\", \"nope\"]\n  resolve_interval: 0s\nvendors:\n  - name: a\n    url: http://p.example:1\n    endpoints: [\"10.0.0.0/33:80\", \"host-without-port\", \"[::1]:0\"]\n  - name: d\n    kind: direct\n    endpoints: [\"1.2.3.4:80\"]\n";
        let paths: Vec<String> = load_str(text, &Env::new())
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "vendors[0].endpoints[0]",
                "vendors[0].endpoints[1]",
                "vendors[0].endpoints[2]",
                "vendors[1].endpoints[0]",
                "transparent.listeners[0]",
                "transparent.listeners[1]",
                "transparent.resolve_interval",
            ]
        );
    }

    #[test]
    fn a_per_node_pod_watch_needs_its_node_name() {
        let text = format!(
            "{MINIMAL}identity:\n  from: kubernetes\n  kubernetes:\n    node_env: NODE_NAME\n"
        );
        let config = load_str(&text, &env(&[("NODE_NAME", "node-1")])).unwrap();
        assert_eq!(
            config.identity,
            IdentityConfig::Kubernetes {
                node: Some("node-1".into()),
                max_pods: 20_000
            }
        );
        let errors = load_str(&text, &Env::new()).unwrap_err();
        assert_eq!(errors.0[0].path, "identity.kubernetes.node_env");
    }

    #[test]
    fn a_listener_open_to_the_internet_without_a_password_is_refused() {
        let config = |clients: &str| {
            format!(
                "listeners:\n  - address: \"0.0.0.0:3128\"\nclients:\n{clients}vendors:\n  - name: a\n    url: http://p.example:1\n"
            )
        };
        let refused = |clients: &str| {
            let errors = load_str(&config(clients), &Env::new()).unwrap_err();
            assert_eq!(errors.0[0].path, "listeners[0].address", "{clients}");
        };
        refused("  allowed_sources: []\n");
        refused("  allowed_sources: [\"0.0.0.0/0\"]\n");
        refused("  allowed_sources: [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n");
        refused("  allowed_sources: [\"10.0.0.0/8\", \"203.0.113.0/24\"]\n");
        refused("  allowed_sources: [\"::/0\"]\n");
        let accepted = |clients: &str| {
            load_str(&config(clients), &Env::new()).unwrap_or_else(|e| panic!("{clients}: {e:?}"));
        };
        accepted("  allowed_sources: [\"10.0.0.0/8\", \"100.64.0.0/10\", \"fd00::/8\"]\n");
        accepted("  allowed_sources: [\"0.0.0.0/0\"]\n  insecure_allow_public_sources: true\n");
        let with_password = load_str(
            &config("  password_env: P\n"),
            &crate::test_env(&[("P", "secret")]),
        );
        assert!(with_password.is_ok());
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let text = r#"
listeners:
  - address: "0.0.0.0:3128"
  - address: "nonsense"
    vendor: vendor-z
vendors:
  - name: Vendor_A
    url: https://proxy:8000
  - name: b
    url: http://user:pw@proxy:8000
    username: u
  - name: c
    kind: direct
    url: http://x:1
routing:
  default_vendor: b
  weights: {b: 1}
metrics:
  destination_label: everything
security:
  connect_ports: [443, "9000-8000", 70000]
limits:
  connect_timeout: soon
"#;
        let errors = load_str(text, &Env::new()).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "listeners[0].address",
            "listeners[1].address",
            "listeners[1].vendor",
            "vendors[0].name",
            "vendors[0].url",
            "vendors[1].url",
            "vendors[1].username",
            "vendors[2].url",
            "routing.weights",
            "metrics.destination_label",
            "security.connect_ports[1]",
            "security.connect_ports[2]",
            "limits.connect_timeout",
        ] {
            assert!(
                paths.contains(&expected),
                "no error at {expected}: {errors}"
            );
        }
        assert_eq!(paths.len(), 13, "{errors}");
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_show_in_debug() {
        let dir = std::env::temp_dir().join(format!("pt-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "file-canary-7731\n").unwrap();
        let text = format!(
            "vendors:\n  - name: a\n    url: http://p:1\n    username: cust\n    password_env: VENDOR_A_PASSWORD\n\
             clients:\n  password_file: {}\n",
            file.display()
        );
        let config = load_str(&text, &env(&[("VENDOR_A_PASSWORD", "env-canary-9919")])).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("env-canary-9919"), "{debug}");
        assert!(!debug.contains("file-canary-7731"), "{debug}");
        let Upstream::HttpProxy {
            credentials: Some(c),
            ..
        } = &config.vendors[0].upstream
        else {
            panic!("credentials expected");
        };
        // base64("cust:env-canary-9919")
        assert_eq!(
            c.proxy_authorization(),
            "Basic Y3VzdDplbnYtY2FuYXJ5LTk5MTk="
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_secret_names_the_variable_not_a_value() {
        let text =
            "vendors:\n  - name: a\n    url: http://p:1\n    username: u\n    password_env: NOPE\n";
        let errors = load_str(text, &Env::new()).unwrap_err();
        assert_eq!(
            errors.0,
            vec![ConfigError {
                path: "vendors[0].password_env".into(),
                message: "environment variable NOPE is not set or empty".into()
            }]
        );
    }

    #[test]
    fn type_errors_carry_their_path() {
        let errors = load_str("limits:\n  max_connections: lots\n", &Env::new()).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "limits.max_connections");
        let errors = load_str("limits:\n  max_conections: 1\n", &Env::new()).unwrap_err();
        assert_eq!(errors.0[0].path, "limits.max_conections");
        assert!(
            errors.0[0].message.contains("unknown field"),
            "{}",
            errors.0[0].message
        );
    }

    #[test]
    fn env_overrides_reach_validation() {
        let config = load_str(
            MINIMAL,
            &env(&[("PROXY_TELEMETRY__LIMITS__MAX_CONNECTIONS", "7")]),
        )
        .unwrap();
        assert_eq!(config.limits.max_connections, 7);
    }

    #[test]
    fn weights_and_username_routes_resolve_to_vendor_indices() {
        let text = "vendors:\n  - {name: a, kind: direct}\n  - {name: b, kind: direct}\n\
                    routing:\n  weights: {a: 40, b: 60}\n  usernames: {team-b: b}\n";
        let config = load_str(text, &Env::new()).unwrap();
        assert_eq!(
            config.routing.fallback,
            Fallback::Weighted(vec![(0, 40), (1, 60)])
        );
        assert_eq!(config.routing.usernames["team-b"], 1);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let config = load_str(
            EXAMPLE,
            &env(&[
                ("VENDOR_A_PASSWORD", "a"),
                ("VENDOR_B_PASSWORD", "b"),
                ("VENDOR_C_PASSWORD", "c"),
            ]),
        );
        assert!(config.is_ok(), "{}", config.unwrap_err());
    }

    fn priced(pricing: &str) -> Result<MeterConfig, ConfigErrors> {
        let text =
            format!("vendors:\n  - name: a\n    url: http://p.example:1\n    pricing:\n{pricing}");
        load_str(&text, &Env::new())
    }

    #[test]
    fn a_price_per_gb_becomes_a_price_per_byte_in_the_stated_unit() {
        let config = priced(
            "      currency: USD\n      per_gb: 8.5\n      unit: GiB\n      billed_bytes: received\n      \
             per_1k_requests: 1.5\n      billed_requests: successful\n      monthly_fee: 500\n      \
             included_gb: 0.5\n      cycle_start_day: 15\n      monthly_budget: 2000\n",
        )
        .unwrap();
        let pricing = config.vendors[0].pricing.clone().expect("priced");
        assert_eq!(pricing.currency, "USD");
        assert_eq!(pricing.byte_price, 8.5 / 1_073_741_824.0);
        assert!(!pricing.bills_sent_bytes);
        assert_eq!(pricing.request_price, 0.0015);
        assert!(pricing.successful_requests_only);
        assert_eq!(pricing.monthly_fee, 500.0);
        assert_eq!(pricing.included_bytes, 536_870_912);
        assert_eq!(pricing.cycle_start_day, 15);
        assert_eq!(pricing.monthly_budget, Some(2000.0));
    }

    #[test]
    fn pricing_defaults_are_decimal_gb_both_directions_all_requests_cycle_on_the_first() {
        let config =
            priced("      currency: EUR\n      per_gb: 3\n      included_gb: 0.1\n").unwrap();
        let pricing = config.vendors[0].pricing.clone().expect("priced");
        assert_eq!(pricing.byte_price, 3.0 / 1e9);
        assert!(pricing.bills_sent_bytes);
        assert!(!pricing.successful_requests_only);
        assert_eq!(pricing.included_bytes, 100_000_000);
        assert_eq!(pricing.cycle_start_day, 1);
        assert_eq!(pricing.monthly_budget, None);
        assert!(
            load_str(MINIMAL, &Env::new()).unwrap().vendors[0]
                .pricing
                .is_none()
        );
    }

    #[test]
    fn every_bad_price_is_reported_with_its_key_path() {
        let errors = priced(
            "      currency: dollars\n      per_gb: -1\n      unit: MB\n      billed_bytes: sent\n      \
             per_1k_requests: -0.5\n      billed_requests: some\n      cycle_start_day: 31\n      \
             monthly_budget: 0\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "vendors[0].pricing.currency",
                "vendors[0].pricing.per_gb",
                "vendors[0].pricing.per_1k_requests",
                "vendors[0].pricing.monthly_budget",
                "vendors[0].pricing.unit",
                "vendors[0].pricing.billed_bytes",
                "vendors[0].pricing.billed_requests",
                "vendors[0].pricing.cycle_start_day",
            ],
            "{errors}"
        );
        let nothing = priced("      currency: USD\n      included_gb: 5\n").unwrap_err();
        let messages: Vec<String> = nothing.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "vendors[0].pricing: prices nothing: set per_gb, per_1k_requests or monthly_fee",
                "vendors[0].pricing.included_gb: included traffic needs per_gb, the price of the traffic beyond it",
            ]
        );
        let unknown =
            priced("      currency: USD\n      per_gb: 1\n      per_tb: 2\n").unwrap_err();
        assert!(unknown.to_string().contains("per_tb"), "{unknown}");
    }
}
