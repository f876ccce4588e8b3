//! The verdict for humans (like the original validator, but from real data) or as JSON.

use std::fmt::Write;

use crate::checks::Verdict;

/// Text: one block per requirement, `PASS`/`FAIL` with the reasons.
pub fn text(verdict: &Verdict) -> String {
    let mut out = String::new();
    for check in &verdict.checks {
        let status = if check.pass { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "{}) {:<58} {status}", check.id, check.title);
        for line in &check.lines {
            let _ = writeln!(out, "   {line}");
        }
        for reason in &check.reasons {
            let _ = writeln!(out, "   ✗ {reason}");
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if verdict.pass {
            "ALL CHECKS PASSED"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    out
}

/// JSON: the same content, structured.
pub fn json(verdict: &Verdict) -> String {
    serde_json::to_string_pretty(verdict).unwrap_or_default()
}
