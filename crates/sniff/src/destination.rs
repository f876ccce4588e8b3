//! The value of the `destination` label: a bounded, stable key for a host.
//!
//! Crawlers touch many host names per site (`www.`, `cdn1.`, `img.`), so the default key is the
//! registrable domain (eTLD+1 from the Public Suffix List): `img.shop.example.co.uk` counts as
//! `example.co.uk`. IP literals carry no domain and would be unbounded, so they all fold into
//! [`IP_LITERAL`]. The per-vendor top-K cap on top of this lives in the metrics crate.

use crate::authority::Host;

/// The single `destination` value shared by every IP-literal host.
pub const IP_LITERAL: &str = "ip-literal";

/// How a host becomes a `destination` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DestinationKey {
    /// The registrable domain (eTLD+1); a host that is itself a public suffix or a single label
    /// is kept whole.
    #[default]
    RegistrableDomain,
    /// The full host name.
    Host,
}

impl DestinationKey {
    /// The label value for `host`.
    pub fn of(self, host: &Host) -> String {
        let Host::Name(name) = host else {
            return IP_LITERAL.to_owned();
        };
        match self {
            DestinationKey::Host => name.to_string(),
            DestinationKey::RegistrableDomain => psl::domain_str(name)
                .map(str::to_owned)
                .unwrap_or_else(|| name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::parse_host;

    fn key(mode: DestinationKey, host: &str) -> String {
        mode.of(&parse_host(host).expect("test host"))
    }

    #[test]
    fn subdomains_fold_into_their_registrable_domain() {
        let d = DestinationKey::RegistrableDomain;
        assert_eq!(key(d, "img.shop.example.co.uk"), "example.co.uk");
        assert_eq!(key(d, "WWW.Example.COM."), "example.com");
        assert_eq!(key(d, "example.com"), "example.com");
        assert_eq!(key(d, "localhost"), "localhost");
        assert_eq!(key(d, "co.uk"), "co.uk");
    }

    #[test]
    fn ip_literals_share_one_value_in_every_mode() {
        for mode in [DestinationKey::RegistrableDomain, DestinationKey::Host] {
            assert_eq!(key(mode, "10.1.2.3"), IP_LITERAL);
            assert_eq!(key(mode, "[2001:db8::1]"), IP_LITERAL);
            assert_eq!(key(mode, "2130706433"), IP_LITERAL);
        }
    }

    #[test]
    fn host_mode_keeps_the_whole_name() {
        assert_eq!(
            key(DestinationKey::Host, "img.shop.example.co.uk"),
            "img.shop.example.co.uk"
        );
    }
}
