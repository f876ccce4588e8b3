//! A synthetic fleet of meters for the Prometheus half of the scale harness
//! (`bench/scale_prometheus.py`): the meter's metric families, names and labels from
//! `pt_metrics::spec`, for thousands of crawler pods that come and go, exported as one meter per
//! pod (the sidecar topology) or by a few shared replicas (the gateway). Served live for a real
//! Prometheus to scrape (`serve`), with a file-based service discovery document standing in for
//! the Kubernetes pod list, or written with timestamps for `promtool tsdb create-blocks-from
//! openmetrics` (`history`).
//!
//! Everything is a function of time: pod slot `i` is replaced every `lifetime`, its
//! replacements spread evenly over the lifetime (golden-ratio offsets), and a pod's counters
//! grow with its age at its rates. So a live scrape and a backfilled sample at the same instant
//! agree, and counters never go backwards. Which series exist follows the meter: a per-pod
//! series appears with the pod's first such request (a series is created on first increment),
//! per-vendor gauges exist from start-up, and a shared meter stops exporting a departed pod
//! `series_ttl` after its last request (`metrics.pod_series_ttl`).

use std::fmt::Write as _;

use pt_metrics::registry::DURATION_BUCKETS;
use pt_metrics::spec::{self, FamilySpec};

/// Golden-ratio fraction: offsets `frac(i·φ)` spread slots evenly for any number of them.
const PHI_FRACTION: f64 = 0.618_033_988_749_895;

/// How the fleet's meters are deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// One meter per crawler pod, scraped as its own target.
    Sidecar,
    /// A few shared meters (replicas) carrying every pod.
    Gateway,
}

/// The fleet's shape and traffic.
#[derive(Clone, Debug, clap::Args)]
pub struct Fleet {
    #[arg(long, value_enum, default_value = "gateway")]
    pub profile: Profile,
    /// Crawler pods alive at any time.
    #[arg(long, default_value_t = 5000)]
    pub pods: usize,
    /// Vendors and their shares of the pods (each pod uses one vendor).
    #[arg(long, default_value = "vendor-a=40,vendor-b=35,vendor-c=25", value_parser = parse_vendors)]
    pub vendors: Vendors,
    /// Deployments the pods belong to (pod slot `i` belongs to workload `i % workloads`).
    #[arg(long, default_value_t = 50)]
    pub workloads: usize,
    /// Namespaces the workloads are spread over.
    #[arg(long, default_value_t = 5)]
    pub namespaces: usize,
    /// How long a pod lives before a new one replaces it (churn), in seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub lifetime: f64,
    /// Gateway replicas.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Distinct destinations each pod visits.
    #[arg(long, default_value_t = 20)]
    pub destinations_per_pod: usize,
    /// Distinct destinations of the whole fleet.
    #[arg(long, default_value_t = 400)]
    pub destination_universe: usize,
    /// `metrics.max_destinations_per_vendor` of every meter; 0: destination families off.
    #[arg(long, default_value_t = 100)]
    pub max_destinations: usize,
    /// `metrics.pod_series_ttl` of a shared meter, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub series_ttl: f64,
    /// Requests per second of each pod.
    #[arg(long, default_value_t = 0.4)]
    pub rate: f64,
    /// Seconds a sidecar keeps answering scrapes after its pod is gone from the target list:
    /// the meter's `shutdown.final_scrape_delay`, so that its last counts are scraped.
    #[arg(long, default_value_t = 15.0)]
    pub final_scrape_delay: f64,
    /// The instant (Unix seconds) the slots' replacement schedule is counted from.
    #[arg(long, default_value_t = 1_700_000_000.0)]
    pub epoch: f64,
}

/// Vendor names and weights.
#[derive(Clone, Debug)]
pub struct Vendors(pub Vec<(String, u32)>);

fn parse_vendors(text: &str) -> Result<Vendors, String> {
    let vendors = text
        .split(',')
        .map(|part| {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let weight = weight.parse::<u32>().map_err(|e| format!("{part}: {e}"))?;
            Ok((name.trim().to_owned(), weight))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if vendors.is_empty() || vendors.iter().all(|(_, w)| *w == 0) {
        return Err("no vendor with a weight".into());
    }
    Ok(Vendors(vendors))
}

/// What a pod does, as shares of its requests (a crawler's typical mix: plain HTTP and HTTPS
/// through tunnels, a few client errors, rare vendor failures).
const HTTP1_SHARE: f64 = 0.6;
const CONNECT_SHARE: f64 = 0.4;
const SUCCESS_SHARE: f64 = 0.95;
const CLIENT_ERROR_SHARE: f64 = 0.05;
/// Vendor-leg failures (resets) per request.
const RESET_SHARE: f64 = 0.002;
/// Of the tunnels, how many carry HTTP/2 in TLS; the rest HTTP/1.1 in TLS.
const TLS_H2_SHARE: f64 = 0.7;
const SENT_PER_REQUEST: f64 = 700.0;
const RECEIVED_PER_REQUEST: f64 = 40_000.0;
/// Client connections a pod keeps open to its meter (one plain, one tunnel).
const CONNECTIONS_PER_POD: i64 = 2;
/// Response-head latency distribution: the share of requests at or under each bucket bound
/// of [`DURATION_BUCKETS`] (5 ms … 60 s): most within a second, a tail to tens of seconds.
const LATENCY_CDF: [f64; 14] = [
    0.0, 0.01, 0.05, 0.15, 0.35, 0.6, 0.8, 0.92, 0.97, 0.985, 0.993, 0.997, 0.999, 1.0,
];
const MEAN_LATENCY_SECONDS: f64 = 0.6;

/// A meter Prometheus scrapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The sidecar of the pod of this slot and generation.
    Sidecar { slot: usize, generation: i64 },
    /// A gateway replica.
    Gateway { replica: usize },
}

/// One pod: a slot's generation.
#[derive(Clone, Copy, Debug)]
struct Pod {
    slot: usize,
    generation: i64,
    born: f64,
    dies: f64,
    hash: u64,
}

/// The labels Prometheus attaches to a target (what the chart's relabelling makes of the
/// Kubernetes pod) and where it is scraped.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    pub target: Target,
    pub path: String,
    pub namespace: String,
    pub pod: String,
    pub component: Option<&'static str>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: a well-spread hash of a small integer.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Samples of one target at one instant, in exposition order.
#[derive(Default)]
pub struct Samples {
    /// (family, sample name suffix, labels, value)
    pub rows: Vec<(&'static FamilySpec, &'static str, String, f64)>,
}

impl Samples {
    fn push(
        &mut self,
        family: &'static FamilySpec,
        suffix: &'static str,
        labels: String,
        value: f64,
    ) {
        self.rows.push((family, suffix, labels, value));
    }
}

impl Fleet {
    fn offset(&self, slot: usize) -> f64 {
        (slot as f64 * PHI_FRACTION).fract() * self.lifetime
    }

    fn pod(&self, slot: usize, generation: i64) -> Pod {
        let born = self.epoch + self.offset(slot) + (generation - 1) as f64 * self.lifetime;
        Pod {
            slot,
            generation,
            born,
            dies: born + self.lifetime,
            hash: mix((slot as u64) << 24 ^ generation as u64),
        }
    }

    /// The generation of `slot` alive at `t`.
    fn generation_at(&self, slot: usize, t: f64) -> i64 {
        ((t - self.epoch - self.offset(slot)) / self.lifetime).floor() as i64 + 1
    }

    fn vendor_of(&self, pod: &Pod) -> usize {
        let total: u64 = self.vendors.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut pick = pod.hash % total.max(1);
        for (i, (_, weight)) in self.vendors.0.iter().enumerate() {
            if pick < u64::from(*weight) {
                return i;
            }
            pick -= u64::from(*weight);
        }
        0
    }

    fn workload_of(&self, slot: usize) -> usize {
        slot % self.workloads.max(1)
    }

    fn namespace_of(&self, slot: usize) -> String {
        format!("crawl-{}", self.workload_of(slot) % self.namespaces.max(1))
    }

    fn workload_name(&self, slot: usize) -> String {
        format!("crawler-{:02}", self.workload_of(slot))
    }

    fn pod_name(&self, pod: &Pod) -> String {
        // As a Deployment names its pods: workload, replica-set hash, a random suffix. The
        // suffix has 40 bits, not Kubernetes' 5 characters (27^5): with thousands of pods an
        // hour, a shorter one repeats within a workload, and two pods with one name are one
        // series in a meter but two rows (a duplicate sample) in this model.
        format!(
            "{}-{:08x}-{:010x}",
            self.workload_name(pod.slot),
            mix(self.workload_of(pod.slot) as u64) as u32,
            pod.hash & 0xff_ffff_ffff
        )
    }

    fn replicas_of(&self, pod: &Pod) -> Vec<usize> {
        // A pod's two connections are balanced over the replicas one by one: on one replica,
        // or on two.
        let replicas = self.replicas.max(1);
        let first = (pod.hash >> 20) as usize % replicas;
        let second = (pod.hash >> 40) as usize % replicas;
        if first == second {
            vec![first]
        } else {
            vec![first, second]
        }
    }

    /// The targets to scrape at `t`.
    pub fn targets_at(&self, t: f64) -> Vec<TargetInfo> {
        match self.profile {
            Profile::Sidecar => (0..self.pods)
                .map(|slot| {
                    let pod = self.pod(slot, self.generation_at(slot, t));
                    TargetInfo {
                        target: Target::Sidecar {
                            slot,
                            generation: pod.generation,
                        },
                        path: format!("/sidecar/{slot}/{}", pod.generation),
                        namespace: self.namespace_of(slot),
                        pod: self.pod_name(&pod),
                        component: None,
                    }
                })
                .collect(),
            Profile::Gateway => (0..self.replicas.max(1))
                .map(|replica| TargetInfo {
                    target: Target::Gateway { replica },
                    path: format!("/gateway/{replica}"),
                    namespace: "proxy-telemetry".into(),
                    pod: format!("proxy-telemetry-gateway-{replica}"),
                    component: Some("gateway"),
                })
                .collect(),
        }
    }

    /// Whether `target` is scraped at `t`: a sidecar while its pod lives and for the final
    /// scrape delay after (every generation since the one alive a delay ago, which is more
    /// than the one before the current when the delay exceeds a pod's lifetime).
    pub fn alive(&self, target: Target, t: f64) -> bool {
        match target {
            Target::Sidecar { slot, generation } => {
                slot < self.pods
                    && (self.generation_at(slot, t - self.final_scrape_delay)
                        ..=self.generation_at(slot, t))
                        .contains(&generation)
            }
            Target::Gateway { replica } => replica < self.replicas.max(1),
        }
    }

    /// The target behind a scrape path.
    pub fn parse_path(&self, path: &str) -> Option<Target> {
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next()?, parts.next()?, parts.next()) {
            ("sidecar", slot, Some(generation)) => Some(Target::Sidecar {
                slot: slot.parse().ok()?,
                generation: generation.parse().ok()?,
            }),
            ("gateway", replica, None) => Some(Target::Gateway {
                replica: replica.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Every sample `target` exports at `t`.
    pub fn samples(&self, target: Target, t: f64) -> Samples {
        let mut out = Samples::default();
        match target {
            Target::Sidecar { slot, generation } => {
                let pod = self.pod(slot, generation);
                let age = (t.min(pod.dies) - pod.born).max(0.0);
                self.pod_samples(&mut out, &pod, age, 1.0);
                self.meter_samples(&mut out, &[(self.vendor_of(&pod), age, 1.0)], 1);
            }
            Target::Gateway { replica } => {
                // Pods on this replica: alive now, or gone less than the series TTL ago.
                let mut carried = vec![0.0f64; self.vendors.0.len()];
                let mut alive = 0usize;
                for slot in 0..self.pods {
                    let now = self.generation_at(slot, t);
                    let mut generation = now;
                    loop {
                        let pod = self.pod(slot, generation);
                        if t - pod.dies > self.series_ttl || generation < now - 64 {
                            break;
                        }
                        let replicas = self.replicas_of(&pod);
                        if replicas.contains(&replica) {
                            let share = 1.0 / replicas.len() as f64;
                            let age = (t.min(pod.dies) - pod.born).max(0.0);
                            self.pod_samples(&mut out, &pod, age, share);
                            if generation == now {
                                alive += 1;
                            }
                        }
                        generation -= 1;
                    }
                }
                // The replica's totals since the epoch: its share of the fleet's requests.
                let elapsed = (t - self.epoch).max(0.0);
                let fleet_seconds = elapsed * self.pods as f64 / self.replicas.max(1) as f64;
                let total: f64 = self.vendors.0.iter().map(|(_, w)| f64::from(*w)).sum();
                for (i, (_, weight)) in self.vendors.0.iter().enumerate() {
                    carried[i] = fleet_seconds * f64::from(*weight) / total;
                }
                let per_vendor: Vec<(usize, f64, f64)> = carried
                    .iter()
                    .enumerate()
                    .map(|(i, seconds)| (i, *seconds, f64::from(self.vendors.0[i].1) / total))
                    .collect();
                self.meter_samples(&mut out, &per_vendor, alive);
            }
        }
        out
    }

    fn pod_labels(&self, vendor: usize, pod: &Pod) -> String {
        format!(
            "proxy_vendor=\"{}\",source_namespace=\"{}\",source_pod=\"{}\",source_workload=\"{}\"",
            self.vendors.0[vendor].0,
            self.namespace_of(pod.slot),
            self.pod_name(pod),
            self.workload_name(pod.slot)
        )
    }

    /// A pod's per-pod families; `share` of its traffic is on this meter.
    fn pod_samples(&self, out: &mut Samples, pod: &Pod, age: f64, share: f64) {
        let vendor = self.vendor_of(pod);
        let labels = self.pod_labels(vendor, pod);
        let requests = self.rate * age * share;
        let mut any = false;
        for (protocol, p_share) in [("http1", HTTP1_SHARE), ("connect", CONNECT_SHARE)] {
            for (class, c_share) in [("2xx", SUCCESS_SHARE), ("4xx", CLIENT_ERROR_SHARE)] {
                let count = (requests * p_share * c_share).floor();
                if count >= 1.0 {
                    any = true;
                    out.push(
                        &spec::REQUESTS,
                        "_total",
                        format!("{labels},protocol=\"{protocol}\",status_class=\"{class}\""),
                        count,
                    );
                }
            }
        }
        if any {
            let requests = requests.floor();
            let jitter = 1.0 + (pod.hash % 64) as f64 / 128.0;
            out.push(
                &spec::SENT_BYTES,
                "_total",
                labels.clone(),
                (requests * SENT_PER_REQUEST).floor(),
            );
            out.push(
                &spec::RECEIVED_BYTES,
                "_total",
                labels,
                (requests * RECEIVED_PER_REQUEST * jitter).floor(),
            );
        }
    }

    /// A meter's own families: destinations, latency, errors, tunnels, gauges. `vendors`:
    /// (vendor, pod-seconds of traffic carried, share of the meter's pods).
    fn meter_samples(&self, out: &mut Samples, vendors: &[(usize, f64, f64)], pods: usize) {
        let sidecar = self.profile == Profile::Sidecar;
        let destinations = self.max_destinations > 0;
        for &(vendor, pod_seconds, _) in vendors {
            let v = &self.vendors.0[vendor].0;
            let requests = (self.rate * pod_seconds).floor();
            if requests < 1.0 {
                continue;
            }
            if destinations {
                // A sidecar sees its pod's destinations; a shared meter the fleet's, up to
                // its cap, the rest folded into `other`.
                let distinct = if sidecar {
                    self.destinations_per_pod
                } else {
                    self.destination_universe
                };
                let kept = distinct.min(self.max_destinations);
                for d in 0..kept + usize::from(distinct > kept) {
                    let (name, share) = if d < kept {
                        let id = if sidecar {
                            mix(vendor as u64 ^ d as u64) as usize % self.destination_universe
                        } else {
                            d
                        };
                        (format!("site-{id}.example"), 1.0 / distinct as f64)
                    } else {
                        (
                            "other".to_owned(),
                            (distinct - kept) as f64 / distinct as f64,
                        )
                    };
                    let dest_requests = (requests * share).floor();
                    if dest_requests < 1.0 {
                        continue;
                    }
                    let labels = format!("proxy_vendor=\"{v}\",destination=\"{name}\"");
                    out.push(
                        &spec::DESTINATION_REQUESTS,
                        "_total",
                        labels.clone(),
                        dest_requests,
                    );
                    out.push(
                        &spec::DESTINATION_SENT_BYTES,
                        "_total",
                        labels.clone(),
                        (dest_requests * SENT_PER_REQUEST).floor(),
                    );
                    out.push(
                        &spec::DESTINATION_RECEIVED_BYTES,
                        "_total",
                        labels,
                        (dest_requests * RECEIVED_PER_REQUEST).floor(),
                    );
                }
            }
            for (protocol, p_share) in [("http1", HTTP1_SHARE), ("connect", CONNECT_SHARE)] {
                let count = (requests * p_share).floor();
                if count < 1.0 {
                    continue;
                }
                let labels = format!("proxy_vendor=\"{v}\",protocol=\"{protocol}\"");
                for (bound, cdf) in DURATION_BUCKETS.iter().zip(LATENCY_CDF) {
                    out.push(
                        &spec::REQUEST_DURATION,
                        "_bucket",
                        format!("{labels},le=\"{bound}\""),
                        (count * cdf).floor(),
                    );
                }
                out.push(
                    &spec::REQUEST_DURATION,
                    "_bucket",
                    format!("{labels},le=\"+Inf\""),
                    count,
                );
                out.push(
                    &spec::REQUEST_DURATION,
                    "_sum",
                    labels.clone(),
                    count * MEAN_LATENCY_SECONDS,
                );
                out.push(&spec::REQUEST_DURATION, "_count", labels, count);
            }
            let resets = (requests * RESET_SHARE).floor();
            if resets >= 1.0 {
                out.push(
                    &spec::UPSTREAM_ERRORS,
                    "_total",
                    format!("proxy_vendor=\"{v}\",reason=\"reset\""),
                    resets,
                );
            }
            let tunnels = (requests * CONNECT_SHARE).floor();
            for (inner, share) in [("tls_h2", TLS_H2_SHARE), ("tls_http1", 1.0 - TLS_H2_SHARE)] {
                let count = (tunnels * share).floor();
                if count >= 1.0 {
                    out.push(
                        &spec::TUNNELS,
                        "_total",
                        format!("proxy_vendor=\"{v}\",inner=\"{inner}\""),
                        count,
                    );
                }
            }
        }
        if !sidecar {
            out.push(
                &spec::REJECTED_REQUESTS,
                "_total",
                "reason=\"auth_failed\"".into(),
                3.0,
            );
        }
        // Gauges exist for every configured vendor from start-up.
        for (vendor, (v, _)) in self.vendors.0.iter().enumerate() {
            let (carried, share) = vendors
                .iter()
                .find(|(i, _, _)| *i == vendor)
                .map_or((0.0, 0.0), |(_, seconds, share)| (*seconds, *share));
            let tunnels = if sidecar {
                f64::from(u8::from(carried > 0.0))
            } else {
                (pods as f64 * share).round()
            };
            out.push(
                &spec::ACTIVE_TUNNELS,
                "",
                format!("proxy_vendor=\"{v}\""),
                tunnels,
            );
            if destinations {
                let distinct = if sidecar {
                    self.destinations_per_pod
                } else {
                    self.destination_universe
                };
                let labels = if carried > 0.0 {
                    distinct.min(self.max_destinations)
                } else {
                    0
                };
                out.push(
                    &spec::DESTINATION_LABELS,
                    "",
                    format!("proxy_vendor=\"{v}\""),
                    labels as f64,
                );
            }
        }
        out.push(
            &spec::DESTINATION_LABEL_LIMIT,
            "",
            String::new(),
            self.max_destinations as f64,
        );
        let connections = CONNECTIONS_PER_POD * i64::try_from(pods).unwrap_or(i64::MAX);
        out.push(
            &spec::OPEN_CONNECTIONS,
            "",
            String::new(),
            connections as f64,
        );
        out.push(
            &spec::BUILD_INFO,
            "",
            format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1.0,
        );
    }
}

/// Writes `samples` as an OpenMetrics exposition (a scrape's body); with `history`, every
/// sample carries `timestamp` and the target's labels, for backfilling.
pub fn write_exposition(out: &mut String, samples: &Samples, history: Option<(f64, &str)>) {
    let mut last: Option<&str> = None;
    for (family, suffix, labels, value) in &samples.rows {
        if history.is_none() && last != Some(family.name) {
            let _ = writeln!(out, "# HELP {} {}.", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            last = Some(family.name);
        }
        let labels = match history {
            Some((_, target)) if labels.is_empty() => target.to_owned(),
            Some((_, target)) => format!("{target},{labels}"),
            None => labels.clone(),
        };
        let _ = write!(out, "{}{}", family.name, suffix);
        if !labels.is_empty() {
            let _ = write!(out, "{{{labels}}}");
        }
        match history {
            Some((timestamp, _)) => {
                let _ = writeln!(out, " {value} {timestamp}");
            }
            None => {
                let _ = writeln!(out, " {value}");
            }
        }
    }
}

/// Target labels as Prometheus stores them on every sample of `info`.
pub fn target_labels(info: &TargetInfo, instance: &str) -> String {
    let mut labels = format!(
        "job=\"proxy-telemetry\",instance=\"{instance}\",namespace=\"{}\",pod=\"{}\"",
        info.namespace, info.pod
    );
    if let Some(component) = info.component {
        let _ = write!(labels, ",component=\"{component}\"");
    }
    labels
}

/// The file-based service discovery document for the targets at `t`: the Kubernetes pod
/// metadata the chart's `kubernetes_sd_configs` would give, so its relabelling applies as is.
pub fn file_sd(fleet: &Fleet, t: f64, address: &str) -> serde_json::Value {
    let targets: Vec<serde_json::Value> = fleet
        .targets_at(t)
        .into_iter()
        .map(|info| {
            let mut labels = serde_json::json!({
                "__metrics_path__": info.path,
                "__meta_kubernetes_namespace": info.namespace,
                "__meta_kubernetes_pod_name": info.pod,
                "__meta_kubernetes_pod_container_port_name": "pt-metrics",
                "__meta_kubernetes_pod_phase": "Running",
            });
            if let Some(component) = info.component {
                labels["__meta_kubernetes_pod_label_app_kubernetes_io_component"] =
                    component.into();
            }
            serde_json::json!({"targets": [address], "labels": labels})
        })
        .collect();
    serde_json::Value::Array(targets)
}

/// Serves every target's `/metrics` on `listener` and keeps `sd_file` listing the live ones.
pub async fn serve(
    fleet: Fleet,
    listener: tokio::net::TcpListener,
    sd_file: std::path::PathBuf,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let address = listener.local_addr()?.to_string();
    let fleet = std::sync::Arc::new(fleet);
    let sd = {
        let fleet = fleet.clone();
        let address = address.clone();
        async move {
            let mut last = String::new();
            loop {
                let document = file_sd(&fleet, now(), &address).to_string();
                if document != last {
                    let tmp = sd_file.with_extension("tmp");
                    tokio::fs::write(&tmp, &document).await?;
                    tokio::fs::rename(&tmp, &sd_file).await?;
                    last = document;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        }
    };
    tokio::spawn(sd);
    eprintln!(
        "serving {} targets' metrics on {address}",
        fleet.targets_at(now()).len()
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            // HTTP/1.1 keep-alive, GET only: what a Prometheus scraper sends.
            while let Ok(Some(request_line)) = lines.next_line().await {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.is_empty() {
                        break;
                    }
                }
                let path = request_line.split(' ').nth(1).unwrap_or("");
                let t = now();
                let response = match fleet.parse_path(path) {
                    Some(target) if fleet.alive(target, t) => {
                        let mut body = String::new();
                        write_exposition(&mut body, &fleet.samples(target, t), None);
                        body.push_str("# EOF\n");
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                };
                if write.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes every sample of [`from`, `to`) every `step` seconds, as Prometheus would have
/// scraped it, for `promtool tsdb create-blocks-from openmetrics`.
pub fn history(
    fleet: &Fleet,
    from: f64,
    to: f64,
    step: f64,
    instance: &str,
    keep: Option<&std::collections::HashSet<String>>,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut samples = 0u64;
    let mut text = String::new();
    // Target by target (a sidecar only over its pod's life), each series' samples in time
    // order: promtool needs no more than that.
    let mut targets: Vec<(TargetInfo, f64, f64)> = Vec::new();
    match fleet.profile {
        Profile::Gateway => {
            for info in fleet.targets_at(from) {
                targets.push((info, from, to));
            }
        }
        Profile::Sidecar => {
            for slot in 0..fleet.pods {
                let first = fleet.generation_at(slot, from);
                let last = fleet.generation_at(slot, to);
                for generation in first..=last {
                    let pod = fleet.pod(slot, generation);
                    let info = TargetInfo {
                        target: Target::Sidecar { slot, generation },
                        path: String::new(),
                        namespace: fleet.namespace_of(slot),
                        pod: fleet.pod_name(&pod),
                        component: None,
                    };
                    targets.push((info, pod.born.max(from), pod.dies.min(to)));
                }
            }
        }
    }
    for (info, start, end) in targets {
        let labels = target_labels(&info, instance);
        // Scrapes fall on the step grid.
        let mut t = (start / step).ceil() * step;
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        while t < end {
            let rows = fleet.samples(info.target, t).rows;
            let scraped = rows.len();
            let mut kept = 0usize;
            for (family, suffix, sample_labels, value) in rows {
                let name = format!("{}{}", family.name, suffix);
                if keep.is_some_and(|keep| !keep.contains(&name)) {
                    continue;
                }
                kept += 1;
                let key = format!("{name}{{{sample_labels}}}");
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    series.push((key, Vec::new()));
                    series.len() - 1
                });
                series[i].1.push((t, value));
            }
            // What Prometheus writes for every target at every scrape.
            for (name, value) in [
                ("up", 1.0),
                ("scrape_duration_seconds", 0.002),
                ("scrape_samples_scraped", scraped as f64),
                ("scrape_samples_post_metric_relabeling", kept as f64),
                ("scrape_series_added", 0.0),
            ] {
                let key = format!("{name}{{}}");
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    series.push((key, Vec::new()));
                    series.len() - 1
                });
                series[i].1.push((t, value));
            }
            t += step;
        }
        for (key, points) in series {
            let (name, rest) = key.split_once('{').unwrap_or((&key, "}"));
            let sample_labels = rest.trim_end_matches('}');
            let all = if sample_labels.is_empty() {
                labels.clone()
            } else {
                format!("{labels},{sample_labels}")
            };
            for (t, value) in points {
                text.clear();
                let _ = writeln!(text, "{name}{{{all}}} {value} {t}");
                out.write_all(text.as_bytes())?;
                samples += 1;
            }
        }
    }
    out.write_all(b"# EOF\n")?;
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fleet: Fleet,
    }

    fn fleet(args: &[&str]) -> Fleet {
        Cli::parse_from(std::iter::once("test").chain(args.iter().copied())).fleet
    }

    /// The series one real meter exports for one pod's traffic, counted by family: the model
    /// must export the same families with the same labels, or the Prometheus figures are not
    /// the meter's.
    #[test]
    fn a_sidecar_exports_what_a_real_meter_exports_for_the_same_traffic() {
        use pt_metrics::Name;
        use pt_metrics::labels::*;
        use pt_metrics::registry::{Metrics, MetricsOptions};
        let f = fleet(&[
            "--profile",
            "sidecar",
            "--pods",
            "1",
            "--destinations-per-pod",
            "5",
        ]);
        let pod = f.pod(0, 1);
        // Old enough for every per-pod series to exist (first reset after 1/(rate·share) s).
        let age = 3.0 / (f.rate * RESET_SHARE);
        let model = f.samples(
            Target::Sidecar {
                slot: 0,
                generation: 1,
            },
            pod.born + age.min(f.lifetime - 1.0),
        );

        let mut registry = prometheus_client::registry::Registry::default();
        let vendors: Vec<Name> = f.vendors.0.iter().map(|(v, _)| Name::new(v)).collect();
        let metrics = Metrics::new(
            &mut registry,
            &vendors,
            &MetricsOptions {
                max_destinations_per_vendor: 100,
                max_pods: 10,
            },
        );
        let vendor = &vendors[f.vendor_of(&pod)];
        let identity = metrics.pod(&f.namespace_of(0), &f.workload_name(0), &f.pod_name(&pod));
        let pod_labels = PodLabels::new(vendor, &identity);
        for protocol in [Protocol::Http1, Protocol::Connect] {
            for class in [StatusClass::Success, StatusClass::ClientError] {
                metrics
                    .requests
                    .get_or_create(&RequestLabels::new(pod_labels.clone(), protocol, class))
                    .inc();
            }
            metrics
                .request_duration
                .get_or_create(&LatencyLabels {
                    proxy_vendor: vendor.clone(),
                    protocol,
                })
                .observe(0.1);
        }
        metrics.sent_bytes.get_or_create(&pod_labels).inc();
        metrics.received_bytes.get_or_create(&pod_labels).inc();
        for d in 0..5 {
            let destination = metrics
                .destination(vendor, &format!("d{d}.example"))
                .expect("destinations on");
            let labels = DestinationLabels {
                proxy_vendor: vendor.clone(),
                destination,
            };
            metrics.destination_requests.get_or_create(&labels).inc();
            metrics.destination_sent_bytes.get_or_create(&labels).inc();
            metrics
                .destination_received_bytes
                .get_or_create(&labels)
                .inc();
        }
        metrics.upstream_error(vendor, UpstreamErrorReason::Reset);
        for inner in [TunnelInner::TlsH2, TunnelInner::TlsHttp1] {
            metrics
                .tunnels
                .get_or_create(&TunnelLabels {
                    proxy_vendor: vendor.clone(),
                    inner,
                })
                .inc();
        }
        let mut real = String::new();
        prometheus_client::encoding::text::encode(&mut real, &registry).expect("encode");

        let mut modelled = String::new();
        write_exposition(&mut modelled, &model, None);
        assert_eq!(
            shape(&modelled),
            shape(&real),
            "model:\n{modelled}\nmeter:\n{real}"
        );
    }

    /// Series per sample name, with their label names.
    fn shape(text: &str) -> std::collections::BTreeMap<String, (usize, Vec<String>)> {
        let mut out = std::collections::BTreeMap::<String, (usize, Vec<String>)>::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, rest) = line
                .split_once('{')
                .unwrap_or((line.split(' ').next().unwrap_or(line), ""));
            let mut names: Vec<String> = rest
                .split(',')
                .filter_map(|pair| {
                    pair.split_once('=')
                        .map(|(k, _)| k.trim_start_matches('}').to_owned())
                })
                .filter(|k| !k.is_empty())
                .collect();
            names.sort();
            let entry = out.entry(name.to_owned()).or_insert((0, names));
            entry.0 += 1;
        }
        out
    }

    #[test]
    fn counters_never_go_backwards_and_pods_are_replaced_every_lifetime() {
        let f = fleet(&[
            "--profile",
            "gateway",
            "--pods",
            "50",
            "--lifetime",
            "120",
            "--series-ttl",
            "20",
        ]);
        let target = Target::Gateway { replica: 0 };
        let mut last = std::collections::HashMap::new();
        let mut pods_seen = std::collections::BTreeSet::new();
        for step in 0..40 {
            let t = f.epoch + f64::from(step) * 15.0;
            for (family, suffix, labels, value) in f.samples(target, t).rows {
                if family.kind == spec::Kind::Counter {
                    let key = format!("{}{suffix}{{{labels}}}", family.name);
                    let before = last.insert(key.clone(), value).unwrap_or(0.0);
                    assert!(value >= before, "{key} went from {before} to {value}");
                }
                if let Some(pod) = labels.split("source_pod=\"").nth(1) {
                    pods_seen.insert(pod.split('"').next().unwrap_or("").to_owned());
                }
            }
        }
        // 600 s with a 120 s lifetime: each slot had about five pods.
        assert!(
            (200..=320).contains(&pods_seen.len()),
            "{}",
            pods_seen.len()
        );
    }

    #[test]
    fn a_sidecar_is_scraped_for_the_final_delay_after_its_pod_died_even_past_a_lifetime() {
        // The smoke run's compressed time: pods live 12 s, the final scrape delay is 15 s.
        let f = fleet(&[
            "--profile",
            "sidecar",
            "--pods",
            "1",
            "--lifetime",
            "12",
            "--series-ttl",
            "2",
            "--final-scrape-delay",
            "15",
        ]);
        let born = f.epoch + f.offset(0) + 24.0;
        let third = Target::Sidecar {
            slot: 0,
            generation: 3,
        };
        assert!(!f.alive(third, born - 0.5));
        for after_death in [0.5, 3.0, 14.5] {
            assert!(f.alive(third, born + 12.0 + after_death), "{after_death}");
        }
        assert!(!f.alive(third, born + 12.0 + 15.5));
    }
}
