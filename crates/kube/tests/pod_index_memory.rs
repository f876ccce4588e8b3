//! The pod index's memory bound: 10,000 pods in a few MiB, and a cap beyond which pods resolve
//! as unknown. Alone in its binary, so that the allocation count is this test's only.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use pt_kube::pods::PodIndex;

mod support;
use support::pod;

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes currently allocated by this test binary.
fn allocated() -> usize {
    ALLOCATOR.allocated()
}

#[test]
fn the_index_is_bounded_and_ten_thousand_pods_fit_in_a_few_mebibytes() {
    use kube::runtime::watcher::Event;
    let index = PodIndex::new(10_000);
    index.apply(Event::Init);
    let before = allocated();
    for i in 0..10_001u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod(&format!("crawler-{i}"), "crawler", &ip)).unwrap();
        index.apply(Event::InitApply(pod));
    }
    index.apply(Event::InitDone);
    let used = allocated().saturating_sub(before);
    // The 10,001st pod is over the cap: it resolves as unknown, traffic is not affected.
    assert_eq!(index.len(), 10_000);
    assert_eq!(index.get("10.0.39.16".parse().unwrap()), None);
    assert_eq!(
        index
            .get("10.0.39.15".parse().unwrap())
            .unwrap()
            .pod
            .as_ref(),
        "crawler-9999"
    );
    // Per pod: four short strings, two map entries. Whole pods would take ~100x more.
    assert!(
        used < 6 << 20,
        "10,000 pods take {used} bytes of index (budget 6 MiB; about 375 bytes per pod today)"
    );
}
