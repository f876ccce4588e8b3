//! UTC calendar arithmetic for days and billing cycles, on Unix seconds (no time zones: a
//! vendor's day boundary in another zone is a reconciliation reason, not a setting here).

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// A calendar date (proleptic Gregorian, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// Days since 1970-01-01 (H. Hinnant's `days_from_civil`).
    pub fn days(self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01.
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day }
    }

    /// The date of Unix time `seconds`.
    pub fn of(seconds: i64) -> Date {
        Date::from_days(seconds.div_euclid(DAY))
    }

    /// 00:00 UTC of this date, in Unix seconds.
    pub fn start(self) -> i64 {
        self.days() * DAY
    }

    /// The same day of the next month (the day must exist in every month: 1 to 28).
    fn next_month(self) -> Date {
        if self.month == 12 {
            Date {
                year: self.year + 1,
                month: 1,
                ..self
            }
        } else {
            Date {
                month: self.month + 1,
                ..self
            }
        }
    }

    fn previous_month(self) -> Date {
        if self.month == 1 {
            Date {
                year: self.year - 1,
                month: 12,
                ..self
            }
        } else {
            Date {
                month: self.month - 1,
                ..self
            }
        }
    }

    /// `YYYY-MM-DD`, `YYYY/MM/DD`, or the date part of an RFC 3339 time.
    pub fn parse(text: &str) -> Option<Date> {
        let text = text.trim();
        let head = text.get(..10)?;
        let parts: Vec<&str> = head.split(['-', '/']).collect();
        let [y, m, d] = parts.as_slice() else {
            return None;
        };
        let date = Date {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
            day: d.parse().ok()?,
        };
        (y.len() == 4 && Date::from_days(date.days()) == date).then_some(date)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A date (`2026-11-01`, 00:00 UTC) or an RFC 3339 time, as Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if text.len() == 10
        && let Some(date) = Date::parse(text)
    {
        return Ok(date.start());
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| format!("'{text}' is not a date (2026-11-01) or an RFC 3339 time"))
}

/// The first day of the billing cycle that contains `date`, for cycles starting on
/// `start_day` (1 to 28) of each month.
pub fn cycle_start(date: Date, start_day: u8) -> Date {
    let this_month = Date {
        day: u32::from(start_day),
        ..date
    };
    if date.day >= u32::from(start_day) {
        this_month
    } else {
        this_month.previous_month()
    }
}

/// The first day after the billing cycle that starts on `start`.
pub fn cycle_end(start: Date) -> Date {
    start.next_month()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_days_across_leap_years() {
        for days in [-1, 0, 59, 365, 11_016, 20_423, 20_513, 60_000] {
            assert_eq!(Date::from_days(days).days(), days);
        }
        assert_eq!(Date::parse("2024-02-29").map(Date::days), Some(19_782));
        assert_eq!(
            Date::parse("2026-11-30").map(|d| d.start()),
            Some(1_795_996_800)
        );
        assert_eq!(Date::parse("2025-02-29"), None);
        assert_eq!(
            Date::parse("2026/12/01").map(|d| d.to_string()),
            Some("2026-12-01".into())
        );
    }

    #[test]
    fn times_are_dates_at_midnight_utc_or_rfc3339() {
        assert_eq!(parse_time("2026-11-01"), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-11-01T06:00:00Z"), Ok(1_793_512_800));
        assert!(parse_time("November").is_err());
    }

    #[test]
    fn a_cycle_starting_on_the_15th_runs_to_the_14th_of_the_next_month() {
        let start = cycle_start(Date::parse("2026-12-03").unwrap(), 15);
        assert_eq!(start.to_string(), "2026-11-15");
        assert_eq!(cycle_end(start).to_string(), "2026-12-15");
        assert_eq!(
            cycle_start(Date::parse("2026-01-20").unwrap(), 15).to_string(),
            "2026-01-15"
        );
        assert_eq!(
            cycle_start(Date::parse("2026-01-02").unwrap(), 15).to_string(),
            "2025-12-15"
        );
    }
}
