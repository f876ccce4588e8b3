//! Environment overrides: `PROXY_TELEMETRY__LIMITS__MAX_CONNECTIONS=5000` sets
//! `limits.max_connections`.
//!
//! Segments after the prefix are separated by `__` and lower-cased; a numeric segment indexes a
//! list (`PROXY_TELEMETRY__VENDORS__0__URL`), and the index one past the end appends. Values are
//! read as YAML, so `5000` is a number, `true` a boolean and `[443, 8443]` a list; anything that
//! is not valid YAML is taken as a string.

use serde_json::Value;

use crate::{ConfigError, ConfigErrors, Env};

/// The prefix of override variables.
pub const PREFIX: &str = "PROXY_TELEMETRY__";

/// Applies every override in `env` to `tree`, in sorted variable order.
pub fn apply_overrides(tree: &mut Value, env: &Env) -> Result<(), ConfigErrors> {
    let mut keys: Vec<&String> = env.keys().filter(|k| k.starts_with(PREFIX)).collect();
    keys.sort();
    let mut errors = Vec::new();
    for key in keys {
        let path: Vec<String> = key[PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value = parse_value(&env[key]);
        if let Err(message) = set(tree, &path, value) {
            errors.push(ConfigError {
                path: key.clone(),
                message,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn parse_value(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .ok()
        .filter(|v| !v.is_null() || text.trim() == "null")
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

fn set(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *tree = value;
        return Ok(());
    };
    if first.is_empty() {
        return Err("empty key segment".into());
    }
    match tree {
        Value::Array(items) => {
            let index: usize = first
                .parse()
                .map_err(|_| format!("'{first}' is not a list index"))?;
            if index == items.len() {
                items.push(Value::Object(Default::default()));
            }
            let item = items
                .get_mut(index)
                .ok_or_else(|| format!("list index {index} is past the end"))?;
            set(item, rest, value)
        }
        Value::Object(map) => {
            let child = map
                .entry(first.clone())
                .or_insert_with(|| container_for(rest));
            set(child, rest, value)
        }
        Value::Null => {
            *tree = container_for(path);
            set(tree, path, value)
        }
        _ => Err(format!("cannot set '{first}' inside a scalar value")),
    }
}

/// A new container for the rest of a path: a list when the next segment is an index.
fn container_for(path: &[String]) -> Value {
    match path.first() {
        Some(seg) if seg.parse::<usize>().is_ok() => Value::Array(Vec::new()),
        Some(_) => Value::Object(Default::default()),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::test_env as env;

    #[test]
    fn overrides_replace_nested_values_with_typed_yaml() {
        let mut tree = json!({"limits": {"max_connections": 10}, "vendors": [{"name": "a"}]});
        apply_overrides(
            &mut tree,
            &env(&[
                ("PROXY_TELEMETRY__LIMITS__MAX_CONNECTIONS", "5000"),
                ("PROXY_TELEMETRY__VENDORS__0__URL", "http://p:8080"),
                ("PROXY_TELEMETRY__VENDORS__1__NAME", "b"),
                ("PROXY_TELEMETRY__SECURITY__CONNECT_PORTS", "[443, 8443]"),
                ("PROXY_TELEMETRY__ACCESS_LOG__ENABLED", "false"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            tree,
            json!({
                "limits": {"max_connections": 5000},
                "vendors": [{"name": "a", "url": "http://p:8080"}, {"name": "b"}],
                "security": {"connect_ports": [443, 8443]},
                "access_log": {"enabled": false},
            })
        );
    }

    #[test]
    fn impossible_overrides_are_reported_with_their_variable() {
        let mut tree = json!({"vendors": [], "admin": {"address": "x"}});
        let err = apply_overrides(
            &mut tree,
            &env(&[
                ("PROXY_TELEMETRY__VENDORS__3__NAME", "a"),
                ("PROXY_TELEMETRY__ADMIN__ADDRESS__PORT", "1"),
            ]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "PROXY_TELEMETRY__ADMIN__ADDRESS__PORT",
                "PROXY_TELEMETRY__VENDORS__3__NAME"
            ]
        );
    }
}
