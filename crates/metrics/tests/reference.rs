//! `docs/metrics.md` documents exactly the families of `spec::ALL`, with their labels.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use pt_metrics::spec;

fn reference() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    std::fs::read_to_string(path).expect("docs/metrics.md exists")
}

/// The rows of the families table: (series, type, labels).
fn documented_families(doc: &str) -> Vec<(String, String, Vec<String>)> {
    doc.lines()
        .filter(|l| l.starts_with("| `proxy_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let kind = cells[2].to_owned();
            let labels = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .filter(|l| !l.is_empty() && l != "(none)")
                .collect();
            (name, kind, labels)
        })
        .filter(|(_, kind, _)| ["counter", "gauge", "histogram"].contains(&kind.as_str()))
        .collect()
}

#[test]
fn every_family_is_documented_with_its_type_and_labels() {
    let documented = documented_families(&reference());
    for family in spec::ALL {
        let series = match family.kind {
            spec::Kind::Histogram => family.name.to_owned(),
            _ => family.series(),
        };
        let row = documented
            .iter()
            .find(|(name, _, _)| *name == series)
            .unwrap_or_else(|| panic!("{series} is not in docs/metrics.md"));
        assert_eq!(row.1, family.kind.as_str(), "type of {series}");
        assert_eq!(row.2, family.labels, "labels of {series}");
    }
    assert_eq!(
        documented.len(),
        spec::ALL.len(),
        "the doc lists families the meter does not export"
    );
}
