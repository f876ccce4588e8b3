//! Who the client is and which vendor carries its request.
//!
//! Order of vendor selection (first match wins): the listener's dedicated vendor; the vendor
//! header (default `X-Proxy-Vendor`); the client's Proxy-Authorization username mapped in
//! `routing.usernames`; the default vendor or a weighted choice. A name that matches no vendor is
//! refused with 400 rather than silently routed elsewhere: a crawler that asked for vendor X and
//! got billed by vendor Y is worse than a crawler that got an error.

use std::collections::HashMap;

use base64::Engine;
use pt_config::{Fallback, MeterConfig, VendorIndex};
use pt_metrics::labels::RejectReason;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use secrecy::{ExposeSecret, SecretString};

use crate::failure::Failure;

/// The client's Basic credentials from `Proxy-Authorization`. `Debug` hides the password.
pub struct ClientCredentials {
    pub username: String,
    password: SecretString,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Longest username accepted: a Kubernetes namespace (63) + '/' + pod name (253).
const MAX_USERNAME_LEN: usize = 63 + 1 + 253;

/// Reads `Proxy-Authorization: Basic ...` from the field's values. `Ok(None)` when absent; an
/// error when present but unusable (several values, another scheme, bad base64, no ':',
/// control characters).
pub fn client_credentials(values: &[&[u8]]) -> Result<Option<ClientCredentials>, Failure> {
    let value = match values {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err(Failure::Rejected(RejectReason::AuthFailed)),
    };
    let bad = Failure::Rejected(RejectReason::AuthFailed);
    let value = std::str::from_utf8(value).map_err(|_| bad)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad)?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad)?;
    let (username, password) = decoded.split_once(':').ok_or(bad)?;
    if username.len() > MAX_USERNAME_LEN || username.chars().any(char::is_control) {
        return Err(bad);
    }
    Ok(Some(ClientCredentials {
        username: username.to_owned(),
        password: SecretString::from(password.to_owned()),
    }))
}

/// Checks the client's password when one is required.
pub fn authenticate(
    expected: Option<&SecretString>,
    credentials: Option<&ClientCredentials>,
) -> Result<(), Failure> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(credentials) = credentials else {
        return Err(Failure::Rejected(RejectReason::AuthRequired));
    };
    if constant_time_eq(
        credentials.password.expose_secret().as_bytes(),
        expected.expose_secret().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(Failure::Rejected(RejectReason::AuthFailed))
    }
}

/// Compares without an early exit, so response timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// A vendor-selection table built once from the config.
#[derive(Debug)]
pub struct Router {
    /// Lower-case vendor names, by index.
    names: Vec<String>,
    usernames: HashMap<String, VendorIndex>,
    fallback: Fallback,
    weighted: Option<(Vec<VendorIndex>, WeightedIndex<u32>)>,
}

impl Router {
    pub fn new(config: &MeterConfig) -> Router {
        let weighted = match &config.routing.fallback {
            Fallback::Weighted(pairs) => {
                let vendors = pairs.iter().map(|(v, _)| *v).collect();
                WeightedIndex::new(pairs.iter().map(|(_, w)| *w))
                    .ok()
                    .map(|index| (vendors, index))
            }
            _ => None,
        };
        Router {
            names: config
                .vendors
                .iter()
                .map(|v| v.name.to_ascii_lowercase())
                .collect(),
            usernames: config.routing.usernames.clone(),
            fallback: config.routing.fallback.clone(),
            weighted,
        }
    }

    /// Chooses the vendor; see the module documentation for the order. `header` holds the
    /// values of the vendor-selection header (empty when absent or when selection by header is
    /// off).
    pub fn choose(
        &self,
        listener_vendor: Option<VendorIndex>,
        header: &[&[u8]],
        username: Option<&str>,
    ) -> Result<VendorIndex, Failure> {
        if let Some(vendor) = listener_vendor {
            return Ok(vendor);
        }
        match header {
            [] => {}
            [value] => {
                let wanted = std::str::from_utf8(value)
                    .map_err(|_| Failure::Rejected(RejectReason::UnknownVendor))?
                    .trim();
                return self
                    .names
                    .iter()
                    .position(|v| v.eq_ignore_ascii_case(wanted))
                    .ok_or(Failure::Rejected(RejectReason::UnknownVendor));
            }
            _ => return Err(Failure::Rejected(RejectReason::BadRequest)),
        }
        if let Some(vendor) = username.and_then(|u| self.usernames.get(u)) {
            return Ok(*vendor);
        }
        match &self.fallback {
            Fallback::Vendor(v) => Ok(*v),
            Fallback::Weighted(_) => match &self.weighted {
                Some((vendors, index)) => Ok(vendors[index.sample(&mut rand::rng())]),
                None => Err(Failure::Rejected(RejectReason::NoVendor)),
            },
            Fallback::None => Err(Failure::Rejected(RejectReason::NoVendor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> MeterConfig {
        let text = format!(
            "vendors:\n  - {{name: vendor-a, kind: direct}}\n  - {{name: vendor-b, kind: direct}}\n{extra}"
        );
        pt_config::load_str(&text, &Default::default()).unwrap()
    }

    fn basic(user_pass: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(user_pass);
        format!("Basic {token}")
    }

    #[test]
    fn the_listener_wins_then_the_header_then_the_username_then_the_default() {
        let config =
            config("routing:\n  default_vendor: vendor-a\n  usernames: {team-b: vendor-b}\n");
        let router = Router::new(&config);
        assert_eq!(router.choose(None, &[], None), Ok(0));
        assert_eq!(router.choose(None, &[], Some("team-b")), Ok(1));
        assert_eq!(router.choose(None, &[b"Vendor-A"], Some("team-b")), Ok(0));
        assert_eq!(router.choose(Some(1), &[b"vendor-a"], None), Ok(1));
    }

    #[test]
    fn an_unknown_or_repeated_vendor_header_is_refused() {
        let config = config("");
        let router = Router::new(&config);
        assert_eq!(
            router.choose(None, &[], None),
            Err(Failure::Rejected(RejectReason::NoVendor))
        );
        assert_eq!(
            router.choose(None, &[b"vendor-z"], None),
            Err(Failure::Rejected(RejectReason::UnknownVendor))
        );
        assert_eq!(
            router.choose(None, &[b"vendor-z", b"vendor-a"], None),
            Err(Failure::Rejected(RejectReason::BadRequest))
        );
    }

    #[test]
    fn weights_spread_requests_in_proportion() {
        let config = config("routing:\n  weights: {vendor-a: 1, vendor-b: 3}\n");
        let router = Router::new(&config);
        let draws = 20_000;
        let b = (0..draws)
            .filter(|_| router.choose(None, &[], None) == Ok(1))
            .count();
        // Expected 15,000; the binomial standard deviation is about 61, so ±600 is ~10 sigma.
        assert!(
            (14_400..=15_600).contains(&b),
            "{b} of {draws} went to vendor-b"
        );
    }

    #[test]
    fn basic_credentials_are_parsed_strictly() {
        let value = basic("crawlers/pod-1:s3cret");
        let creds = client_credentials(&[value.as_bytes()]).unwrap().unwrap();
        assert_eq!(creds.username, "crawlers/pod-1");
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(client_credentials(&[]).unwrap().is_none());
        assert!(client_credentials(&[b"Bearer abc"]).is_err());
        assert!(client_credentials(&[basic("no-colon").as_bytes()]).is_err());
        assert!(client_credentials(&[value.as_bytes(), value.as_bytes()]).is_err());
    }

    #[test]
    fn the_client_password_is_required_when_configured() {
        let expected = SecretString::from("open sesame".to_owned());
        let good = client_credentials(&[basic("any:open sesame").as_bytes()]).unwrap();
        let bad = client_credentials(&[basic("any:open sesam").as_bytes()]).unwrap();
        assert_eq!(authenticate(Some(&expected), good.as_ref()), Ok(()));
        assert_eq!(
            authenticate(Some(&expected), bad.as_ref()),
            Err(Failure::Rejected(RejectReason::AuthFailed))
        );
        assert_eq!(
            authenticate(Some(&expected), None),
            Err(Failure::Rejected(RejectReason::AuthRequired))
        );
        assert_eq!(authenticate(None, None), Ok(()));
    }
}
