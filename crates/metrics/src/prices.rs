//! The price families: facts from the configuration, registered once at start-up and never
//! written again, so the byte path does not know they exist.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::caps::Name;
use crate::labels::VendorLabels;
use crate::spec::{self, FamilySpec};

/// One vendor's prices, in the per-byte and per-request form the money is computed in.
#[derive(Clone, Debug, PartialEq)]
pub struct VendorPrices {
    pub vendor: Name,
    pub currency: Name,
    pub sent_byte: f64,
    pub received_byte: f64,
    pub request: f64,
    pub successful_requests_only: bool,
    pub monthly_fee: f64,
    pub included_bytes: u64,
    pub cycle_start_day: u8,
    pub monthly_budget: Option<f64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CurrencyLabels {
    proxy_vendor: Name,
    currency: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytePriceLabels {
    proxy_vendor: Name,
    currency: Name,
    direction: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestPriceLabels {
    proxy_vendor: Name,
    currency: Name,
    requests: Name,
}

type Amount = Gauge<f64, AtomicU64>;

fn family<L>(registry: &mut Registry, spec: FamilySpec) -> Family<L, Amount>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Amount>::default();
    registry.register(spec.name, spec.help, family.clone());
    family
}

/// Registers the price families with one series per priced vendor (none without prices).
pub fn register(registry: &mut Registry, prices: &[VendorPrices]) {
    if prices.is_empty() {
        return;
    }
    let per_byte = family::<BytePriceLabels>(registry, spec::PRICE_PER_BYTE);
    let per_request = family::<RequestPriceLabels>(registry, spec::PRICE_PER_REQUEST);
    let fee = family::<CurrencyLabels>(registry, spec::MONTHLY_FEE);
    let included = family::<VendorLabels>(registry, spec::INCLUDED_BYTES);
    let budget = family::<CurrencyLabels>(registry, spec::MONTHLY_BUDGET);
    let cycle = family::<VendorLabels>(registry, spec::BILLING_CYCLE_START_DAY);
    for p in prices {
        let vendor = VendorLabels {
            proxy_vendor: p.vendor.clone(),
        };
        let money = CurrencyLabels {
            proxy_vendor: p.vendor.clone(),
            currency: p.currency.clone(),
        };
        for (direction, price) in [("sent", p.sent_byte), ("received", p.received_byte)] {
            per_byte
                .get_or_create(&BytePriceLabels {
                    proxy_vendor: p.vendor.clone(),
                    currency: p.currency.clone(),
                    direction: Name::new(direction),
                })
                .set(price);
        }
        per_request
            .get_or_create(&RequestPriceLabels {
                proxy_vendor: p.vendor.clone(),
                currency: p.currency.clone(),
                requests: Name::new(if p.successful_requests_only {
                    "successful"
                } else {
                    "all"
                }),
            })
            .set(p.request);
        fee.get_or_create(&money).set(p.monthly_fee);
        // Exact below 2^53 bytes (9 PB per cycle).
        included.get_or_create(&vendor).set(p.included_bytes as f64);
        if let Some(amount) = p.monthly_budget {
            budget.get_or_create(&money).set(amount);
        }
        cycle
            .get_or_create(&vendor)
            .set(f64::from(p.cycle_start_day));
    }
}
