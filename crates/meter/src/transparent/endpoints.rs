//! Which vendor an original destination belongs to.
//!
//! Each vendor's `url` and `endpoints` are addresses crawlers reach it at: names, IP literals and
//! CIDR blocks, each with a port. Names are resolved at start and again every
//! `transparent.resolve_interval`, because vendors move their gateways; a name that fails to
//! resolve keeps its previous addresses (a DNS hiccup must not turn metered traffic into
//! unmatched traffic). Exact addresses win over blocks; between vendors, the first in the
//! configuration wins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use pt_config::{Cidr, Endpoint, VendorConfig, VendorIndex};
use pt_sniff::{Authority, Host};

/// The vendor endpoint table; see the module documentation.
#[derive(Debug)]
pub struct Endpoints {
    /// Names to resolve, with their vendor, in configuration order.
    names: Vec<(Authority, VendorIndex)>,
    /// IP literals from the configuration, in configuration order.
    literals: Vec<(SocketAddr, VendorIndex)>,
    blocks: Vec<(Cidr, u16, VendorIndex)>,
    /// The addresses each name resolved to last.
    resolved: RwLock<Vec<Vec<SocketAddr>>>,
    /// Literals and resolved names, first vendor first.
    exact: RwLock<HashMap<SocketAddr, VendorIndex>>,
}

impl Endpoints {
    pub fn new(vendors: &[VendorConfig]) -> Endpoints {
        let mut names = Vec::new();
        let mut literals = Vec::new();
        let mut blocks = Vec::new();
        for (index, vendor) in vendors.iter().enumerate() {
            for endpoint in &vendor.endpoints {
                match endpoint {
                    Endpoint::Host(authority) => match authority.host.ip() {
                        Some(ip) => literals.push((SocketAddr::new(ip, authority.port), index)),
                        None => names.push((authority.clone(), index)),
                    },
                    Endpoint::Net { net, port } => blocks.push((*net, *port, index)),
                }
            }
        }
        let endpoints = Endpoints {
            resolved: RwLock::new(vec![Vec::new(); names.len()]),
            names,
            literals,
            blocks,
            exact: RwLock::default(),
        };
        endpoints.rebuild();
        endpoints
    }

    /// The vendor whose endpoint `destination` is.
    pub fn vendor_of(&self, destination: SocketAddr) -> Option<VendorIndex> {
        let destination = SocketAddr::new(destination.ip().to_canonical(), destination.port());
        let exact = self.exact.read().unwrap_or_else(|e| e.into_inner());
        if let Some(&vendor) = exact.get(&destination) {
            return Some(vendor);
        }
        self.blocks
            .iter()
            .find(|(net, port, _)| *port == destination.port() && net.contains(destination.ip()))
            .map(|&(_, _, vendor)| vendor)
    }

    /// Whether any endpoint is a name (and so needs resolving).
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// Resolves every name again; names that fail keep their previous addresses.
    pub async fn refresh(&self) {
        let mut fresh = Vec::with_capacity(self.names.len());
        for (authority, _) in &self.names {
            let Host::Name(name) = &authority.host else {
                fresh.push(None);
                continue;
            };
            match tokio::net::lookup_host((&**name, authority.port)).await {
                Ok(found) => fresh.push(Some(
                    found
                        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                        .collect(),
                )),
                Err(error) => {
                    tracing::warn!(endpoint = %authority, %error, "vendor endpoint did not resolve; keeping its previous addresses");
                    fresh.push(None);
                }
            }
        }
        {
            let mut resolved = self.resolved.write().unwrap_or_else(|e| e.into_inner());
            for (slot, found) in resolved.iter_mut().zip(fresh) {
                if let Some(found) = found {
                    *slot = found;
                }
            }
        }
        self.rebuild();
    }

    fn rebuild(&self) {
        let resolved = self.resolved.read().unwrap_or_else(|e| e.into_inner());
        let mut exact = HashMap::new();
        let named = self
            .names
            .iter()
            .zip(resolved.iter())
            .flat_map(|((_, vendor), addresses)| addresses.iter().map(move |a| (*a, *vendor)));
        // Vendors in configuration order: the first to claim an address keeps it.
        let mut all: Vec<(SocketAddr, VendorIndex)> =
            self.literals.iter().copied().chain(named).collect();
        all.sort_by_key(|&(_, vendor)| vendor);
        for (address, vendor) in all {
            exact.entry(address).or_insert(vendor);
        }
        *self.exact.write().unwrap_or_else(|e| e.into_inner()) = exact;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendors(yaml_endpoints: &[&[&str]]) -> Vec<VendorConfig> {
        let mut text = String::from("vendors:\n");
        for (i, endpoints) in yaml_endpoints.iter().enumerate() {
            let (url, rest) = endpoints.split_first().unwrap();
            text.push_str(&format!(
                "  - name: v{i}\n    url: http://{url}\n    endpoints: {rest:?}\n"
            ));
        }
        pt_config::load_str(&text, &Default::default())
            .unwrap()
            .vendors
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn literals_blocks_and_resolved_names_map_to_their_vendor() {
        let table = Endpoints::new(&vendors(&[
            &["198.51.100.7:8000", "203.0.113.0/24:22225"],
            &["localhost:1080", "[2001:db8::/32]:8000"],
        ]));
        assert_eq!(table.vendor_of(at("198.51.100.7:8000")), Some(0));
        assert_eq!(table.vendor_of(at("198.51.100.7:8001")), None);
        assert_eq!(table.vendor_of(at("203.0.113.99:22225")), Some(0));
        assert_eq!(table.vendor_of(at("[::ffff:203.0.113.99]:22225")), Some(0));
        assert_eq!(table.vendor_of(at("[2001:db8::9]:8000")), Some(1));
        assert!(table.has_names());
        assert_eq!(table.vendor_of(at("127.0.0.1:1080")), None);
        table.refresh().await;
        assert_eq!(table.vendor_of(at("127.0.0.1:1080")), Some(1));
    }

    #[tokio::test]
    async fn the_first_vendor_keeps_an_address_two_vendors_claim() {
        let table = Endpoints::new(&vendors(&[&["localhost:8000"], &["127.0.0.1:8000"]]));
        assert_eq!(table.vendor_of(at("127.0.0.1:8000")), Some(1));
        table.refresh().await;
        assert_eq!(table.vendor_of(at("127.0.0.1:8000")), Some(0));
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_addresses() {
        let table = Endpoints::new(&vendors(&[&["localhost:8000"]]));
        table.refresh().await;
        assert_eq!(table.vendor_of(at("127.0.0.1:8000")), Some(0));
        // As if the resolver now failed: refresh with the name unresolvable.
        let broken = Endpoints {
            names: vec![(
                pt_sniff::authority::parse_authority("no-such-host.invalid:8000").unwrap(),
                0,
            )],
            literals: Vec::new(),
            blocks: Vec::new(),
            resolved: RwLock::new(vec![vec![at("127.0.0.1:8000")]]),
            exact: RwLock::default(),
        };
        broken.refresh().await;
        assert_eq!(broken.vendor_of(at("127.0.0.1:8000")), Some(0));
    }
}
