//! `docs/configuration.md` documents every key of the configuration file.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use pt_config::raw::{RawConfig, RawPricing, RawVendor};
use serde_json::Value;

/// Every key path of `value`: `a.b`, lists as `a[].b`; maps of user data are leaves.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if ["routing.usernames", "routing.weights"].contains(&path.as_str()) {
                    out.push(path);
                    continue;
                }
                key_paths(child, &path, out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            key_paths(&items[0], &format!("{prefix}[]"), out);
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_configuration_key_is_documented() {
    let mut config = RawConfig::default();
    // A vendor with every field set, so that its keys are walked too.
    config.vendors.push(RawVendor {
        name: "v".into(),
        kind: Some("http_proxy".into()),
        url: Some("http://p:1".into()),
        username: Some("u".into()),
        password_env: Some("E".into()),
        password_file: Some("f".into()),
        forward_client_credentials: false,
        max_idle_connections: Some(1),
        endpoints: vec!["p:2".into()],
        pricing: Some(RawPricing {
            currency: Some("USD".into()),
            per_gb: Some(1.0),
            unit: Some("GB".into()),
            billed_bytes: Some("received".into()),
            per_1k_requests: Some(1.0),
            billed_requests: Some("all".into()),
            monthly_fee: Some(1.0),
            included_gb: Some(1.0),
            cycle_start_day: Some(1),
            monthly_budget: Some(1.0),
        }),
    });
    config.listeners[0].vendor = Some("v".into());
    config.clients.password_env = Some("E".into());
    config.clients.password_file = Some("f".into());
    let tree = serde_json::to_value(&config).unwrap();
    let mut paths = Vec::new();
    key_paths(&tree, "", &mut paths);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("| `{p}` |")))
        .collect();
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    assert!(paths.len() > 40, "the walk found {} keys", paths.len());
}
