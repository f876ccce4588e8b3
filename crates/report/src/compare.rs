//! A vendor's usage export beside the report, day by day.
//!
//! Vendors export usage as CSV with their own column names and units, rounded to a few
//! decimals. Each day of the export is compared with the bytes the meters counted for that
//! vendor and UTC day (the bytes the vendor bills, by its configured `billed_bytes`); a
//! difference larger than the export's own rounding is a mismatch, printed with the known
//! reasons that fit it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use crate::Report;
use crate::time::Date;

/// Which CSV columns hold what: `date=Day,bytes=Traffic (GB),unit=GB[,vendor=Vendor]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Columns {
    pub date: String,
    pub bytes: String,
    /// Bytes per unit of the `bytes` column.
    pub unit: u64,
    pub unit_name: String,
    pub vendor: Option<String>,
}

/// Bytes per unit name.
fn unit_bytes(name: &str) -> Option<u64> {
    Some(match name {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    })
}

impl std::str::FromStr for Columns {
    type Err = String;

    fn from_str(text: &str) -> Result<Columns, String> {
        let mut map = BTreeMap::new();
        for pair in text.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}' is not key=value"))?;
            map.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let take = |key: &str| {
            map.get(key)
                .cloned()
                .ok_or_else(|| format!("--columns needs {key}=…"))
        };
        let unit_name = map.get("unit").cloned().unwrap_or_else(|| "GB".into());
        let unit = unit_bytes(&unit_name).ok_or_else(|| {
            format!("unit '{unit_name}' is not B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
        })?;
        for key in map.keys() {
            if !["date", "bytes", "unit", "vendor"].contains(&key.as_str()) {
                return Err(format!("'{key}' is not one of date, bytes, unit, vendor"));
            }
        }
        Ok(Columns {
            date: take("date")?,
            bytes: take("bytes")?,
            unit,
            unit_name,
            vendor: map.get("vendor").cloned(),
        })
    }
}

/// One day of the export against the meters.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub date: Date,
    pub vendor: String,
    /// The export's figure, in bytes, and half its last decimal (its rounding).
    pub vendor_bytes: u64,
    pub rounding: u64,
    pub meter_bytes: u64,
    pub difference: i64,
    /// Of the meter's bytes.
    pub percent: f64,
    pub mismatch: bool,
    pub reasons: Vec<String>,
}

/// Splits one CSV line (quotes as RFC 4180).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(last) = out.last_mut() {
                    last.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out.into_iter().map(|f| f.trim().to_owned()).collect()
}

/// A decimal figure in `unit` as bytes, and half of its last digit in bytes.
fn figure(text: &str, unit: u64) -> Option<(u64, u64)> {
    let text = text.replace([' ', '_'], "");
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let bytes = (value * unit as f64).round() as u64;
    let rounding = (unit as f64 / 10f64.powi(decimals as i32) / 2.0).floor() as u64;
    Some((bytes, rounding))
}

/// Compares `csv` (a vendor export) with `report`. `vendor` names the export's vendor when it
/// has no vendor column.
pub fn compare(
    report: &Report,
    csv: &str,
    columns: &Columns,
    vendor: Option<&str>,
) -> Result<Vec<Line>, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = fields(lines.next().ok_or("the export is empty")?);
    let index = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "no column '{name}' in the export (it has {})",
                header.join(", ")
            )
        })
    };
    let date_at = index(&columns.date)?;
    let bytes_at = index(&columns.bytes)?;
    let vendor_at = columns.vendor.as_deref().map(index).transpose()?;
    if vendor_at.is_none() && vendor.is_none() {
        return Err("the export has no vendor column: name its vendor with --vendor".into());
    }
    let first = Date::of(report.from);
    let last = Date::of(report.to - 1);
    let mut exported: BTreeMap<(String, Date), (u64, u64)> = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let cells = fields(line);
        let cell = |i: usize| cells.get(i).map(String::as_str).unwrap_or_default();
        let date = Date::parse(cell(date_at))
            .ok_or_else(|| format!("line {}: '{}' is not a date", n + 2, cell(date_at)))?;
        let (bytes, rounding) = figure(cell(bytes_at), columns.unit)
            .ok_or_else(|| format!("line {}: '{}' is not a number", n + 2, cell(bytes_at)))?;
        let name = vendor_at.map_or_else(
            || vendor.unwrap_or_default().to_owned(),
            |i| cell(i).to_owned(),
        );
        if date < first || date > last {
            continue;
        }
        let entry = exported.entry((name, date)).or_default();
        entry.0 += bytes;
        entry.1 += rounding;
    }
    let billed = |vendor: &str, date: Date| -> u64 {
        let usage = report
            .days
            .get(&(vendor.to_owned(), date))
            .copied()
            .unwrap_or_default();
        match report
            .vendors
            .iter()
            .find(|v| v.vendor == vendor)
            .and_then(|v| v.pricing.as_ref())
        {
            Some(pricing) => pricing.billed_bytes(&usage),
            None => usage.sent_bytes + usage.received_bytes,
        }
    };
    let both = |vendor: &str, date: Date| -> u64 {
        let usage = report
            .days
            .get(&(vendor.to_owned(), date))
            .copied()
            .unwrap_or_default();
        usage.sent_bytes + usage.received_bytes
    };
    let received = |vendor: &str, date: Date| -> u64 {
        report
            .days
            .get(&(vendor.to_owned(), date))
            .map_or(0, |u| u.received_bytes)
    };
    Ok(exported
        .into_iter()
        .map(|((vendor, date), (vendor_bytes, rounding))| {
            let meter_bytes = billed(&vendor, date);
            let difference = vendor_bytes as i64 - meter_bytes as i64;
            let mismatch = difference.unsigned_abs() > rounding;
            let near = |bytes: u64| (vendor_bytes as i64 - bytes as i64).unsigned_abs() <= rounding;
            let ratio = vendor_bytes as f64 / meter_bytes.max(1) as f64;
            let gib = (1u64 << 30) as f64 / 1e9;
            let mut reasons = Vec::new();
            if mismatch {
                if (ratio / gib - 1.0).abs() < 0.002 {
                    reasons.push("unit: the export's figures read as GiB would match: is it GB (10^9) where the export means GiB (2^30)?".into());
                } else if (ratio * gib - 1.0).abs() < 0.002 {
                    reasons.push("unit: the export's figures read as GB would match: is it GiB where the export means GB?".into());
                }
                if meter_bytes != both(&vendor, date) && near(both(&vendor, date)) {
                    reasons.push("billed bytes: the vendor counts sent and received bytes (pricing.billed_bytes: sent_and_received)".into());
                }
                if meter_bytes != received(&vendor, date) && near(received(&vendor, date)) {
                    reasons.push("billed bytes: the vendor counts received bytes only (pricing.billed_bytes: received)".into());
                }
                if [date.days() - 1, date.days() + 1]
                    .into_iter()
                    .any(|d| near(billed(&vendor, Date::from_days(d))))
                {
                    reasons.push("day boundary: the export's day matches a neighbouring UTC day (its days are in another time zone)".into());
                }
                if reasons.is_empty() {
                    reasons.push(if difference > 0 {
                        "overhead: the vendor bills more than crossed the meter: TLS or CONNECT header bytes it counts and the meter attributes elsewhere, traffic from outside the fleet on the same account, or a metering gap (meter down, scrape gap)".into()
                    } else {
                        "under-billing: the vendor bills less than crossed the meter: failed requests and refused tunnels it does not bill, or an export not yet final for the day".into()
                    });
                }
            }
            Line {
                date,
                vendor,
                vendor_bytes,
                rounding,
                meter_bytes,
                difference,
                percent: if meter_bytes == 0 { 0.0 } else { 100.0 * difference as f64 / meter_bytes as f64 },
                mismatch,
                reasons,
            }
        })
        .collect())
}

/// The comparison for humans.
pub fn table(lines: &[Line], columns: &Columns) -> String {
    let mut out = format!(
        "The vendor's export ({}) against the meters, per UTC day; a difference within the export's rounding is a match.\n\n{:<10}  {:<12}  {:>18}  {:>18}  {:>15}  {:>8}\n",
        columns.unit_name, "day", "vendor", "export bytes", "meter bytes", "difference", "%"
    );
    for line in lines {
        let _ = writeln!(
            out,
            "{:<10}  {:<12}  {:>18}  {:>18}  {:>15}  {:>7.3}%{}",
            line.date,
            line.vendor,
            line.vendor_bytes,
            line.meter_bytes,
            line.difference,
            line.percent,
            if line.mismatch { "  MISMATCH" } else { "" }
        );
        for reason in &line.reasons {
            let _ = writeln!(out, "    {reason}");
        }
    }
    let mismatches = lines.iter().filter(|l| l.mismatch).count();
    let _ = writeln!(
        out,
        "\n{mismatches} of {} days differ beyond rounding.",
        lines.len()
    );
    out
}

/// The comparison as JSON.
pub fn json(lines: &[Line]) -> String {
    let value: Vec<_> = lines
        .iter()
        .map(|l| {
            json!({
                "date": l.date.to_string(),
                "vendor": l.vendor,
                "export_bytes": l.vendor_bytes,
                "rounding_bytes": l.rounding,
                "meter_bytes": l.meter_bytes,
                "difference_bytes": l.difference,
                "difference_percent": l.percent,
                "mismatch": l.mismatch,
                "reasons": l.reasons,
            })
        })
        .collect();
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_name_the_fields_and_the_unit() {
        let columns: Columns = "date=Day,bytes=Traffic (GB),unit=GiB".parse().unwrap();
        assert_eq!(columns.bytes, "Traffic (GB)");
        assert_eq!(columns.unit, 1 << 30);
        assert!("date=Day".parse::<Columns>().is_err());
        assert!("date=Day,bytes=B,unit=GBs".parse::<Columns>().is_err());
    }

    #[test]
    fn a_figure_knows_its_rounding() {
        assert_eq!(
            figure("1.234", 1_000_000_000),
            Some((1_234_000_000, 500_000))
        );
        assert_eq!(
            figure("12", 1_000_000_000),
            Some((12_000_000_000, 500_000_000))
        );
        assert_eq!(
            fields("\"2026-11-01\",\"1,5\",x"),
            ["2026-11-01", "1,5", "x"]
        );
    }
}
