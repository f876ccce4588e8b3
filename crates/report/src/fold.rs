//! Exact counter increments from samples: integers in, integers out.
//!
//! A counter's increase between two samples is their difference; when a sample is lower than
//! the one before, the counter was reset (its process restarted) and counted the new value from
//! zero. A series with no sample before the period started inside it (a new pod), so its first
//! value is all increase.

/// The increase of a counter over `samples` (in time order), given the last value before them.
pub fn increase(previous: Option<u64>, samples: impl IntoIterator<Item = u64>) -> u64 {
    let mut last = previous.unwrap_or(0);
    let mut total = 0;
    for value in samples {
        total += if value >= last { value - last } else { value };
        last = value;
    }
    total
}

/// A sample value of a counter as an integer. Prometheus holds floats: integers are exact up
/// to 2^53 (9 PB of bytes in one series), beyond which a value is refused, not rounded.
pub fn counter_value(text: &str) -> Option<u64> {
    let value: f64 = text.parse().ok()?;
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9_007_199_254_740_992.0)
        .then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_sum_across_a_reset() {
        // 100 before; grows to 250, the meter restarts and counts 40, then 90.
        assert_eq!(increase(Some(100), [180, 250, 40, 90]), 150 + 90);
    }

    #[test]
    fn a_series_born_inside_the_period_counts_from_zero() {
        assert_eq!(increase(None, [7, 19]), 19);
    }

    #[test]
    fn a_gap_without_samples_loses_nothing() {
        // No samples for hours, then the counter carries on from where it was.
        assert_eq!(increase(Some(500), [900]), 400);
        assert_eq!(increase(Some(500), []), 0);
    }

    #[test]
    fn only_exact_integers_are_counter_values() {
        assert_eq!(counter_value("1e6"), Some(1_000_000));
        assert_eq!(counter_value("12.5"), None);
        assert_eq!(counter_value("NaN"), None);
        assert_eq!(counter_value("-1"), None);
    }
}
