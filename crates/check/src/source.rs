//! Where the figures come from: a meter's `/metrics`, or Prometheus.

use std::collections::BTreeMap;

use http_body_util::BodyExt;
use pt_metrics::exposition::Scrape;
use pt_metrics::spec::{self, FamilySpec};
use serde::Deserialize;

/// The families the checks read.
pub const FAMILIES: [FamilySpec; 7] = [
    spec::REQUESTS,
    spec::SENT_BYTES,
    spec::RECEIVED_BYTES,
    spec::DESTINATION_REQUESTS,
    spec::DESTINATION_SENT_BYTES,
    spec::DESTINATION_RECEIVED_BYTES,
    spec::UPSTREAM_ERRORS,
];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: {what}")]
    Fetch { url: String, what: String },
    #[error("{url}: the answer is not a metrics exposition: {what}")]
    Exposition { url: String, what: String },
    #[error("{url}: Prometheus answered: {what}")]
    Prometheus { url: String, what: String },
}

/// Where to read the meter's figures.
#[derive(Clone, Debug)]
pub enum Source {
    /// A meter's `/metrics` URL (one meter).
    MetricsUrl(String),
    /// A Prometheus server: every meter it scrapes, summed. With `range`, the increase over
    /// that window (rounded, so not exact); without, the counter totals at `time` (or now).
    Prometheus {
        url: String,
        time: Option<String>,
        range: Option<String>,
    },
}

/// One series after summing: its labels (those of the family) and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub labels: BTreeMap<String, String>,
    pub value: u64,
}

impl Row {
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// The rows of every family in [`FAMILIES`], keyed by family name.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub families: BTreeMap<&'static str, Vec<Row>>,
}

impl Figures {
    pub fn rows(&self, family: FamilySpec) -> &[Row] {
        self.families
            .get(family.name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Sums of a family grouped by some of its labels.
    pub fn sum_by(&self, family: FamilySpec, by: &[&str]) -> BTreeMap<Vec<String>, u64> {
        let mut out = BTreeMap::new();
        for row in self.rows(family) {
            let key = by.iter().map(|l| row.label(l).to_owned()).collect();
            *out.entry(key).or_insert(0) += row.value;
        }
        out
    }

    /// Reads one scrape of a meter.
    pub fn from_scrape(scrape: &Scrape) -> Figures {
        let mut families = BTreeMap::new();
        for family in FAMILIES {
            let mut summed: BTreeMap<BTreeMap<String, String>, u64> = BTreeMap::new();
            for sample in scrape.select(&family.series(), &[]) {
                let labels = family
                    .labels
                    .iter()
                    .map(|l| {
                        (
                            l.to_string(),
                            sample.label(l).unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                *summed.entry(labels).or_insert(0) += sample.as_u64().unwrap_or(0);
            }
            families.insert(
                family.name,
                summed
                    .into_iter()
                    .map(|(labels, value)| Row { labels, value })
                    .collect(),
            );
        }
        Figures { families }
    }

    /// Fetches the figures from `source`.
    pub async fn fetch(source: &Source) -> Result<Figures, SourceError> {
        match source {
            Source::MetricsUrl(url) => {
                let text = http_get(url).await?;
                let scrape = Scrape::parse(&text).map_err(|e| SourceError::Exposition {
                    url: url.clone(),
                    what: e.to_string(),
                })?;
                Ok(Figures::from_scrape(&scrape))
            }
            Source::Prometheus { url, time, range } => {
                let mut families = BTreeMap::new();
                for family in FAMILIES {
                    let series = family.series();
                    let selector = match range {
                        Some(range) => format!("increase({series}[{range}])"),
                        None => series,
                    };
                    let query = format!("sum by ({}) ({selector})", family.labels.join(","));
                    families.insert(
                        family.name,
                        prometheus_query(url, &query, time.as_deref()).await?,
                    );
                }
                Ok(Figures { families })
            }
        }
    }
}

/// `GET url` over plain HTTP; the body as text.
pub async fn http_get(url: &str) -> Result<String, SourceError> {
    let fail = |what: String| SourceError::Fetch {
        url: url.to_owned(),
        what,
    };
    let uri: http::Uri = url.parse().map_err(|_| fail("not a URL".into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(fail("only http:// URLs are supported".into()));
    }
    let host = uri.host().ok_or_else(|| fail("no host".into()))?;
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let mut sender = pt_load::client::http1(stream)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(host),
        )
        .header(
            http::header::ACCEPT,
            "application/openmetrics-text, text/plain, application/json",
        )
        .body(pt_load::client::empty())
        .map_err(|e| fail(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}: {}", text.trim())));
    }
    Ok(text)
}

#[derive(Deserialize)]
struct PromData {
    result: Vec<PromSample>,
}

#[derive(Deserialize)]
struct PromSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn encode_query(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `GET <base>/api/v1/<endpoint>?<params>`; the `data` of a successful answer.
pub async fn prometheus_api(
    base: &str,
    endpoint: &str,
    params: &[(&str, &str)],
) -> Result<serde_json::Value, SourceError> {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_query(v)))
        .collect();
    let url = format!(
        "{}/api/v1/{endpoint}?{}",
        base.trim_end_matches('/'),
        query.join("&")
    );
    let text = http_get(&url).await?;
    #[derive(Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        error: String,
        #[serde(default)]
        data: serde_json::Value,
    }
    let answer: Answer = serde_json::from_str(&text).map_err(|e| SourceError::Prometheus {
        url: url.clone(),
        what: e.to_string(),
    })?;
    if answer.status != "success" {
        return Err(SourceError::Prometheus {
            url,
            what: answer.error,
        });
    }
    Ok(answer.data)
}

/// An instant query; values are rounded to integers (counters are integers).
pub async fn prometheus_query(
    base: &str,
    query: &str,
    time: Option<&str>,
) -> Result<Vec<Row>, SourceError> {
    let mut params = vec![("query", query)];
    if let Some(time) = time {
        params.push(("time", time));
    }
    let data = prometheus_api(base, "query", &params).await?;
    let data: PromData = serde_json::from_value(data).map_err(|e| SourceError::Prometheus {
        url: format!("{base} ({query})"),
        what: e.to_string(),
    })?;
    Ok(data
        .result
        .into_iter()
        .map(|s| Row {
            labels: s.metric,
            value: s
                .value
                .1
                .parse::<f64>()
                .map(|v| v.round().max(0.0) as u64)
                .unwrap_or(0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_summed_to_the_family_labels() {
        let text = "proxy_requests_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\",protocol=\"http1\",status_class=\"2xx\"} 3\n\
                    proxy_requests_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\",protocol=\"h2\",status_class=\"2xx\"} 4\n\
                    proxy_sent_bytes_total{proxy_vendor=\"a\",source_namespace=\"n\",source_pod=\"p\"} 1000\n";
        let figures = Figures::from_scrape(&Scrape::parse(text).unwrap());
        assert_eq!(
            figures.sum_by(spec::REQUESTS, &["proxy_vendor"])[&vec!["a".to_owned()]],
            7
        );
        assert_eq!(figures.rows(spec::SENT_BYTES)[0].value, 1000);
        assert!(figures.rows(spec::DESTINATION_REQUESTS).is_empty());
    }

    #[test]
    fn promql_is_url_encoded() {
        assert_eq!(
            encode_query("sum by (a) (x[5m])"),
            "sum%20by%20%28a%29%20%28x%5B5m%5D%29"
        );
    }
}
