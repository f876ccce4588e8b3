//! What a vendor charges, and what a billing cycle's usage costs under that price.
//!
//! Prices are kept in the form the money is computed in: a price per billed byte (the
//! configured price per GB divided by the unit the vendor means by "GB"), a price per billed
//! request, a monthly fee with the traffic it includes. The meter exports these facts as gauges;
//! recording rules multiply them by byte and request rates, and `report` rebuilds the same
//! [`Pricing`] from those gauges, so the configuration stays the single source of a price.

/// Decimal gigabyte: what most vendors bill (`unit: GB`).
pub const GB: u64 = 1_000_000_000;
/// Binary gibibyte (`unit: GiB`): 7.4% more bytes than a GB, which alone explains an invoice
/// that differs from a report by that much.
pub const GIB: u64 = 1 << 30;

/// A vendor's prices.
#[derive(Clone, Debug, PartialEq)]
pub struct Pricing {
    /// ISO 4217 code, e.g. `USD`; every amount of this vendor is in it.
    pub currency: String,
    /// Price of one billed byte beyond the included traffic.
    pub byte_price: f64,
    /// Whether bytes sent toward the vendor are billed (`billed_bytes: sent_and_received`);
    /// received bytes always are.
    pub bills_sent_bytes: bool,
    /// Price of one billed request.
    pub request_price: f64,
    /// Only requests the vendor answered with 2xx or 3xx are billed (`billed_requests:
    /// successful`). A CONNECT tunnel is one request, successful when the vendor accepted it.
    pub successful_requests_only: bool,
    /// Charged once per billing cycle, whatever the usage.
    pub monthly_fee: f64,
    /// Billed bytes per cycle that the monthly fee covers.
    pub included_bytes: u64,
    /// Day of the month a billing cycle starts on, 00:00 UTC (1 to 28, so every month has it).
    pub cycle_start_day: u8,
    /// What the team means to spend per cycle; budget alerts and the Cost dashboard read it.
    pub monthly_budget: Option<f64>,
}

/// What was used in (a part of) one billing cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub requests: u64,
    /// Requests answered 2xx or 3xx.
    pub successful_requests: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.sent_bytes += other.sent_bytes;
        self.received_bytes += other.received_bytes;
        self.requests += other.requests;
        self.successful_requests += other.successful_requests;
    }
}

/// The money of one cycle, by what it is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub fee: f64,
    /// Billed bytes beyond the included traffic, priced.
    pub bytes: f64,
    pub requests: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.fee + self.bytes + self.requests
    }
}

impl Pricing {
    /// The bytes of `usage` this vendor bills.
    pub fn billed_bytes(&self, usage: &Usage) -> u64 {
        usage.received_bytes
            + if self.bills_sent_bytes {
                usage.sent_bytes
            } else {
                0
            }
    }

    /// The requests of `usage` this vendor bills.
    pub fn billed_requests(&self, usage: &Usage) -> u64 {
        if self.successful_requests_only {
            usage.successful_requests
        } else {
            usage.requests
        }
    }

    /// The cost of one billing cycle's usage: the fee once, the included traffic once.
    pub fn cycle_cost(&self, usage: &Usage) -> Cost {
        let overage = self.billed_bytes(usage).saturating_sub(self.included_bytes);
        Cost {
            fee: self.monthly_fee,
            bytes: overage as f64 * self.byte_price,
            requests: self.billed_requests(usage) as f64 * self.request_price,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Pricing {
        Pricing {
            currency: "USD".into(),
            byte_price: 4.0 / GB as f64,
            bills_sent_bytes: true,
            request_price: 0.0,
            successful_requests_only: false,
            monthly_fee: 300.0,
            included_bytes: 50 * GB,
            cycle_start_day: 1,
            monthly_budget: Some(1000.0),
        }
    }

    #[test]
    fn a_cycle_within_its_included_traffic_costs_the_fee() {
        let usage = Usage {
            sent_bytes: 10 * GB,
            received_bytes: 40 * GB,
            ..Usage::default()
        };
        assert_eq!(plan().cycle_cost(&usage).total(), 300.0);
    }

    #[test]
    fn overage_is_priced_per_byte_beyond_the_included_traffic() {
        let usage = Usage {
            sent_bytes: 10 * GB,
            received_bytes: 65 * GB,
            ..Usage::default()
        };
        // 75 GB billed, 50 included: 25 GB at 4.00.
        let cost = plan().cycle_cost(&usage);
        assert!((cost.bytes - 100.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.total() - 400.0).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn received_only_billing_ignores_sent_bytes_and_successful_only_counts_2xx_3xx() {
        let pricing = Pricing {
            bills_sent_bytes: false,
            included_bytes: 0,
            monthly_fee: 0.0,
            request_price: 2.0 / 1000.0,
            successful_requests_only: true,
            ..plan()
        };
        let usage = Usage {
            sent_bytes: 7 * GB,
            received_bytes: 3 * GB,
            requests: 5000,
            successful_requests: 4000,
        };
        assert_eq!(pricing.billed_bytes(&usage), 3 * GB);
        let cost = pricing.cycle_cost(&usage);
        assert!((cost.bytes - 12.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.requests - 8.0).abs() < 1e-9, "{cost:?}");
    }
}
