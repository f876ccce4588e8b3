//! A reader for the Prometheus / OpenMetrics text exposition, enough for scrapes of the meter.
//!
//! Used by the checker (`check --metrics-url`) and by tests that assert on a live scrape. It reads
//! sample lines (`name{label="value",...} value [timestamp]`), unescapes label values, and keeps
//! each value's literal so that counters compare exactly as integers (`as_u64`) instead of
//! through `f64`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order of the line.
    pub labels: Vec<(String, String)>,
    /// The value as written.
    pub raw: String,
}

impl Sample {
    /// The label's value, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value as a float (`+Inf`, `-Inf` and `NaN` included).
    pub fn value(&self) -> f64 {
        match self.raw.as_str() {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            raw => raw.parse().unwrap_or(f64::NAN),
        }
    }

    /// The value as an exact integer, when it is written as one.
    pub fn as_u64(&self) -> Option<u64> {
        self.raw.parse().ok()
    }

    /// Whether every `(label, value)` pair matches.
    pub fn matches(&self, matchers: &[(&str, &str)]) -> bool {
        matchers.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A malformed exposition line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
}

/// Parses every sample of an exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|what| ParseError {
            line: index + 1,
            what,
        })?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("empty metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_owned();
            let body = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let (value, consumed) = unescape(body)?;
            labels.push((key, value));
            rest = &body[consumed..];
        }
    }
    let raw = rest
        .split_whitespace()
        .next()
        .ok_or("sample without value")?
        .to_owned();
    Ok(Sample {
        name: name.to_owned(),
        labels,
        raw,
    })
}

/// Reads a label value up to its closing quote; returns it and the bytes consumed.
fn unescape(body: &str) -> Result<(String, usize), &'static str> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                _ => return Err("bad escape in label value"),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value")
}

/// A parsed scrape with the queries tests and the checker need.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, ParseError> {
        parse(text).map(|samples| Scrape { samples })
    }

    /// Samples named `name` whose labels match.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        matchers: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(matchers))
    }

    /// The exact integer sum of the matching samples (non-integers count as 0).
    pub fn sum(&self, name: &str, matchers: &[(&str, &str)]) -> u64 {
        self.select(name, matchers)
            .map(|s| s.as_u64().unwrap_or(0))
            .sum()
    }

    /// Sums of the matching samples grouped by the values of `by` (missing labels are "").
    pub fn sum_by(&self, name: &str, by: &[&str]) -> BTreeMap<Vec<String>, u64> {
        let mut groups = BTreeMap::new();
        for sample in self.select(name, &[]) {
            let key = by
                .iter()
                .map(|l| sample.label(l).unwrap_or_default().to_owned())
                .collect();
            *groups.entry(key).or_insert(0) += sample.as_u64().unwrap_or(0);
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_escapes_are_read() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    x_total{a=\"1\",b=\"q\\\"uote\\\\\\n\"} 42\n\
                    up 1 1700000000\n\
                    h_bucket{le=\"+Inf\"} 3\n# EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.samples.len(), 3);
        let x = &scrape.samples[0];
        assert_eq!(x.label("b"), Some("q\"uote\\\n"));
        assert_eq!(x.as_u64(), Some(42));
        assert_eq!(scrape.sum("x_total", &[("a", "1")]), 42);
        assert_eq!(scrape.sum("x_total", &[("a", "2")]), 0);
        assert_eq!(scrape.samples[1].value(), 1.0);
    }

    #[test]
    fn sums_group_by_labels() {
        let text = "r{v=\"a\",p=\"1\"} 1\nr{v=\"a\",p=\"2\"} 2\nr{v=\"b\",p=\"1\"} 4\n";
        let scrape = Scrape::parse(text).unwrap();
        let by_vendor = scrape.sum_by("r", &["v"]);
        assert_eq!(by_vendor[&vec!["a".to_owned()]], 3);
        assert_eq!(by_vendor[&vec!["b".to_owned()]], 4);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(
            parse("ok 1\nbad{a=1} 2\n").unwrap_err(),
            ParseError {
                line: 2,
                what: "label value not quoted"
            }
        );
        assert!(parse("x{a=\"1} 2").is_err());
        assert!(parse("x").is_err());
    }
}
