//! Replays every stored fuzz input through its target's checks (see `fuzz/README.md`).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus")).join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the {target} corpus is empty");
    inputs
}

#[test]
fn the_connect_authority_corpus_passes() {
    for (path, data) in corpus("connect_authority") {
        let outcome = std::panic::catch_unwind(|| pt_sniff::fuzzing::connect_authority(&data));
        assert!(outcome.is_ok(), "{}", path.display());
    }
}

#[test]
fn the_client_hello_corpus_passes() {
    for (path, data) in corpus("client_hello") {
        let outcome = std::panic::catch_unwind(|| pt_sniff::fuzzing::client_hello(&data));
        assert!(outcome.is_ok(), "{}", path.display());
    }
}

#[test]
fn the_http1_framing_corpus_passes() {
    for (path, data) in corpus("http1_framing") {
        let outcome = std::panic::catch_unwind(|| pt_sniff::fuzzing::http1_framing(&data));
        assert!(outcome.is_ok(), "{}", path.display());
    }
}

#[test]
fn the_socks5_corpus_passes() {
    for (path, data) in corpus("socks5") {
        let outcome = std::panic::catch_unwind(|| pt_sniff::fuzzing::socks5(&data));
        assert!(outcome.is_ok(), "{}", path.display());
    }
}
