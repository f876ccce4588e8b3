//! The load generator behaves like a crawler fleet: like a production HTTP client when a proxy
//! closes an idle keep-alive connection just as a request is sent on it (a meter at its
//! connection cap reclaims idle connections, oldest first), an idempotent request is sent
//! again, once, on a new connection, and the report counts it as retried, not failed; with
//! `vendor_per_pod`, each pod keeps to one vendor.

use std::sync::Arc;
use std::time::Duration;

use pt_load::engine::Run;
use pt_load::plan::{HttpVersion, LoadPlan, Stop, Target, VendorRoute, VendorShare};
use pt_testkit::vendor::{Fault, VendorBuilder};
use tokio_util::sync::CancellationToken;

fn plan(proxy: std::net::SocketAddr, method: &str, requests: u64) -> LoadPlan {
    let target: Target = format!("{method} http://shop.test/hello")
        .parse()
        .expect("target");
    assert_eq!(target.version, HttpVersion::H1);
    LoadPlan {
        proxy,
        vendor_header: "X-Proxy-Vendor".into(),
        vendors: vec![VendorShare {
            name: "vendor-a".into(),
            weight: 1,
            route: VendorRoute::Proxy(proxy),
        }],
        targets: vec![target],
        pods: vec!["crawlers/crawler-0".into()],
        proxy_password: "unused".into(),
        // One request at a time on one connection: the second always reuses the first's.
        rate_per_pod: 20.0,
        concurrency_per_pod: 1,
        stop: Stop {
            duration: Some(Duration::from_secs(10)),
            requests: Some(requests),
        },
        requests_per_connection: 50,
        request_timeout: Duration::from_secs(5),
        pod_lifetime: None,
        vendor_per_pod: false,
    }
}

#[tokio::test]
async fn a_get_on_a_connection_the_proxy_closed_as_it_was_sent_is_retried_once_and_succeeds() {
    // The vendor answers the first request of every connection, and closes without an answer
    // when a second request arrives on it.
    let vendor = VendorBuilder::default()
        .fault(Fault::DropSecondRequest)
        .start()
        .await
        .unwrap();
    let run = Run::new(
        plan(vendor.address, "GET", 2),
        Arc::new(rustls::RootCertStore::empty()),
    )
    .expect("plan");
    let outcome = run.execute(CancellationToken::new()).await;
    let report = outcome.report;
    assert_eq!(
        (report.completed, report.failed, report.retried),
        (2, 0, 1),
        "{report:?}"
    );
    assert_eq!(report.statuses.get("200"), Some(&2));
}

#[tokio::test]
async fn a_post_is_not_sent_twice() {
    let vendor = VendorBuilder::default()
        .fault(Fault::DropSecondRequest)
        .start()
        .await
        .unwrap();
    let run = Run::new(
        plan(vendor.address, "POST", 2),
        Arc::new(rustls::RootCertStore::empty()),
    )
    .expect("plan");
    let report = run.execute(CancellationToken::new()).await.report;
    assert_eq!(
        (report.completed, report.failed, report.retried),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(report.errors.get("http"), Some(&1));
}

#[tokio::test]
async fn with_one_vendor_per_pod_every_pod_keeps_to_the_vendor_it_drew() {
    let a = VendorBuilder::default().start().await.unwrap();
    let b = VendorBuilder::default().start().await.unwrap();
    let mut plan = plan(a.address, "GET", 200);
    plan.vendors = vec![
        VendorShare {
            name: "vendor-a".into(),
            weight: 1,
            route: VendorRoute::Proxy(a.address),
        },
        VendorShare {
            name: "vendor-b".into(),
            weight: 1,
            route: VendorRoute::Proxy(b.address),
        },
    ];
    plan.pods = (0..20).map(|i| format!("crawlers/crawler-{i}")).collect();
    plan.vendor_per_pod = true;
    let outcome = Run::new(plan, Arc::new(rustls::RootCertStore::empty()))
        .expect("plan")
        .execute(CancellationToken::new())
        .await;
    let mut vendors_of = std::collections::BTreeMap::<_, std::collections::BTreeSet<_>>::new();
    for entry in &outcome.ledger.entries {
        if entry.requests_sent > 0 {
            vendors_of
                .entry(&entry.pod)
                .or_default()
                .insert(&entry.vendor);
        }
    }
    assert_eq!(vendors_of.len(), 20);
    assert!(vendors_of.values().all(|v| v.len() == 1), "{vendors_of:?}");
    // Both vendors are drawn (20 pods, even weights: all on one has odds of 2 in a million).
    let used: std::collections::BTreeSet<_> = vendors_of.values().flatten().collect();
    assert_eq!(used.len(), 2);
}
