//! The request-smuggling corpus of AWS's `http_desync_guardian` (its test data, read from the
//! crate as cargo downloaded it): every case is sent as an absolute-form request through the
//! meter. Cases the corpus rates `Severe` must be refused before a byte reaches the vendor;
//! for the others the meter's answer is pinned here, case by case, with the reason.

use std::path::PathBuf;

use super::harness::{Case, Expect};

const CLASS: &str = "desync-corpus";

/// The corpus cases the meter forwards, by file and index: messages with one plain framing that
/// a vendor cannot read differently. A GET or HEAD with a body (`Content-Length` or chunked) is
/// such a message: RFC 9110 gives that content no meaning, but it is framed once. Header names
/// with repeated delimiters (`Transfer---Encoding`) name no framing field, even for a vendor that
/// maps `_` to `-`. Everything else the corpus holds is refused: 400, or 505 for the versions
/// listed in [`VERSION_REFUSED`]. Among the refused, some the corpus calls compliant: transfer
/// codings other than exactly `chunked` (`gzip, chunked`), which crawlers never send and which a
/// proxy in front of shared vendor connections does better to refuse.
const FORWARDED: [&str; 26] = [
    "acceptable #4",
    "acceptable #5",
    "ambiguous #12",
    "ambiguous #13",
    "ambiguous #14",
    "ambiguous #15",
    "ambiguous #30",
    "ambiguous #31",
    "more-compliant-tests #0",
    "more-compliant-tests #1",
    "more-compliant-tests #2",
    "more-compliant-tests #3",
    "more-compliant-tests #4",
    "more-compliant-tests #6",
    "real-life-test-cases #0",
    "real-life-test-cases #1",
    "rfc-compliant #0",
    "rfc-compliant #1",
    "rfc-compliant #2",
    "rfc-compliant #3",
    "rfc-compliant #4",
    "rfc-compliant #5",
    "rfc-compliant #6",
    "rfc-compliant #7",
    "rfc-compliant #12",
    "rfc-compliant #13",
];

/// Cases whose request line has no `HTTP/1.0` or `HTTP/1.1` where the version goes (HTTP/0.9,
/// none, 1.2, a target with a space in it): 505.
const VERSION_REFUSED: [&str; 8] = [
    "acceptable #6",
    "acceptable #7",
    "acceptable #8",
    "ambiguous #24",
    "ambiguous #25",
    "ambiguous #26",
    "ambiguous #27",
    "uri-specific-test-cases #3",
];

/// URIs with percent-encoded control bytes are plain targets.
const FORWARDED_URIS: [&str; 4] = [
    "uri-specific-test-cases #10",
    "uri-specific-test-cases #11",
    "uri-specific-test-cases #12",
    "uri-specific-test-cases #13",
];

/// Where cargo unpacked the crate (a dev-dependency, so it is always downloaded): the registry
/// sources under `CARGO_HOME`.
fn corpus_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME is set");
    let sources = home.join("registry").join("src");
    let registries =
        std::fs::read_dir(&sources).unwrap_or_else(|e| panic!("{}: {e}", sources.display()));
    registries
        .filter_map(Result::ok)
        .filter_map(|registry| std::fs::read_dir(registry.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("http_desync_guardian-0.1."))
        })
        .max()
        .map(|crate_dir| crate_dir.join("tests"))
        .expect("http_desync_guardian is unpacked in the cargo registry")
}

/// A corpus string as bytes: the corpus means one byte per character below 256.
fn bytes(value: &serde_json::Value) -> Vec<u8> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    for c in text.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.to_string().as_bytes()),
        }
    }
    out
}

/// The corpus request as a forward-proxy request to a host the fake vendor serves.
fn request(case: &serde_json::Value) -> Vec<u8> {
    let mut out = bytes(&case["method"]);
    out.extend_from_slice(b" http://shop-a.test");
    out.extend_from_slice(&bytes(&case["uri"]));
    out.push(b' ');
    out.extend_from_slice(&bytes(&case["version"]));
    out.extend_from_slice(b"\r\n");
    let headers = case["headers"].as_array().cloned().unwrap_or_default();
    let has_host = headers
        .iter()
        .any(|h| bytes(&h["name"]).eq_ignore_ascii_case(b"host"));
    if !has_host {
        out.extend_from_slice(b"Host: shop-a.test\r\n");
    }
    for header in &headers {
        out.extend_from_slice(&bytes(&header["name"]));
        out.extend_from_slice(b": ");
        out.extend_from_slice(&bytes(&header["value"]));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body(&headers));
    out
}

/// The body the request announces, as far as it announces one plainly: `Content-Length` bytes,
/// or an empty chunked body. A request the meter refuses never gets to it.
fn body(headers: &[serde_json::Value]) -> Vec<u8> {
    for header in headers {
        let (name, value) = (bytes(&header["name"]), bytes(&header["value"]));
        if name.eq_ignore_ascii_case(b"content-length")
            && let Some(n) = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n <= 8 << 20)
        {
            return vec![b'x'; n];
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return b"0\r\n\r\n".to_vec();
        }
    }
    Vec::new()
}

pub fn cases() -> Vec<Case> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("corpus file");
        let list: Vec<serde_json::Value> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        for (i, case) in list.iter().enumerate() {
            let key = format!("{stem} #{i}");
            let name = format!("{key}: {}", case["name"].as_str().unwrap_or("?"));
            let tier = case["expected"]["tier"].as_str().unwrap_or("?").to_owned();
            let key = key.as_str();
            let expect = if FORWARDED.contains(&key) || FORWARDED_URIS.contains(&key) {
                Expect::Forwarded(200)
            } else if VERSION_REFUSED.contains(&key) {
                Expect::Refused(505, "bad_request")
            } else {
                Expect::Refused(400, "bad_request")
            };
            assert!(
                tier != "Severe" || !matches!(expect, Expect::Forwarded(_)),
                "{name}: a severe case is never forwarded"
            );
            cases.push(Case::new(
                CLASS,
                format!("{name} ({tier})"),
                request(case),
                expect,
            ));
        }
    }
    cases
}
