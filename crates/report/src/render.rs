//! The report as a table, CSV or JSON.

use std::fmt::Write;

use pt_config::pricing::Usage;
use serde_json::{Value, json};

use crate::Report;

/// Unix seconds as RFC 3339 (UTC).
pub fn timestamp(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn money(amount: Option<f64>) -> String {
    amount.map_or_else(String::new, |a| format!("{a:.2}"))
}

fn usage_cells(u: &Usage) -> [String; 4] {
    [
        u.requests.to_string(),
        u.successful_requests.to_string(),
        u.sent_bytes.to_string(),
        u.received_bytes.to_string(),
    ]
}

const USAGE_COLUMNS: [&str; 4] = [
    "requests",
    "successful_requests",
    "sent_bytes",
    "received_bytes",
];

fn currency_of<'a>(report: &'a Report, vendor: &str) -> &'a str {
    report
        .vendors
        .iter()
        .find(|v| v.vendor == vendor)
        .and_then(|v| v.pricing.as_ref())
        .map_or("", |p| p.currency.as_str())
}

fn grid(report: &Report) -> Vec<Vec<String>> {
    let mut lines = vec![
        report
            .columns
            .iter()
            .chain(USAGE_COLUMNS.iter())
            .chain(["cost", "currency"].iter())
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
    ];
    for row in &report.rows {
        let vendor = row.key.first().map_or("", String::as_str);
        let mut line = row.key.clone();
        line.extend(usage_cells(&row.usage));
        line.push(money(row.cost));
        line.push(currency_of(report, vendor).to_owned());
        lines.push(line);
    }
    lines
}

/// Aligned columns, then each vendor's billing cycles and money.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "Usage from {} to {}: exact, every counter increment of every series (restarts and pod churn included).\n\n",
        timestamp(report.from),
        timestamp(report.to)
    );
    let lines = grid(report);
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, width))| {
                if i < report.columns.len() {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let _ = writeln!(out, "\nPer vendor and billing cycle:");
    for vendor in &report.vendors {
        let Some(pricing) = &vendor.pricing else {
            let _ = writeln!(
                out,
                "  {}: no prices (vendors[].pricing) exported by its meters",
                vendor.vendor
            );
            continue;
        };
        for cycle in &vendor.cycles {
            let _ = writeln!(
                out,
                "  {} cycle {} to {}{}: billed {} bytes, {} requests; fee {:.2} + traffic beyond the included {} bytes {:.2} + requests {:.2} = {:.2} {}",
                vendor.vendor,
                cycle.start,
                cycle.end,
                if cycle.partial {
                    " (partly in the period: fee and included traffic applied in full)"
                } else {
                    ""
                },
                pricing.billed_bytes(&cycle.usage),
                pricing.billed_requests(&cycle.usage),
                cycle.cost.fee,
                pricing.included_bytes,
                cycle.cost.bytes,
                cycle.cost.requests,
                cycle.cost.total(),
                pricing.currency,
            );
        }
        let _ = writeln!(
            out,
            "  {} total: {} {}{}",
            vendor.vendor,
            money(vendor.cost()),
            pricing.currency,
            pricing
                .monthly_budget
                .map_or_else(String::new, |b| format!(" (monthly budget {b:.2})")),
        );
    }
    out
}

/// One line per row, with a header; money with two decimals.
pub fn csv(report: &Report) -> String {
    let mut out = String::new();
    for line in grid(report) {
        let cells: Vec<String> = line
            .iter()
            .map(|c| {
                if c.contains([',', '"', '\n']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "requests": u.requests,
        "successful_requests": u.successful_requests,
        "sent_bytes": u.sent_bytes,
        "received_bytes": u.received_bytes,
    })
}

/// Everything, numbers as numbers.
pub fn json(report: &Report) -> String {
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|row| {
            let mut value = usage_json(&row.usage);
            for (column, key) in report.columns.iter().zip(&row.key) {
                value[*column] = json!(key);
            }
            value["cost"] = json!(row.cost);
            value
        })
        .collect();
    let vendors: Vec<Value> = report
        .vendors
        .iter()
        .map(|v| {
            json!({
                "vendor": v.vendor,
                "currency": v.pricing.as_ref().map(|p| p.currency.clone()),
                "usage": usage_json(&v.usage),
                "cost": v.cost(),
                "monthly_budget": v.pricing.as_ref().and_then(|p| p.monthly_budget),
                "cycles": v.cycles.iter().map(|c| json!({
                    "start": c.start.to_string(),
                    "end": c.end.to_string(),
                    "partial": c.partial,
                    "usage": usage_json(&c.usage),
                    "billed_bytes": v.pricing.as_ref().map(|p| p.billed_bytes(&c.usage)),
                    "billed_requests": v.pricing.as_ref().map(|p| p.billed_requests(&c.usage)),
                    "fee": c.cost.fee,
                    "bytes_cost": c.cost.bytes,
                    "requests_cost": c.cost.requests,
                    "cost": c.cost.total(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let value = json!({
        "from": timestamp(report.from),
        "to": timestamp(report.to),
        "columns": report.columns,
        "rows": rows,
        "vendors": vendors,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}
