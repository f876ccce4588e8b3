//! `proxy-telemetry report`: the usage and cost of a billing period, from Prometheus.
//!
//! Bytes and requests are exact: not `increase()`, which extrapolates to the edges of its
//! window, but the sum of every increment of every counter series between the last sample at or
//! before `from` and the last sample at or before `to`, across counter resets (meter restarts)
//! and series that start or end inside the period (pod churn). The period is read in chunks
//! (an hour by default): per chunk and series Prometheus returns the last value and whether the
//! counter was reset ([`prometheus`]); only a chunk with a reset is read sample by sample
//! ([`fold`]). Money follows the prices the meters export from their configuration, with the
//! monthly fee and its included traffic applied once per vendor and billing cycle. [`compare`]
//! puts a vendor's own usage export beside the report, day by day.

pub mod compare;
pub mod fold;
pub mod prometheus;
pub mod render;
pub mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pt_config::pricing::{Cost, Pricing, Usage};
use pt_metrics::spec::{self, label};

use crate::prometheus::{Family, Prometheus, Scan};
use crate::time::Date;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Prometheus(#[from] pt_check::SourceError),
    #[error("Prometheus answered {query} with something else than expected: {what}")]
    Answer { query: String, what: String },
    #[error(
        "no sample of the meters' counters from {from} to {to}: is this the Prometheus that scrapes the meters, and is the period within its retention?"
    )]
    NoData { from: String, to: String },
}

/// How rows are grouped; every row is also per vendor (prices and currencies are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum By {
    Vendor,
    Namespace,
    Workload,
    Pod,
    Destination,
}

impl By {
    /// `vendor,workload` and the like.
    pub fn parse_list(text: &str) -> Result<Vec<By>, String> {
        let mut by = vec![By::Vendor];
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let item = match word {
                "vendor" => By::Vendor,
                "namespace" => By::Namespace,
                "workload" => By::Workload,
                "pod" => By::Pod,
                "destination" => By::Destination,
                other => {
                    return Err(format!(
                        "'{other}' is not one of vendor, namespace, workload, pod, destination"
                    ));
                }
            };
            if !by.contains(&item) {
                by.push(item);
            }
        }
        if by.contains(&By::Destination) && by.len() > 2 {
            return Err(
                "destination cannot be combined with namespace, workload or pod: per-destination counters carry no pod (docs/metrics.md)".into(),
            );
        }
        Ok(by)
    }

    /// The row columns and the labels they come from.
    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            By::Vendor => &[("vendor", label::PROXY_VENDOR)],
            By::Namespace => &[("namespace", label::SOURCE_NAMESPACE)],
            By::Workload => &[
                ("namespace", label::SOURCE_NAMESPACE),
                ("workload", label::SOURCE_WORKLOAD),
            ],
            By::Pod => &[
                ("namespace", label::SOURCE_NAMESPACE),
                ("pod", label::SOURCE_POD),
            ],
            By::Destination => &[("destination", label::DESTINATION)],
        }
    }
}

/// What to report.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prometheus' base URL.
    pub prometheus: String,
    /// Unix seconds; the period is (from, to].
    pub from: i64,
    pub to: i64,
    pub by: Vec<By>,
    /// Label matchers every series must also match, e.g. `job="proxy-telemetry"` (empty: all).
    pub selector: String,
    /// Seconds read per query.
    pub chunk: i64,
    /// How far before `from` a series' last sample is looked for.
    pub lookback: i64,
    /// Called with the day just read, for progress on long periods.
    pub progress: Option<fn(Date, usize, usize)>,
}

/// One row: a vendor and the values of the `by` columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Vec<String>,
    pub usage: Usage,
    /// This row's share of its vendor's cost (by billed bytes and billed requests).
    pub cost: Option<f64>,
}

/// One billing cycle of a vendor, as far as the period covers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cycle {
    pub start: Date,
    /// The first day of the next cycle.
    pub end: Date,
    /// The period covers only part of the cycle: the fee and included traffic still apply in
    /// full, so the figure matches an invoice only for whole cycles.
    pub partial: bool,
    pub usage: Usage,
    pub cost: Cost,
}

/// A vendor's totals over the period.
#[derive(Clone, Debug, PartialEq)]
pub struct VendorTotal {
    pub vendor: String,
    pub usage: Usage,
    pub pricing: Option<Pricing>,
    pub cycles: Vec<Cycle>,
}

impl VendorTotal {
    pub fn cost(&self) -> Option<f64> {
        self.pricing
            .as_ref()
            .map(|_| self.cycles.iter().map(|c| c.cost.total()).sum())
    }
}

/// The report of a period.
#[derive(Clone, Debug)]
pub struct Report {
    pub from: i64,
    pub to: i64,
    /// Names of the key columns of [`Row::key`].
    pub columns: Vec<&'static str>,
    pub rows: Vec<Row>,
    pub vendors: Vec<VendorTotal>,
    /// Per vendor and UTC day (of the chunk end): what `--compare` reads.
    pub days: BTreeMap<(String, Date), Usage>,
}

/// Which part of [`Usage`] a family's increments go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sent,
    Received,
    Requests,
}

fn add(usage: &mut Usage, role: Role, successful: bool, amount: u64) {
    match role {
        Role::Sent => usage.sent_bytes += amount,
        Role::Received => usage.received_bytes += amount,
        Role::Requests => {
            usage.requests += amount;
            if successful {
                usage.successful_requests += amount;
            }
        }
    }
}

/// Reads the period and computes the report.
pub async fn run(options: &Options) -> Result<Report, ReportError> {
    let prometheus = Prometheus::new(options);
    let mut columns: Vec<(&'static str, &'static str)> = Vec::new();
    for by in &options.by {
        for column in by.columns() {
            if !columns.contains(column) {
                columns.push(*column);
            }
        }
    }
    let by_destination = options.by.contains(&By::Destination);
    let row_labels: Vec<&'static str> = columns.iter().map(|(_, l)| *l).collect();

    // Per-pod families give the vendor totals (and the rows unless by destination).
    let pod_key: Vec<&'static str> = if by_destination {
        vec![label::PROXY_VENDOR]
    } else {
        row_labels.clone()
    };
    let mut scans = vec![
        (Role::Sent, false, Family::new(spec::SENT_BYTES, &pod_key)),
        (
            Role::Received,
            false,
            Family::new(spec::RECEIVED_BYTES, &pod_key),
        ),
        (
            Role::Requests,
            false,
            Family::new(spec::REQUESTS, &with_status(&pod_key)),
        ),
    ];
    if by_destination {
        scans.extend([
            (
                Role::Sent,
                true,
                Family::new(spec::DESTINATION_SENT_BYTES, &row_labels),
            ),
            (
                Role::Received,
                true,
                Family::new(spec::DESTINATION_RECEIVED_BYTES, &row_labels),
            ),
            (
                Role::Requests,
                true,
                Family::new(spec::DESTINATION_REQUESTS, &row_labels),
            ),
        ]);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (_, _, family)) in scans.iter().enumerate() {
        // One progress line: the first family's (they advance together).
        let prometheus = if index == 0 {
            prometheus.clone()
        } else {
            prometheus.without_progress()
        };
        let family = family.clone();
        tasks.spawn(async move { (index, prometheus.scan(&family).await) });
    }
    let mut results: Vec<Option<Scan>> = vec![None; scans.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, scan) = joined.map_err(|e| ReportError::Answer {
            query: "a scan".into(),
            what: e.to_string(),
        })?;
        results[index] = Some(scan?);
    }
    let prices = prometheus.prices().await?;

    let mut rows: BTreeMap<Vec<String>, Usage> = BTreeMap::new();
    let mut days: BTreeMap<(String, Date), Usage> = BTreeMap::new();
    if results.iter().flatten().all(|scan| scan.series == 0) {
        return Err(ReportError::NoData {
            from: render::timestamp(options.from),
            to: render::timestamp(options.to),
        });
    }
    for ((role, destination_family, family), scan) in scans.iter().zip(results) {
        let Some(scan) = scan else { continue };
        for ((key, day), amount) in scan.increments {
            let (key, successful) = if family.has_status() {
                let (status, rest) = key
                    .split_last()
                    .map_or(("", &key[..]), |(s, r)| (s.as_str(), r));
                (rest.to_vec(), status == "2xx" || status == "3xx")
            } else {
                (key, false)
            };
            if !destination_family {
                let vendor = key.first().cloned().unwrap_or_default();
                add(
                    days.entry((vendor, day)).or_default(),
                    *role,
                    successful,
                    amount,
                );
            }
            if *destination_family || !by_destination {
                add(rows.entry(key).or_default(), *role, successful, amount);
            }
        }
    }
    let vendors = vendor_totals(&days, &prices, options);
    let rows = rows
        .into_iter()
        .map(|(key, usage)| {
            let cost = vendors
                .iter()
                .find(|v| Some(&v.vendor) == key.first())
                .and_then(|v| share(v, &usage, by_destination));
            Row { key, usage, cost }
        })
        .collect();
    Ok(Report {
        from: options.from,
        to: options.to,
        columns: columns.iter().map(|(c, _)| *c).collect(),
        rows,
        vendors,
        days,
    })
}

fn with_status(labels: &[&'static str]) -> Vec<&'static str> {
    let mut out = labels.to_vec();
    out.push(label::STATUS_CLASS);
    out
}

/// Per vendor: the usage of each billing cycle the period touches, and its cost.
fn vendor_totals(
    days: &BTreeMap<(String, Date), Usage>,
    prices: &HashMap<String, Pricing>,
    options: &Options,
) -> Vec<VendorTotal> {
    let first = Date::of(options.from);
    let last = Date::of(options.to - 1);
    let vendors: BTreeSet<&String> = days.keys().map(|(v, _)| v).collect();
    vendors
        .into_iter()
        .map(|vendor| {
            let pricing = prices.get(vendor).cloned();
            let start_day = pricing.as_ref().map_or(1, |p| p.cycle_start_day);
            let mut cycles: BTreeMap<Date, Usage> = BTreeMap::new();
            let mut usage = Usage::default();
            for ((_, day), used) in days.iter().filter(|((v, _), _)| v == vendor) {
                *cycles
                    .entry(time::cycle_start(*day, start_day))
                    .or_default() += *used;
                usage += *used;
            }
            let cycles = cycles
                .into_iter()
                .map(|(start, used)| {
                    let end = time::cycle_end(start);
                    Cycle {
                        start,
                        end,
                        partial: start < first || end.days() > last.days() + 1,
                        usage: used,
                        cost: pricing
                            .as_ref()
                            .map(|p| p.cycle_cost(&used))
                            .unwrap_or_default(),
                    }
                })
                .collect();
            VendorTotal {
                vendor: vendor.clone(),
                usage,
                pricing,
                cycles,
            }
        })
        .collect()
}

/// A row's share of its vendor's cost: the fee and byte charges by billed bytes, the request
/// charges by billed requests (by all requests for destination rows, which carry no status).
fn share(vendor: &VendorTotal, usage: &Usage, by_destination: bool) -> Option<f64> {
    let pricing = vendor.pricing.as_ref()?;
    let ratio = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    let (fee_and_bytes, requests) = vendor.cycles.iter().fold((0.0, 0.0), |(b, r), c| {
        (b + c.cost.fee + c.cost.bytes, r + c.cost.requests)
    });
    let bytes_share = ratio(
        pricing.billed_bytes(usage),
        pricing.billed_bytes(&vendor.usage),
    );
    let requests_share = if by_destination {
        ratio(usage.requests, vendor.usage.requests)
    } else {
        ratio(
            pricing.billed_requests(usage),
            pricing.billed_requests(&vendor.usage),
        )
    };
    Some(fee_and_bytes * bytes_share + requests * requests_share)
}
