//! Pod attribution in a shared meter, driven by a fake Kubernetes API server: the list, then a
//! watch with deletions, IP reuse and a forced re-list; the meter's labels follow the pods.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use pt_kube::pods::{PodIndex, watch, watcher_config};
use pt_testkit::meter::MeterSetup;
use pt_testkit::origin::Origin;
use pt_testkit::pki::TestPki;
use pt_testkit::vendor::FakeVendor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

mod support;
use support::pod;

/// The API server's pod list and watch, as far as kube-rs' watcher uses them.
struct FakeApiServer {
    address: SocketAddr,
    pods: Arc<Mutex<Vec<Value>>>,
    events: tokio::sync::broadcast::Sender<Bytes>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApiServer {
    async fn start(pods: Vec<Value>) -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let pods = Arc::new(Mutex::new(pods));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (events, _) = tokio::sync::broadcast::channel(64);
        let (state, sender, log) = (pods.clone(), events.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, sender, log) = (state.clone(), sender.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = answer(&request, &state, &sender, &log);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            address,
            pods,
            events,
            requests,
        }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.address).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Sends a watch event to the open watch, once the watcher has opened one (it does so
    /// just after its list).
    async fn event(&self, kind: &str, object: Value) {
        for _ in 0..200 {
            if self.events.receiver_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.events
            .send(Bytes::from(line))
            .expect("the watcher has a watch open");
    }

    /// What a re-list returns from now on.
    fn set_pods(&self, pods: Vec<Value>) {
        *self.pods.lock().unwrap() = pods;
    }
}

fn answer(
    request: &hyper::Request<Incoming>,
    pods: &Mutex<Vec<Value>>,
    events: &tokio::sync::broadcast::Sender<Bytes>,
    log: &Mutex<Vec<String>>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let uri = request.uri().to_string();
    log.lock().unwrap().push(uri.clone());
    assert!(uri.starts_with("/api/v1/pods"), "unexpected request {uri}");
    if uri.contains("watch=true") || uri.contains("watch=1") {
        let receiver = events.subscribe();
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(line) => return Some((Ok(Frame::data(line)), receiver)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        return hyper::Response::new(StreamBody::new(stream).boxed());
    }
    let list = json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": "100"},
        "items": *pods.lock().unwrap(),
    });
    hyper::Response::new(Full::new(Bytes::from(list.to_string())).boxed())
}

/// Waits (bounded) until `index` maps `ip` to `expected` (a pod name, or `None`).
async fn until_pod(index: &PodIndex, ip: &str, expected: Option<&str>) {
    let ip: IpAddr = ip.parse().unwrap();
    for _ in 0..200 {
        if index.get(ip).map(|e| e.pod.to_string()).as_deref() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{ip} never became {expected:?}; it is {:?}", index.get(ip),);
}

/// A fake API server holding `pods`, and an index fed by a watch of it, after the first list.
async fn watched(
    pods: Vec<Value>,
    node: Option<&str>,
) -> (FakeApiServer, Arc<PodIndex>, CancellationToken) {
    let api = FakeApiServer::start(pods).await;
    let index = Arc::new(PodIndex::new(100));
    let stop = CancellationToken::new();
    tokio::spawn(watch(
        api.client(),
        watcher_config(node),
        index.clone(),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), index.synced())
        .await
        .expect("the first list arrives");
    (api, index, stop)
}

#[test]
fn the_index_follows_pods_through_deletion_ip_reuse_and_a_relist() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (api, index, stop) = watched(
            vec![
                pod("crawler-a", "crawler", "10.0.0.1"),
                pod("crawler-b", "crawler", "10.0.0.2"),
                pod("indexer-0", "indexer", "fd00::7"),
            ],
            None,
        )
        .await;
        assert_eq!(index.len(), 3);
        let a = index.get("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            (&*a.namespace, &*a.pod, &*a.workload),
            ("crawlers", "crawler-a", "crawler")
        );
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is the same pod.
        assert_eq!(
            index.get("::ffff:10.0.0.1".parse().unwrap()).unwrap().pod,
            a.pod
        );
        until_pod(&index, "fd00::7", Some("indexer-0")).await;

        // crawler-a is deleted and its IP goes to a new pod.
        api.event("DELETED", pod("crawler-a", "crawler", "10.0.0.1"))
            .await;
        until_pod(&index, "10.0.0.1", None).await;
        api.event("ADDED", pod("crawler-c", "crawler", "10.0.0.1"))
            .await;
        until_pod(&index, "10.0.0.1", Some("crawler-c")).await;

        // crawler-b's IP is reused before crawler-b's deletion is seen: the late deletion
        // must not take the IP from its new owner.
        api.event("ADDED", pod("crawler-d", "crawler", "10.0.0.2"))
            .await;
        until_pod(&index, "10.0.0.2", Some("crawler-d")).await;
        api.event("DELETED", pod("crawler-b", "crawler", "10.0.0.2"))
            .await;
        // A later event proves the deletion was applied before we look.
        api.event("ADDED", pod("marker", "crawler", "10.0.0.9"))
            .await;
        until_pod(&index, "10.0.0.9", Some("marker")).await;
        assert_eq!(
            index.get("10.0.0.2".parse().unwrap()).unwrap().pod.as_ref(),
            "crawler-d"
        );

        // A pod that finished frees its IP.
        let mut done = pod("crawler-c", "crawler", "10.0.0.1");
        done["status"]["phase"] = json!("Succeeded");
        api.event("MODIFIED", done).await;
        until_pod(&index, "10.0.0.1", None).await;

        // The watch expires (410 Gone): the watcher lists again, and pods deleted meanwhile
        // disappear with the swap.
        api.set_pods(vec![pod("crawler-e", "crawler", "10.0.0.5")]);
        api.event(
            "ERROR",
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "reason": "Expired", "code": 410, "message": "too old resource version"}),
        )
        .await;
        until_pod(&index, "10.0.0.5", Some("crawler-e")).await;
        assert_eq!(index.get("10.0.0.2".parse().unwrap()), None);
        assert_eq!(index.get("fd00::7".parse().unwrap()), None);
        assert_eq!(index.len(), 1);
        let lists = api
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|u| !u.contains("watch="))
            .count();
        assert_eq!(lists, 2, "one list at start, one after the expiry");
        stop.cancel();
    });
}

#[test]
fn a_per_node_meter_watches_only_its_nodes_pods() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (api, _index, stop) = watched(vec![], Some("node-7")).await;
        let requests = || api.requests.lock().unwrap().clone();
        for _ in 0..200 {
            if requests().iter().any(|u| u.contains("watch=")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let requests = requests();
        let (watches, lists): (Vec<_>, Vec<_>) =
            requests.iter().partition(|u| u.contains("watch="));
        assert!(!lists.is_empty() && !watches.is_empty(), "{requests:?}");
        assert!(
            requests
                .iter()
                .all(|u| u.contains("fieldSelector=spec.nodeName%3Dnode-7")),
            "both the list and the watch are scoped to the node: {requests:?}"
        );
        stop.cancel();
    });
}

#[test]
fn a_shared_meter_labels_each_connection_with_the_pod_behind_its_source_ip() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (api, index, stop) = watched(
            vec![
                pod("crawler-a", "crawler", "127.0.0.2"),
                pod("indexer-a", "indexer", "127.0.0.3"),
            ],
            None,
        )
        .await;

        let pki = TestPki::new(&["shop-a.test"]);
        let origin = Origin::start(&pki).await.unwrap();
        let vendor = FakeVendor::builder()
            .route("shop-a.test", &origin)
            .start()
            .await
            .unwrap();
        let meter = MeterSetup::new()
            .vendor("vendor-a", &vendor, None)
            .yaml("identity:\n  from: kubernetes\n")
            .spawn_with(Some(index.clone()))
            .await;
        let port = meter.proxy().port();

        // Two requests from crawler-a's IP, one from indexer-a's, one from an IP no pod has.
        for (source, times) in [("127.0.0.2", 2), ("127.0.0.3", 1), ("127.0.0.4", 1)] {
            for _ in 0..times {
                get_from(source, port).await;
            }
        }
        // crawler-a is replaced; its IP now belongs to crawler-b of the same Deployment.
        api.event("DELETED", pod("crawler-a", "crawler", "127.0.0.2"))
            .await;
        api.event("ADDED", pod("crawler-b", "crawler", "127.0.0.2"))
            .await;
        until_pod(&index, "127.0.0.2", Some("crawler-b")).await;
        get_from("127.0.0.2", port).await;

        let requests = meter
            .scrape()
            .await
            .sum_by("proxy_requests_total", &["source_workload", "source_pod"]);
        let expected = [
            (["crawler", "crawler-a"], 2),
            (["crawler", "crawler-b"], 1),
            (["indexer", "indexer-a"], 1),
            (["unknown", "unknown"], 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.iter().map(|s| s.to_string()).collect::<Vec<_>>(), v))
        .collect();
        assert_eq!(requests, expected);
        stop.cancel();
    });
}

/// One plain-HTTP request through the meter from `source`.
async fn get_from(source: &str, port: u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    stream
        .write_all(b"GET http://shop-a.test/bytes/100 HTTP/1.1\r\nHost: shop-a.test\r\nX-Proxy-Vendor: vendor-a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}
