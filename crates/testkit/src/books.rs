//! A fake vendor's books against a meter's scrape: the exactness check of every test.

use pt_fakes::vendor::FakeVendor;
use pt_metrics::exposition::Scrape;

/// The meter's byte counters next to what a [`FakeVendor`] read from and wrote to the meter.
pub trait VendorBooks {
    /// Whether the meter's byte counters (all series) equal this vendor's book yet.
    fn books_match(&self, scrape: &Scrape) -> bool;

    /// Asserts that the meter's byte counters over the series with `labels` equal, to the
    /// byte, what this vendor read from and wrote to the meter.
    #[track_caller]
    fn assert_metered_exactly(&self, scrape: &Scrape, labels: &[(&str, &str)]);
}

impl VendorBooks for FakeVendor {
    fn books_match(&self, scrape: &Scrape) -> bool {
        scrape.sum("proxy_sent_bytes_total", &[]) == self.bytes_from_meter()
            && scrape.sum("proxy_received_bytes_total", &[]) == self.bytes_to_meter()
    }

    #[track_caller]
    fn assert_metered_exactly(&self, scrape: &Scrape, labels: &[(&str, &str)]) {
        assert_eq!(
            (
                scrape.sum("proxy_sent_bytes_total", labels),
                scrape.sum("proxy_received_bytes_total", labels)
            ),
            (self.bytes_from_meter(), self.bytes_to_meter()),
            "the meter's (sent, received) bytes vs the vendor's book"
        );
    }
}
