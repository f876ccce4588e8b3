//! The sidecar injector as the API server sees it: AdmissionReview in, JSON patch out, over
//! HTTPS; and what the patched pod holds.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use base64::Engine;
use pt_kube::inject::{INIT_CONTAINER, Injector, METER_CONTAINER};
use pt_testkit::pki::TestPki;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = include_str!("../../../examples/injector.yaml");

fn injector() -> Injector {
    Injector::from_yaml(CONFIG, &Default::default()).unwrap()
}

/// A pod as the ReplicaSet controller of Deployment `crawler` creates it.
fn crawler_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "crawler-6b8f7d9c4-",
            "namespace": "crawlers",
            "labels": {"app": "crawler", "pod-template-hash": "6b8f7d9c4"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "crawler-6b8f7d9c4",
                "uid": "2f0c1c5e-1111-4a4a-9a9a-000000000001", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{"name": "crawler", "image": "example/crawler:1"}]
        }
    })
}

fn review(operation: &str, kind: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "crawlers",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The response of a review, and the pod with its patch applied (when there was one).
fn answer(injector: &Injector, review: &Value) -> (Value, Option<Value>) {
    let response: Value =
        serde_json::from_slice(&injector.review(review.to_string().as_bytes()).unwrap()).unwrap();
    let object = review["request"]["object"].clone();
    (response.clone(), patched(&response, object))
}

fn patched(response: &Value, mut object: Value) -> Option<Value> {
    let patch = response["response"]["patch"].as_str()?;
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    json_patch::patch(&mut object, &patch).unwrap();
    Some(object)
}

fn init_containers(pod: &Value) -> Vec<&str> {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[test]
fn a_new_pod_gets_the_iptables_init_container_and_the_meter_as_native_sidecar() {
    let (response, pod) = answer(&injector(), &review("CREATE", "Pod", crawler_pod()));
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        response["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(response["response"]["allowed"], true);
    let pod = pod.expect("a patch");

    assert_eq!(init_containers(&pod), [INIT_CONTAINER, METER_CONTAINER]);
    let init = &pod["spec"]["initContainers"][0];
    let meter = &pod["spec"]["initContainers"][1];
    assert_eq!(
        init["args"],
        json!(["init-iptables", "--exclude-uid", "2102"])
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(meter["restartPolicy"], "Always");
    assert_eq!(meter["securityContext"]["runAsUser"], 2102);
    assert_eq!(meter["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        env(meter, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env(meter, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    // The Deployment's name, not the ReplicaSet's: it survives rollouts.
    assert_eq!(env(meter, "POD_WORKLOAD")["value"], "crawler");
    // Both containers read the same meter configuration, and it is a valid one.
    let config = env(meter, "PROXY_TELEMETRY_CONFIG_YAML")["value"]
        .as_str()
        .unwrap();
    assert_eq!(env(init, "PROXY_TELEMETRY_CONFIG_YAML")["value"], config);
    let parsed = pt_config::load_str(config, &Default::default()).unwrap();
    assert_eq!(parsed.transparent.listeners.len(), 1);
    assert_eq!(
        meter["ports"],
        json!([{"name": "pt-metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(meter["startupProbe"]["httpGet"]["path"], "/readyz");

    // The crawler is untouched.
    assert_eq!(
        pod["spec"]["containers"],
        crawler_pod()["spec"]["containers"]
    );
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({
            "proxy-telemetry.io/status": "injected",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "3128,7777,8000"
        })
    );
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app": "crawler", "pod-template-hash": "6b8f7d9c4", "proxy-telemetry.io/meter": "true"})
    );
}

#[test]
fn the_pods_own_init_containers_and_istio_exclusions_are_kept() {
    let mut pod = crawler_pod();
    pod["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432,8000"});
    pod["spec"]["initContainers"] = json!([{"name": "fetch-seeds", "image": "busybox"}]);
    let (_, patched) = answer(&injector(), &review("CREATE", "Pod", pod));
    let patched = patched.expect("a patch");
    assert_eq!(
        init_containers(&patched),
        [INIT_CONTAINER, METER_CONTAINER, "fetch-seeds"]
    );
    assert_eq!(
        patched["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"],
        "5432,8000,3128,7777"
    );
}

#[test]
fn an_injected_pod_is_left_alone_the_second_time() {
    let injector = injector();
    let (_, once) = answer(&injector, &review("CREATE", "Pod", crawler_pod()));
    let (response, twice) = answer(&injector, &review("CREATE", "Pod", once.unwrap()));
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(twice, None, "no second patch: {response}");
}

#[test]
fn opted_out_host_network_and_self_metered_pods_are_left_alone() {
    let mut opted_out = crawler_pod();
    opted_out["metadata"]["annotations"] = json!({"proxy-telemetry.io/inject": "false"});
    let mut host = crawler_pod();
    host["spec"]["hostNetwork"] = json!(true);
    // A pod with the chart's or the kustomize component's sidecar already.
    let mut metered = crawler_pod();
    metered["metadata"]["labels"]["proxy-telemetry.io/meter"] = json!("true");
    for pod in [opted_out, host, metered] {
        let (response, patched) = answer(&injector(), &review("CREATE", "Pod", pod));
        assert_eq!(response["response"]["allowed"], true);
        assert_eq!(patched, None);
    }
}

#[test]
fn anything_but_a_pod_create_is_allowed_unchanged() {
    for (operation, kind) in [("UPDATE", "Pod"), ("CREATE", "ConfigMap")] {
        let (response, patched) = answer(&injector(), &review(operation, kind, crawler_pod()));
        assert_eq!(response["response"]["allowed"], true, "{operation} {kind}");
        assert_eq!(patched, None, "{operation} {kind}");
    }
}

#[test]
fn a_malformed_review_is_a_clear_error_not_a_panic() {
    let injector = injector();
    let cases: [(&[u8], &str); 4] = [
        (b"", "not an AdmissionReview"),
        (b"{\"kind\": \"AdmissionReview\"", "not an AdmissionReview"),
        (
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
            "no request",
        ),
        (b"[1, 2, 3]", "not an AdmissionReview"),
    ];
    for (body, expected) in cases {
        let error = injector.review(body).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{:?}: {error}",
            String::from_utf8_lossy(body)
        );
    }
    // A review whose object is not a pod at all still gets an answer: allowed, unchanged.
    let (response, patched) = answer(&injector, &review("CREATE", "Pod", json!({"spec": 7})));
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(patched, None);
}

#[test]
fn a_configuration_the_sidecar_could_not_run_is_refused_at_startup() {
    let loopback_admin = CONFIG.replace("\"0.0.0.0:9464\"", "\"127.0.0.1:9464\"");
    let error = Injector::from_yaml(&loopback_admin, &Default::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not reachable from outside the pod"),
        "{error}"
    );

    let no_transparent = CONFIG.replace("listeners: [\"127.0.0.1:15129\"]", "listeners: []");
    let error = Injector::from_yaml(&no_transparent, &Default::default()).unwrap_err();
    assert!(
        error.to_string().contains("transparent listener"),
        "{error}"
    );

    let typo = CONFIG.replace("meter_uid:", "meter_user:");
    let error = Injector::from_yaml(&typo, &Default::default()).unwrap_err();
    assert!(error.to_string().contains("meter_user"), "{error}");
}

#[test]
fn the_webhook_answers_over_https_as_the_api_server_calls_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pki = TestPki::new(&["injector.proxy-telemetry.svc"]);
        let dir = std::env::temp_dir().join(format!("pt-injector-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let tls = pt_kube::webhook::tls_config(&cert, &key).unwrap();
        tokio::spawn(pt_kube::webhook::serve(
            listener,
            tls,
            Arc::new(injector()),
            stop.clone(),
        ));

        let post = |path: &'static str, body: String| {
            let roots = pki.roots.clone();
            async move {
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
                let name = "injector.proxy-telemetry.svc".try_into().unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: injector.proxy-telemetry.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                tls.read_to_string(&mut response).await.unwrap();
                let (head, body) = response.split_once("\r\n\r\n").unwrap();
                (head.lines().next().unwrap().to_owned(), body.to_owned())
            }
        };

        let (status, body) = post("/mutate", review("CREATE", "Pod", crawler_pod()).to_string()).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let response: Value = serde_json::from_str(&body).unwrap();
        let pod = patched(&response, crawler_pod()).expect("a patch over HTTPS");
        assert_eq!(init_containers(&pod), [INIT_CONTAINER, METER_CONTAINER]);

        let (status, body) = post("/mutate", "{not json".into()).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(body.starts_with("not an AdmissionReview"), "{body}");

        let (status, _) = post("/elsewhere", String::new()).await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn nodes_on_the_legacy_iptables_backend_get_the_legacy_tools_in_the_init_container() {
    let legacy = CONFIG.replace("  iptables: iptables\n", "  iptables: iptables-legacy\n");
    assert_ne!(legacy, CONFIG, "the example names the backend");
    let injector = Injector::from_yaml(&legacy, &Default::default()).unwrap();
    let (_, pod) = answer(&injector, &review("CREATE", "Pod", crawler_pod()));
    let pod = pod.expect("a patch");
    assert_eq!(
        pod["spec"]["initContainers"][0]["args"],
        json!([
            "init-iptables",
            "--exclude-uid",
            "2102",
            "--iptables",
            "iptables-legacy"
        ])
    );
}
