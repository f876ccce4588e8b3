//! The sidecar injector: what `proxy-telemetry inject-webhook` adds to a pod at CREATE.
//!
//! As Istio and Linkerd do for their meshes, but for the vendor leg only: an init container
//! that installs the redirect rules (`init-iptables`), and the meter as a native sidecar (an
//! init container with `restartPolicy: Always`, Kubernetes 1.29+) in transparent mode, with
//! the pod's identity from the Downward API. The meter's configuration travels as YAML text
//! in an environment variable, so an injected namespace needs no ConfigMap of its own; it holds
//! no secrets (in transparent mode the crawler's own vendor credentials pass through).
//!
//! [`Injector::review`] answers an `AdmissionReview` with a JSON patch. It never fails a pod
//! it does not understand: anything but a pod CREATE is allowed unchanged, and pods that opted
//! out, run in the host's network namespace or are already injected are left alone.

use std::collections::BTreeSet;

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::workload::workload_of;

/// Pod annotation: `"false"` (or `"disabled"`) opts a pod out of injection.
pub const INJECT_ANNOTATION: &str = "proxy-telemetry.io/inject";
/// Pod annotation the injector sets, so that a pod is never injected twice.
pub const STATUS_ANNOTATION: &str = "proxy-telemetry.io/status";
/// Pod label the injector sets; the chart's PodMonitor and scrape config select it.
pub const METER_LABEL: &str = "proxy-telemetry.io/meter";
/// The meter sidecar's container name.
pub const METER_CONTAINER: &str = "proxy-telemetry-meter";
/// The init container's name.
pub const INIT_CONTAINER: &str = "proxy-telemetry-init";
/// Istio's pod annotation listing outbound ports its own redirection leaves alone.
pub const ISTIO_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// The container port name every meter exposes its metrics on (scrape configs select it).
pub const METRICS_PORT_NAME: &str = "pt-metrics";

/// The injector's configuration file (`inject-webhook --config`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectorConfig {
    /// The meter image (`repository:tag`).
    pub image: String,
    /// The init container's image: the same binary plus iptables (`Dockerfile` target `init`).
    pub init_image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The sidecar meter's configuration (YAML text): at least one transparent listener, the
    /// vendors and their endpoints, an admin address on all interfaces.
    pub meter_config: String,
    /// The meter's user and group; its connections are never redirected.
    #[serde(default = "default_meter_uid")]
    pub meter_uid: u32,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub init_resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub capture: CaptureOptions,
    /// Add the vendor ports to Istio's outbound exclusions, so that the meter's own connections
    /// to vendors leave the pod directly rather than through Envoy.
    #[serde(default = "yes")]
    pub istio_exclusions: bool,
}

/// What the init container redirects (see `init-iptables --help`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureOptions {
    /// Only the vendor endpoints' literal addresses, rather than every address at their ports.
    #[serde(default)]
    pub by_address: bool,
    /// Every outbound TCP connection (with `exclude_cidrs` for the cluster's own ranges).
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub exclude_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_ports: Vec<u16>,
    /// The iptables backend of the nodes: `iptables` (the image's default, nf_tables) or
    /// `iptables-legacy` (nodes whose kernel rules are still legacy: mixing the two leaves the
    /// redirect in a table the kernel does not consult).
    #[serde(default = "default_iptables")]
    pub iptables: String,
}

fn default_iptables() -> String {
    "iptables".into()
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            by_address: false,
            all: false,
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
            iptables: default_iptables(),
        }
    }
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

/// The uid of the meter sidecar: distinct from Istio's 1337 and from common image users.
fn default_meter_uid() -> u32 {
    2102
}

fn yes() -> bool {
    true
}

/// Why the injector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error("injector configuration: {0}")]
    Parse(String),
    #[error("meter_config: {0}")]
    MeterConfig(String),
    #[error("meter_config: {0}")]
    Capture(#[from] crate::iptables::IptablesError),
    #[error(
        "meter_config: admin.address {0} is not reachable from outside the pod; use 0.0.0.0 or [::] so probes and Prometheus reach it"
    )]
    LoopbackAdmin(std::net::SocketAddr),
    #[error("image and init_image must not be empty")]
    NoImage,
}

/// Why an admission review could not be answered (the HTTP server replies 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Why `inject` cannot handle a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "kind '{0}' has no pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)"
    )]
    Kind(String),
    #[error("the manifest has no pod template at {0}")]
    NoTemplate(&'static str),
    #[error("the pod template is invalid: {0}")]
    Invalid(String),
}

/// What the injector does with one pod.
#[derive(Debug)]
pub enum Decision {
    Inject(json_patch::Patch),
    Skip(&'static str),
}

/// A validated injector, ready to answer reviews.
#[derive(Debug)]
pub struct Injector {
    config: InjectorConfig,
    admin_port: u16,
    /// The vendor endpoints' ports, for Istio's exclusion annotation.
    vendor_ports: BTreeSet<u16>,
}

impl Injector {
    /// Parses and checks the configuration; `env` resolves the meter configuration's
    /// references as the sidecar will.
    pub fn from_yaml(text: &str, env: &pt_config::Env) -> Result<Injector, InjectorError> {
        let config: InjectorConfig =
            serde_saphyr::from_str(text).map_err(|e| InjectorError::Parse(e.to_string()))?;
        Injector::new(config, env)
    }

    pub fn new(config: InjectorConfig, env: &pt_config::Env) -> Result<Injector, InjectorError> {
        if config.image.is_empty() || config.init_image.is_empty() {
            return Err(InjectorError::NoImage);
        }
        let meter = pt_config::load_str(&config.meter_config, env)
            .map_err(|e| InjectorError::MeterConfig(e.to_string()))?;
        // The same derivation the init container will run, so a bad config fails here.
        crate::iptables::Capture::from_config(&meter, config.capture.by_address)?;
        if !meter.admin_address.ip().is_unspecified() {
            return Err(InjectorError::LoopbackAdmin(meter.admin_address));
        }
        let vendor_ports = meter
            .vendors
            .iter()
            .flat_map(|v| &v.endpoints)
            .map(|e| match e {
                pt_config::Endpoint::Net { port, .. } => *port,
                pt_config::Endpoint::Host(authority) => authority.port,
            })
            .collect();
        Ok(Injector {
            admin_port: meter.admin_address.port(),
            vendor_ports,
            config,
        })
    }

    /// Answers a serialized `AdmissionReview` with a serialized `AdmissionReview`.
    pub fn review(&self, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| ReviewError::NoRequest)?;
        let response = self.respond(&request);
        let mut review = serde_json::to_value(response.into_review())
            .map_err(|e| ReviewError::Malformed(e.to_string()))?;
        // kube-core writes the patch as an array of numbers; the API's wire form (Go's []byte)
        // is a base64 string, which every API server version reads.
        if let Some(patch) = review.pointer_mut("/response/patch")
            && let Some(bytes) = patch.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Vec<u8>>()
            })
        {
            *patch = Value::from(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        serde_json::to_vec(&review).map_err(|e| ReviewError::Malformed(e.to_string()))
    }

    fn respond(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
            return allowed;
        }
        let pod = request
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| pod_from(v).ok());
        let Some(pod) = pod else {
            // Fail open: the pod is created as it is, and the reason is logged.
            tracing::warn!(uid = %request.uid, "a pod CREATE without a readable pod; left alone");
            return allowed;
        };
        let decision = self.decide(&pod);
        match decision {
            Decision::Skip(reason) => {
                tracing::debug!(namespace = ?request.namespace, reason, "not injected");
                allowed
            }
            Decision::Inject(patch) => match allowed.clone().with_patch(patch) {
                Ok(patched) => patched,
                Err(error) => {
                    tracing::warn!(%error, "cannot serialize the patch; pod left alone");
                    allowed
                }
            },
        }
    }

    /// Whether and how to inject this pod.
    pub fn decide(&self, pod: &Pod) -> Decision {
        let workload = workload_of(&pod.metadata).unwrap_or_else(|| "unknown".into());
        self.decide_for(pod, &workload)
    }

    /// `proxy-telemetry inject`: a Pod, or a workload's pod template, with the sidecar added,
    /// for clusters without the webhook and to show what the webhook would do. Returns the
    /// manifest and, when it was left alone, why.
    pub fn inject_manifest(
        &self,
        mut manifest: Value,
    ) -> Result<(Value, Option<&'static str>), ManifestError> {
        let kind = manifest["kind"].as_str().unwrap_or_default().to_owned();
        let template = match kind.as_str() {
            "Pod" => "",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
            "CronJob" => "/spec/jobTemplate/spec/template",
            _ => return Err(ManifestError::Kind(kind)),
        };
        let workload = match kind.as_str() {
            "Pod" => None,
            _ => manifest["metadata"]["name"].as_str().map(str::to_owned),
        };
        let target = manifest
            .pointer_mut(template)
            .ok_or(ManifestError::NoTemplate(template))?;
        let pod = pod_from(target.clone()).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        let workload = workload
            .or_else(|| workload_of(&pod.metadata))
            .unwrap_or_else(|| "unknown".into());
        match self.decide_for(&pod, &workload) {
            Decision::Skip(reason) => Ok((manifest, Some(reason))),
            Decision::Inject(patch) => {
                json_patch::patch(target, &patch)
                    .map_err(|e| ManifestError::Invalid(e.to_string()))?;
                Ok((manifest, None))
            }
        }
    }

    fn decide_for(&self, pod: &Pod, workload: &str) -> Decision {
        let annotations = pod.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        if matches!(annotation(INJECT_ANNOTATION), Some("false" | "disabled")) {
            return Decision::Skip("opted out by annotation");
        }
        if annotation(STATUS_ANNOTATION).is_some() {
            return Decision::Skip("already injected");
        }
        // The chart's sidecar template and the kustomize component set this label: the pod
        // brings its own meter.
        let labels = pod.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(METER_LABEL)).map(String::as_str) == Some("true") {
            return Decision::Skip("already has a meter");
        }
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network) == Some(true) {
            // Redirect rules would change the node's own network namespace.
            return Decision::Skip("uses the host network");
        }
        let names = spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .map(|c| c.name.as_str())
        });
        for name in names {
            if name == METER_CONTAINER || name == INIT_CONTAINER {
                return Decision::Skip("already has the meter");
            }
        }
        match self.patch(pod, workload) {
            Ok(patch) => Decision::Inject(patch),
            Err(error) => {
                tracing::warn!(%error, "cannot build the patch; pod left alone");
                Decision::Skip("the patch could not be built")
            }
        }
    }

    fn patch(&self, pod: &Pod, workload: &str) -> Result<json_patch::Patch, serde_json::Error> {
        let (init, meter) = (self.init_container(), self.meter_container(workload));
        let mut ops = Vec::new();
        let has_init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|c| !c.is_empty());
        if has_init {
            // Both first, so the pod's own init containers are metered too.
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": meter}));
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, meter]}));
        }

        let mut annotations = vec![(STATUS_ANNOTATION, "injected".to_owned())];
        if self.config.istio_exclusions {
            let existing = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ISTIO_EXCLUDE_OUTBOUND_PORTS));
            annotations.push((
                ISTIO_EXCLUDE_OUTBOUND_PORTS,
                merge_ports(existing.map(String::as_str), &self.vendor_ports),
            ));
        }
        add_entries(
            &mut ops,
            "/metadata/annotations",
            pod.metadata.annotations.is_some(),
            &annotations,
        );
        add_entries(
            &mut ops,
            "/metadata/labels",
            pod.metadata.labels.is_some(),
            &[(METER_LABEL, "true".to_owned())],
        );
        serde_json::from_value(Value::Array(ops))
    }

    fn meter_container(&self, workload: &str) -> Value {
        let c = &self.config;
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": METRICS_PORT_NAME},
                "periodSeconds": period,
                "failureThreshold": failures,
            })
        };
        let mut container = json!({
            "name": METER_CONTAINER,
            "image": c.image,
            "imagePullPolicy": c.image_pull_policy,
            "restartPolicy": "Always",
            "args": ["meter", "--log-format", "json"],
            "env": [
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
                {"name": "POD_WORKLOAD", "value": workload},
                {"name": "PROXY_TELEMETRY_CONFIG_YAML", "value": c.meter_config},
            ],
            "ports": [{"name": METRICS_PORT_NAME, "containerPort": self.admin_port, "protocol": "TCP"}],
            // The pod's containers start once the meter is ready (native sidecar semantics),
            // so no crawler connection is redirected to a port nobody listens on.
            "startupProbe": probe("/readyz", 1, 60),
            "readinessProbe": probe("/readyz", 5, 3),
            "livenessProbe": probe("/healthz", 10, 6),
            "securityContext": {
                "runAsUser": c.meter_uid,
                "runAsGroup": c.meter_uid,
                "runAsNonRoot": true,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some(resources) = &c.resources {
            container["resources"] = json!(resources);
        }
        container
    }

    fn init_container(&self) -> Value {
        let c = &self.config;
        let mut args = vec![
            "init-iptables".to_owned(),
            "--exclude-uid".to_owned(),
            c.meter_uid.to_string(),
        ];
        if c.capture.by_address {
            args.push("--by-address".into());
        }
        if c.capture.all {
            args.push("--all".into());
        }
        for cidr in &c.capture.exclude_cidrs {
            args.extend(["--exclude-cidr".to_owned(), cidr.clone()]);
        }
        for port in &c.capture.exclude_ports {
            args.extend(["--exclude-port".to_owned(), port.to_string()]);
        }
        if c.capture.iptables != default_iptables() {
            args.extend(["--iptables".to_owned(), c.capture.iptables.clone()]);
        }
        let mut container = json!({
            "name": INIT_CONTAINER,
            "image": c.init_image,
            "imagePullPolicy": c.image_pull_policy,
            "args": args,
            "env": [{"name": "PROXY_TELEMETRY_CONFIG_YAML", "value": c.meter_config}],
            // iptables needs root with NET_ADMIN and NET_RAW in the pod's network namespace, and
            // a writable /run for its lock; nothing else (as Istio's istio-init).
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some(resources) = &c.init_resources {
            container["resources"] = json!(resources);
        }
        container
    }
}

/// A pod from its JSON, which may lack `apiVersion` and `kind` (a pod template does).
fn pod_from(mut value: Value) -> Result<Pod, serde_json::Error> {
    if let Some(object) = value.as_object_mut() {
        object.insert("apiVersion".into(), "v1".into());
        object.insert("kind".into(), "Pod".into());
    }
    serde_json::from_value(value)
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// `add` operations for map entries: one per key when the map exists, else the whole map.
fn add_entries(ops: &mut Vec<Value>, path: &str, exists: bool, entries: &[(&str, String)]) {
    if exists {
        for (key, value) in entries {
            // RFC 6901: '~' and '/' in a key are escaped.
            let key = key.replace('~', "~0").replace('/', "~1");
            ops.push(json!({"op": "add", "path": format!("{path}/{key}"), "value": value}));
        }
    } else {
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
            .collect();
        ops.push(json!({"op": "add", "path": path, "value": map}));
    }
}

/// A comma-separated port list with `ports` added, existing entries (ranges included) kept in
/// their order.
fn merge_ports(existing: Option<&str>, ports: &BTreeSet<u16>) -> String {
    let mut list: Vec<String> = existing
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    for port in ports {
        let port = port.to_string();
        if !list.contains(&port) {
            list.push(port);
        }
    }
    list.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_exclusions_keep_what_the_pod_already_excludes() {
        let ports = BTreeSet::from([8000, 3128]);
        assert_eq!(merge_ports(None, &ports), "3128,8000");
        assert_eq!(
            merge_ports(Some("5432, 8000,9000-9100"), &ports),
            "5432,8000,9000-9100,3128"
        );
    }

    #[test]
    fn keys_with_slashes_are_escaped_in_patch_paths() {
        let mut ops = Vec::new();
        add_entries(
            &mut ops,
            "/metadata/labels",
            true,
            &[("proxy-telemetry.io/meter", "true".into())],
        );
        assert_eq!(ops[0]["path"], "/metadata/labels/proxy-telemetry.io~1meter");
    }
}
