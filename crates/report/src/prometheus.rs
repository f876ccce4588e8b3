//! Reading counters from Prometheus' HTTP API, chunk by chunk.
//!
//! Per chunk `(s, t]` and family, two instant queries at `t`: `last_over_time(F[t-s])` (each
//! series' last value) and `resets(F[2 chunks])` (whether the counter went down in this chunk or
//! the one before, which covers a reset between the last sample of one chunk and the first of
//! the next). Without a reset, a series' increase over the chunk is its last value minus its
//! last value before; with one, the chunk's raw samples of that series are read and folded.
//! A value below the previous one also counts as a reset, whatever lies between.

use std::collections::{HashMap, HashSet};

use pt_check::source::prometheus_api;
use pt_config::pricing::Pricing;
use pt_metrics::spec::{self, FamilySpec, Kind, label};
use serde_json::Value;

use crate::fold::{counter_value, increase};
use crate::time::{DAY, Date};
use crate::{Options, ReportError};

type Labels = Vec<(String, String)>;

/// A counter family and the labels its increments are kept by.
#[derive(Clone, Debug)]
pub struct Family {
    series: String,
    key: Vec<&'static str>,
}

impl Family {
    pub fn new(spec: FamilySpec, key: &[&'static str]) -> Family {
        debug_assert_eq!(spec.kind, Kind::Counter);
        Family {
            series: spec.series(),
            key: key.to_vec(),
        }
    }

    /// Whether the last key label is `status_class`.
    pub fn has_status(&self) -> bool {
        self.key.last() == Some(&label::STATUS_CLASS)
    }
}

/// A family's increments over the period, by key values and UTC day.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub increments: HashMap<(Vec<String>, Date), u64>,
    /// Series seen in the period.
    pub series: usize,
}

#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    selector: String,
    from: i64,
    to: i64,
    chunk: i64,
    lookback: i64,
    progress: Option<fn(Date, usize, usize)>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Prometheus {
    pub fn new(options: &Options) -> Prometheus {
        Prometheus {
            base: options.prometheus.clone(),
            selector: options.selector.clone(),
            from: options.from,
            to: options.to,
            chunk: options.chunk.max(1),
            lookback: options.lookback.max(1),
            progress: options.progress,
        }
    }

    pub fn without_progress(&self) -> Prometheus {
        Prometheus {
            progress: None,
            ..self.clone()
        }
    }

    fn selector(&self, series: &str) -> String {
        format!("{series}{{{}}}", self.selector)
    }

    async fn query(&self, query: &str, time: i64) -> Result<Vec<Value>, ReportError> {
        let time = time.to_string();
        let data =
            prometheus_api(&self.base, "query", &[("query", query), ("time", &time)]).await?;
        match data.get("result") {
            Some(Value::Array(result)) => Ok(result.clone()),
            _ => Err(ReportError::Answer {
                query: query.to_owned(),
                what: data.to_string(),
            }),
        }
    }

    /// An instant vector: each series' labels (without `__name__`) and value text.
    async fn vector(&self, query: &str, time: i64) -> Result<Vec<(Labels, String)>, ReportError> {
        let bad = |what: &str| ReportError::Answer {
            query: query.to_owned(),
            what: what.to_owned(),
        };
        self.query(query, time)
            .await?
            .into_iter()
            .map(|item| {
                let labels = labels_of(&item).ok_or_else(|| bad("a series without labels"))?;
                let value = item["value"][1]
                    .as_str()
                    .ok_or_else(|| bad("a sample without a value"))?;
                Ok((labels, value.to_owned()))
            })
            .collect()
    }

    /// The increments of `family` over the period.
    pub async fn scan(&self, family: &Family) -> Result<Scan, ReportError> {
        let selector = self.selector(&family.series);
        let mut last: HashMap<Labels, u64> = HashMap::new();
        for (labels, value) in self
            .vector(
                &format!("last_over_time({selector}[{}s])", self.lookback),
                self.from,
            )
            .await?
        {
            if let Some(value) = counter_value(&value) {
                last.insert(labels, value);
            }
        }
        let mut scan = Scan::default();
        let mut seen: HashSet<Labels> = HashSet::new();
        let days = usize::try_from((self.to - self.from + DAY - 1) / DAY).unwrap_or(0);
        let mut start = self.from;
        while start < self.to {
            // Chunks end on multiples of the chunk length, so none spans two UTC days.
            let end = ((start / self.chunk + 1) * self.chunk).min(self.to);
            let values = self
                .vector(
                    &format!("last_over_time({selector}[{}s])", end - start),
                    end,
                )
                .await?;
            let reset: HashSet<Labels> = self
                .vector(
                    &format!("resets({selector}[{}s])", end - start + self.chunk),
                    end,
                )
                .await?
                .into_iter()
                .filter(|(_, v)| v != "0")
                .map(|(labels, _)| labels)
                .collect();
            let day = Date::of(end - 1);
            for (labels, text) in values {
                let Some(value) = counter_value(&text) else {
                    continue;
                };
                let previous = last.get(&labels).copied();
                let amount = if reset.contains(&labels) || previous.is_some_and(|p| value < p) {
                    increase(
                        previous,
                        self.samples(&family.series, &labels, start, end).await?,
                    )
                } else {
                    value - previous.unwrap_or(0)
                };
                let key = family
                    .key
                    .iter()
                    .map(|name| {
                        labels
                            .iter()
                            .find(|(k, _)| k == name)
                            .map_or_else(String::new, |(_, v)| v.clone())
                    })
                    .collect();
                if amount > 0 {
                    *scan.increments.entry((key, day)).or_default() += amount;
                }
                last.insert(labels.clone(), value);
                seen.insert(labels);
            }
            if let Some(progress) = self.progress
                && (end % DAY == 0 || end == self.to)
            {
                let done = usize::try_from((end - self.from + DAY - 1) / DAY).unwrap_or(0);
                progress(day, done, days);
            }
            start = end;
        }
        scan.series = seen.len();
        Ok(scan)
    }

    /// The raw samples of one series in `(start, end]`.
    async fn samples(
        &self,
        series: &str,
        labels: &Labels,
        start: i64,
        end: i64,
    ) -> Result<Vec<u64>, ReportError> {
        let mut matchers = vec![format!("__name__=\"{}\"", escape(series))];
        matchers.extend(labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))));
        let query = format!("{{{}}}[{}s]", matchers.join(","), end - start);
        let result = self.query(&query, end).await?;
        // A selector with every label also matches series with more labels: keep the one.
        let Some(item) = result
            .iter()
            .find(|item| labels_of(item).as_ref() == Some(labels))
        else {
            return Ok(Vec::new());
        };
        Ok(item["values"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v[1].as_str().and_then(counter_value))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The prices the meters exported during the period, last values, per vendor.
    pub async fn prices(&self) -> Result<HashMap<String, Pricing>, ReportError> {
        let window = self.to - self.from + self.lookback;
        let read = |family: FamilySpec, by: &'static [&'static str]| {
            let query = format!(
                "max by ({}) (last_over_time({}[{window}s]))",
                by.join(", "),
                self.selector(family.name)
            );
            async move { self.vector(&query, self.to).await }
        };
        let number = |text: &str| text.parse::<f64>().ok().filter(|v| v.is_finite());
        let get = |labels: &Labels, name: &str| {
            labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut prices: HashMap<String, Pricing> = HashMap::new();
        const VENDOR_CURRENCY_DIRECTION: &[&str] =
            &[label::PROXY_VENDOR, label::CURRENCY, label::DIRECTION];
        for (labels, value) in read(spec::PRICE_PER_BYTE, VENDOR_CURRENCY_DIRECTION).await? {
            let pricing = prices
                .entry(get(&labels, label::PROXY_VENDOR))
                .or_insert(Pricing {
                    currency: get(&labels, label::CURRENCY),
                    byte_price: 0.0,
                    bills_sent_bytes: false,
                    request_price: 0.0,
                    successful_requests_only: false,
                    monthly_fee: 0.0,
                    included_bytes: 0,
                    cycle_start_day: 1,
                    monthly_budget: None,
                });
            let price = number(&value).unwrap_or(0.0);
            if get(&labels, label::DIRECTION) == "sent" {
                pricing.bills_sent_bytes = price > 0.0;
            }
            pricing.byte_price = pricing.byte_price.max(price);
        }
        const VENDOR_CURRENCY_REQUESTS: &[&str] =
            &[label::PROXY_VENDOR, label::CURRENCY, label::REQUESTS];
        for (labels, value) in read(spec::PRICE_PER_REQUEST, VENDOR_CURRENCY_REQUESTS).await? {
            if let Some(pricing) = prices.get_mut(&get(&labels, label::PROXY_VENDOR)) {
                pricing.request_price = number(&value).unwrap_or(0.0);
                pricing.successful_requests_only = get(&labels, label::REQUESTS) == "successful";
            }
        }
        const VENDOR: &[&str] = &[label::PROXY_VENDOR];
        for (family, set) in [
            (
                spec::MONTHLY_FEE,
                (|p, v| p.monthly_fee = v) as fn(&mut Pricing, f64),
            ),
            (spec::INCLUDED_BYTES, |p, v| p.included_bytes = v as u64),
            (spec::BILLING_CYCLE_START_DAY, |p, v| {
                p.cycle_start_day = v.clamp(1.0, 28.0) as u8
            }),
            (spec::MONTHLY_BUDGET, |p, v| p.monthly_budget = Some(v)),
        ] {
            for (labels, value) in read(family, VENDOR).await? {
                if let (Some(pricing), Some(v)) = (
                    prices.get_mut(&get(&labels, label::PROXY_VENDOR)),
                    number(&value),
                ) {
                    set(pricing, v);
                }
            }
        }
        Ok(prices)
    }
}

fn labels_of(item: &Value) -> Option<Labels> {
    let metric = item.get("metric")?.as_object()?;
    let mut labels: Labels = metric
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    labels.sort();
    Some(labels)
}
