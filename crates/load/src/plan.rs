//! What a load run does: how many pods, how fast, through which proxy, to which targets.
//!
//! Targets are written compactly, one per string, so they fit in a command line or an
//! environment variable (`PROXY_TELEMETRY_TARGETS`, separated by `;`):
//!
//! ```text
//! [METHOD] URL [h1|h2] [xWEIGHT] [body=SIZE|body=MIN-MAX] [tunnel=h1|h2]
//! GET https://shop-a.test/bytes/2048 h2 x3
//! POST http://api.data-c.test/upload body=1k-64k
//! ```
//!
//! `h1`/`h2` is the HTTP version toward the destination: for `http://` URLs, absolute-form
//! HTTP/1.1 or h2c to the proxy; for `https://` URLs, the ALPN offered inside the CONNECT
//! tunnel. `tunnel=h2` opens the tunnel as an HTTP/2 CONNECT stream instead of CONNECT over
//! HTTP/1.1. Sizes accept `k` and `m` suffixes (powers of 1024).

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;

/// A malformed plan element; the message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// HTTP version toward the destination (and, for `http://`, toward the proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    H1,
    H2,
}

/// A body size, fixed or drawn uniformly from a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min: u64,
    pub max: u64,
}

impl SizeRange {
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        if self.min >= self.max {
            self.min
        } else {
            rng.random_range(self.min..=self.max)
        }
    }
}

/// One kind of request in the mix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub method: Method,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    pub version: HttpVersion,
    pub weight: u32,
    pub body: Option<SizeRange>,
    /// For `https://`: open the tunnel as an HTTP/2 CONNECT stream.
    pub h2_tunnel: bool,
}

impl Target {
    /// `host:port` as written in a CONNECT request or `Host` header (default port omitted).
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The CONNECT target, port always present.
    pub fn connect_authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

fn parse_size(text: &str) -> Result<u64, PlanError> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix('k') {
        Some(d) => (d, 1024),
        None => match lower.strip_suffix('m') {
            Some(d) => (d, 1024 * 1024),
            None => (lower.as_str(), 1),
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| PlanError(format!("'{text}' is not a size such as 512, 4k or 1m")))
}

impl std::str::FromStr for Target {
    type Err = PlanError;

    fn from_str(spec: &str) -> Result<Target, PlanError> {
        let mut method = Method::GET;
        let mut url = None;
        let mut version = HttpVersion::H1;
        let mut weight = 1;
        let mut body = None;
        let mut h2_tunnel = false;
        for word in spec.split_whitespace() {
            if word.contains("://") {
                url = Some(word);
            } else if word == "h1" || word == "h2" {
                version = if word == "h1" {
                    HttpVersion::H1
                } else {
                    HttpVersion::H2
                };
            } else if let Some(w) = word.strip_prefix('x') {
                weight = w.parse().ok().filter(|w| *w > 0).ok_or_else(|| {
                    PlanError(format!(
                        "weight '{word}' must be x followed by a positive number"
                    ))
                })?;
            } else if let Some(size) = word.strip_prefix("body=") {
                let (min, max) = match size.split_once('-') {
                    Some((a, b)) => (parse_size(a)?, parse_size(b)?),
                    None => (parse_size(size)?, parse_size(size)?),
                };
                if min > max {
                    return Err(PlanError(format!("body range '{size}' is reversed")));
                }
                body = Some(SizeRange { min, max });
            } else if let Some(kind) = word.strip_prefix("tunnel=") {
                h2_tunnel = match kind {
                    "h1" => false,
                    "h2" => true,
                    _ => return Err(PlanError(format!("'{word}': tunnel is h1 or h2"))),
                };
            } else if let Ok(m) = word.parse::<Method>()
                && word.bytes().all(|b| b.is_ascii_uppercase())
            {
                method = m;
            } else {
                return Err(PlanError(format!(
                    "'{word}' in target '{spec}' is not understood"
                )));
            }
        }
        let url = url.ok_or_else(|| PlanError(format!("target '{spec}' has no URL")))?;
        let uri: http::Uri = url
            .parse()
            .map_err(|_| PlanError(format!("'{url}' is not a URL")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(PlanError(format!("'{url}' must be http:// or https://"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| PlanError(format!("'{url}' has no host")))?
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        if body.is_some() && method == Method::GET {
            method = Method::POST;
        }
        Ok(Target {
            method,
            https,
            host,
            port,
            path,
            version,
            weight,
            body,
            h2_tunnel,
        })
    }
}

/// How a request reaches its vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VendorRoute {
    /// Through the shared proxy, naming the vendor in the vendor header.
    Header,
    /// Through a proxy address of its own (a dedicated listener, or the vendor itself).
    Proxy(SocketAddr),
}

/// A vendor in the mix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorShare {
    pub name: String,
    pub weight: u32,
    pub route: VendorRoute,
}

/// Parses `vendor-a=40,vendor-b=35,vendor-c=25` (or a single name, weight 1).
pub fn parse_weights(text: &str) -> Result<Vec<(String, u32)>, PlanError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w > 0)
                    .ok_or_else(|| {
                        PlanError(format!("weight of '{part}' must be a positive number"))
                    })?,
            ),
            None => (part, 1),
        };
        out.push((name.to_owned(), weight));
    }
    if out.is_empty() {
        return Err(PlanError("at least one vendor is needed".into()));
    }
    Ok(out)
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// `None`: until cancelled.
    pub duration: Option<Duration>,
    /// Total requests over all pods.
    pub requests: Option<u64>,
}

/// A complete load plan.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// The shared proxy (the meter).
    pub proxy: SocketAddr,
    /// Header naming the vendor on shared-proxy requests.
    pub vendor_header: String,
    pub vendors: Vec<VendorShare>,
    pub targets: Vec<Target>,
    /// Pod identities, `namespace/pod`, sent as the proxy username.
    pub pods: Vec<String>,
    pub proxy_password: String,
    pub rate_per_pod: f64,
    pub concurrency_per_pod: usize,
    pub stop: Stop,
    /// Requests a connection or tunnel carries before the crawler opens a new one.
    pub requests_per_connection: u32,
    pub request_timeout: Duration,
    /// How long a pod lives before a new one (a new name, new connections) takes its place;
    /// replacements are spread evenly over the lifetime. `None`: pods live for the whole run.
    pub pod_lifetime: Option<Duration>,
    /// Each pod sends all its requests through one vendor, drawn by the weights (crawler
    /// deployments are usually configured with one), instead of drawing a vendor per request.
    pub vendor_per_pod: bool,
}

impl LoadPlan {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.vendors.is_empty() || self.targets.is_empty() || self.pods.is_empty() {
            return Err(PlanError("a plan needs vendors, targets and pods".into()));
        }
        if !(self.rate_per_pod > 0.0 && self.rate_per_pod.is_finite()) {
            return Err(PlanError(
                "the rate must be a positive number of requests per second".into(),
            ));
        }
        if self.concurrency_per_pod == 0 || self.requests_per_connection == 0 {
            return Err(PlanError(
                "concurrency and requests per connection must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Weighted draws of vendors and targets.
#[derive(Debug, Clone)]
pub struct Mix {
    vendors: WeightedIndex<u32>,
    targets: WeightedIndex<u32>,
}

impl Mix {
    pub fn new(plan: &LoadPlan) -> Result<Mix, PlanError> {
        let vendors = WeightedIndex::new(plan.vendors.iter().map(|v| v.weight))
            .map_err(|e| PlanError(format!("vendor weights: {e}")))?;
        let targets = WeightedIndex::new(plan.targets.iter().map(|t| t.weight))
            .map_err(|e| PlanError(format!("target weights: {e}")))?;
        Ok(Mix { vendors, targets })
    }

    /// A (vendor index, target index) pair.
    pub fn draw(&self, rng: &mut impl Rng) -> (usize, usize) {
        (self.vendors.sample(rng), self.targets.sample(rng))
    }

    /// A vendor index alone, by the weights.
    pub fn draw_vendor(&self, rng: &mut impl Rng) -> usize {
        self.vendors.sample(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_from_their_compact_form() {
        let t: Target = "GET https://Shop-A.test/bytes/2048 h2 x3".parse().unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "shop-a.test", 443, "/bytes/2048")
        );
        assert_eq!((t.version, t.weight, t.body), (HttpVersion::H2, 3, None));
        assert_eq!(t.url(), "https://shop-a.test/bytes/2048");
        let p: Target = "http://api.data-c.test:8080/upload body=1k-64k tunnel=h2"
            .parse()
            .unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(
            p.body,
            Some(SizeRange {
                min: 1024,
                max: 64 * 1024
            })
        );
        assert_eq!(p.authority(), "api.data-c.test:8080");
        assert!(p.h2_tunnel);
        for bad in [
            "GET",
            "ftp://x/",
            "http://x/ x0",
            "http://x/ body=9-1",
            "http://x/ h3",
            "http://x/ body=lots",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vendor_weights_are_parsed() {
        assert_eq!(
            parse_weights("vendor-a=40, vendor-b=35,vendor-c=25").unwrap(),
            vec![
                ("vendor-a".into(), 40),
                ("vendor-b".into(), 35),
                ("vendor-c".into(), 25)
            ]
        );
        assert_eq!(parse_weights("only").unwrap(), vec![("only".into(), 1)]);
        assert!(parse_weights("a=0").is_err());
        assert!(parse_weights("").is_err());
    }
}
