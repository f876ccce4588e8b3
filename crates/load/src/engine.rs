//! The load engine: open-loop crawler pods with connection reuse, and their bookkeeping.
//!
//! Each pod schedules its requests at fixed instants (`start + phase + i / rate`), whether or not
//! earlier ones have answered: a slow meter or vendor makes requests queue (up to the
//! concurrency cap, then a bounded backlog), it does not slow the schedule. Latency is measured
//! from the scheduled instant, so queueing shows up in it (no coordinated omission). A late
//! timer fires at once and the schedule catches up, so the request count over a run is exact.
//!
//! Connections are pooled per pod, vendor and target, like a crawler's HTTP client does per
//! proxy and origin; a connection (or tunnel) carries at most `requests_per_connection` requests
//! and is then replaced, so the meter also sees tunnels open and close. Because a connection
//! never carries two ledger keys (vendor × pod × host), its bytes belong to exactly one entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, ClientBody, ClientError, ProxyEndpoint};
use crate::ledger::{Book, BookEntry, BookKey, Ledger};
use crate::plan::{HttpVersion, LoadPlan, Mix, PlanError, Target, VendorRoute};
use crate::report::{ErrorKind, Report, Stats};

/// Scheduled requests allowed to wait for a concurrency slot, per slot. Past it the request is
/// counted as `backlog` and skipped, so memory stays bounded when the proxy stalls.
const BACKLOG_PER_SLOT: u64 = 10;
/// After the schedule ends, how long to wait for the requests in flight beyond their timeout.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);
/// How long to wait for the last connections to close after the pools are dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub ledger: Ledger,
}

/// A run being prepared or executed.
#[derive(Debug)]
pub struct Run {
    plan: Arc<LoadPlan>,
    mix: Mix,
    roots: Arc<rustls::RootCertStore>,
    stats: Arc<Stats>,
}

impl Run {
    pub fn new(plan: LoadPlan, roots: Arc<rustls::RootCertStore>) -> Result<Run, PlanError> {
        plan.validate()?;
        let mix = Mix::new(&plan)?;
        let stats = Arc::new(Stats::new(
            plan.vendors.iter().map(|v| v.name.clone()).collect(),
            Arc::new(Book::default()),
        ));
        Ok(Run {
            plan: Arc::new(plan),
            mix,
            roots,
            stats,
        })
    }

    /// Live statistics, for a progress display.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until the plan's stop condition or `stop` is cancelled, then drains.
    pub async fn execute(self, stop: CancellationToken) -> Outcome {
        let started_wall = now_rfc3339();
        let tasks = TaskTracker::new();
        let mut pods = Vec::new();
        let plan = &self.plan;
        let per_pod_requests = plan.stop.requests.map(|total| {
            let n = plan.pods.len() as u64;
            (0..n).map(move |i| total / n + u64::from(i < total % n))
        });
        let mut per_pod_requests = per_pod_requests.map(|it| it.collect::<Vec<u64>>());
        for (index, identity) in plan.pods.iter().enumerate() {
            let pod = Arc::new(Pod::new(plan, identity));
            let limit = per_pod_requests.as_mut().map(|v| v[index]);
            let scheduler = Scheduler {
                run: self.context(),
                pod: pod.clone(),
                limit,
                seed: index as u64,
            };
            pods.push(pod);
            let stop = stop.clone();
            let tasks_for_pod = tasks.clone();
            tasks.spawn(async move { scheduler.run(stop, tasks_for_pod).await });
        }
        tasks.close();
        let drain = plan.request_timeout + DRAIN_MARGIN;
        let deadline = plan.stop.duration.map(|d| d + drain);
        match deadline {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, tasks.wait()).await;
            }
            None => tasks.wait().await,
        }
        // Close every connection, and wait for them to be closed, so the books are final.
        drop(pods);
        let book = self.stats.book.clone();
        let closed = tokio::time::timeout(CLOSE_WAIT, async {
            while book.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let _ = closed.await;
        let ledger = book.ledger(started_wall, now_rfc3339());
        Outcome {
            report: Report::from_stats(&self.stats, &ledger),
            ledger,
        }
    }

    fn context(&self) -> Context {
        Context {
            plan: self.plan.clone(),
            mix: self.mix.clone(),
            roots: self.roots.clone(),
            stats: self.stats.clone(),
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// What every request task needs.
#[derive(Debug, Clone)]
struct Context {
    plan: Arc<LoadPlan>,
    mix: Mix,
    roots: Arc<rustls::RootCertStore>,
    stats: Arc<Stats>,
}

/// One crawler pod's schedule.
struct Scheduler {
    run: Context,
    pod: Arc<Pod>,
    limit: Option<u64>,
    seed: u64,
}

impl Scheduler {
    async fn run(self, stop: CancellationToken, tasks: TaskTracker) {
        let plan = &self.run.plan;
        // Spread pods over one period (golden-ratio offsets) so they do not fire together.
        let phase = Duration::from_secs_f64(
            (self.seed as f64 * 0.618_033_988_749_895).fract() / plan.rate_per_pod,
        );
        let mut ticker = Ticker::new(Instant::now() + phase, plan.rate_per_pod);
        let end = plan.stop.duration.map(|d| Instant::now() + d);
        let slots = Arc::new(Semaphore::new(plan.concurrency_per_pod));
        let waiting = Arc::new(AtomicU64::new(0));
        let max_waiting = plan.concurrency_per_pod as u64 * BACKLOG_PER_SLOT;
        let mut rng = SmallRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // With churn, this pod slot gets a new pod every lifetime, the slots' replacements
        // spread evenly over it (golden-ratio offsets again).
        let mut pod = self.pod.clone();
        let mut generation = 0u32;
        let mut sticky_vendor = plan
            .vendor_per_pod
            .then(|| self.run.mix.draw_vendor(&mut rng));
        let mut next_replacement = plan.pod_lifetime.map(|lifetime| {
            Instant::now() + lifetime.mul_f64((self.seed as f64 * 0.618_033_988_749_895).fract())
        });
        loop {
            if self.limit.is_some_and(|limit| ticker.count() >= limit) {
                break;
            }
            if end.is_some_and(|end| ticker.peek() >= end) {
                break;
            }
            let at = tokio::select! {
                at = ticker.tick() => at,
                () = stop.cancelled() => break,
            };
            if let (Some(due), Some(lifetime)) = (next_replacement, plan.pod_lifetime)
                && at >= due
            {
                generation += 1;
                let name = format!("{}-g{generation}", self.pod.identity);
                // The old pod's connections close once its requests in flight are done.
                pod = Arc::new(Pod::new(plan, &name));
                if plan.vendor_per_pod {
                    sticky_vendor = Some(self.run.mix.draw_vendor(&mut rng));
                }
                next_replacement = Some(due + lifetime);
            }
            let (drawn, target) = self.run.mix.draw(&mut rng);
            let vendor = sticky_vendor.unwrap_or(drawn);
            let body = self.run.plan.targets[target]
                .body
                .map(|b| b.sample(&mut rng));
            self.run.stats.vendors[vendor]
                .scheduled
                .fetch_add(1, Ordering::Relaxed);
            if waiting.load(Ordering::Relaxed) >= max_waiting {
                self.run.stats.failed(vendor, ErrorKind::Backlog);
                continue;
            }
            waiting.fetch_add(1, Ordering::Relaxed);
            let (run, pod, slots, waiting) = (
                self.run.clone(),
                pod.clone(),
                slots.clone(),
                waiting.clone(),
            );
            tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                waiting.fetch_sub(1, Ordering::Relaxed);
                run.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let result = tokio::time::timeout(
                    run.plan.request_timeout,
                    pod.request(&run, vendor, target, body),
                )
                .await;
                run.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(Ok(status)) => run.stats.completed(vendor, status, at.elapsed()),
                    Ok(Err(kind)) => run.stats.failed(vendor, kind),
                    Err(_) => run.stats.failed(vendor, ErrorKind::Timeout),
                }
            });
        }
    }
}

/// The instants of an open-loop schedule: `start + i / rate`. A late wake-up fires at once and
/// the schedule catches up, so the count over any window is what the rate says, whatever the
/// latency of the work each tick starts.
#[derive(Debug)]
pub struct Ticker {
    start: Instant,
    rate: f64,
    next: u64,
}

impl Ticker {
    pub fn new(start: Instant, rate: f64) -> Ticker {
        Ticker {
            start,
            rate,
            next: 0,
        }
    }

    /// The next instant.
    pub fn peek(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.next as f64 / self.rate)
    }

    /// Ticks fired so far.
    pub fn count(&self) -> u64 {
        self.next
    }

    /// Waits for the next instant and returns it.
    pub async fn tick(&mut self) -> Instant {
        let at = self.peek();
        tokio::time::sleep_until(at).await;
        self.next += 1;
        at
    }
}

/// A connection that carries a limited number of requests.
struct Reusable<S> {
    sender: S,
    uses: u32,
}

/// Pools are per vendor and target: a connection's bytes belong to one entry of the ledger.
type ConnKey = (usize, usize);

/// One crawler pod: its identity, proxies and connection pools.
struct Pod {
    identity: String,
    proxies: Vec<ProxyEndpoint>,
    idle_h1: std::sync::Mutex<HashMap<ConnKey, Vec<Reusable<http1::SendRequest<ClientBody>>>>>,
    shared_h2: tokio::sync::Mutex<HashMap<ConnKey, Reusable<http2::SendRequest<ClientBody>>>>,
    carriers: tokio::sync::Mutex<HashMap<ConnKey, http2::SendRequest<ClientBody>>>,
}

/// Reads a response to its end and returns its status. `proxied` counts it among the requests
/// the meter must count, when the proxy itself answered it (plain HTTP, not inside a tunnel).
async fn complete(
    response: http::Response<hyper::body::Incoming>,
    proxied: Option<&AtomicU64>,
) -> Result<u16, ErrorKind> {
    if let Some(counter) = proxied {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let status = response.status().as_u16();
    client::drain(response.into_body())
        .await
        .map_err(ErrorKind::of)?;
    Ok(status)
}

/// Why an attempt failed.
#[derive(Debug)]
enum Attempt {
    /// A reused connection failed before any answer: the proxy had closed it as idle while the
    /// request was on its way (a meter at its connection cap closes idle connections, oldest
    /// first, and an HTTP/2 connection in a reclaimed tunnel dies with it). Like browsers and
    /// Go's HTTP client, an idempotent request is sent again, once, on a new connection
    /// (RFC 9110 §9.2.2, RFC 9112 §9.3.1).
    Stale,
    Failed(ErrorKind),
}

impl Attempt {
    /// A failure before the response head.
    fn failed(error: hyper::Error, reused: bool) -> Attempt {
        tracing::debug!(%error, reused, "request failed");
        if reused && !error.is_user() && !error.is_parse() && !error.is_timeout() {
            Attempt::Stale
        } else {
            Attempt::Failed(ErrorKind::of(error.into()))
        }
    }

    fn kind(self) -> ErrorKind {
        match self {
            Attempt::Stale => ErrorKind::Http,
            Attempt::Failed(kind) => kind,
        }
    }
}

impl From<ErrorKind> for Attempt {
    fn from(kind: ErrorKind) -> Attempt {
        Attempt::Failed(kind)
    }
}

/// How a request is written, by where it goes.
#[derive(Clone, Copy)]
enum Form {
    /// `GET http://host/path` to the proxy over HTTP/1.1.
    AbsoluteH1,
    /// `:scheme http`, `:authority host` to the proxy over h2c.
    AbsoluteH2,
    /// `GET /path` with `Host`, inside a tunnel.
    Origin,
    /// `:scheme https`, `:authority host`, inside a tunnel.
    AbsoluteTls,
}

impl Pod {
    fn new(plan: &LoadPlan, identity: &str) -> Pod {
        let proxies = plan
            .vendors
            .iter()
            .map(|vendor| {
                let base = match vendor.route {
                    VendorRoute::Header => ProxyEndpoint::new(plan.proxy)
                        .with_header(&plan.vendor_header, &vendor.name),
                    VendorRoute::Proxy(address) => ProxyEndpoint::new(address),
                };
                base.with_credentials(identity, &plan.proxy_password)
            })
            .collect();
        Pod {
            identity: identity.to_owned(),
            proxies,
            idle_h1: std::sync::Mutex::new(HashMap::new()),
            shared_h2: tokio::sync::Mutex::new(HashMap::new()),
            carriers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// One request, start to end of response body. Returns its status.
    async fn request(
        &self,
        run: &Context,
        vendor: usize,
        target: usize,
        body: Option<u64>,
    ) -> Result<u16, ErrorKind> {
        let t = &run.plan.targets[target];
        let entry = run.stats.book.entry(&BookKey {
            vendor: run.plan.vendors[vendor].name.clone(),
            pod: self.identity.clone(),
            host: t.host.clone(),
        });
        entry.requests_sent.fetch_add(1, Ordering::Relaxed);
        let key = (vendor, target);
        let mut attempt = self.send(run, key, &entry, body).await;
        if matches!(attempt, Err(Attempt::Stale)) && t.method.is_idempotent() {
            run.stats.retried.fetch_add(1, Ordering::Relaxed);
            attempt = self.send(run, key, &entry, body).await;
        }
        let status = attempt.map_err(Attempt::kind)?;
        entry.requests_completed.fetch_add(1, Ordering::Relaxed);
        Ok(status)
    }

    /// One attempt of a request, on a pooled connection or a new one.
    async fn send(
        &self,
        run: &Context,
        key: ConnKey,
        entry: &BookEntry,
        body: Option<u64>,
    ) -> Result<u16, Attempt> {
        let t = &run.plan.targets[key.1];
        match (t.https, t.version) {
            (false, HttpVersion::H1) => self.send_h1(run, key, entry, Form::AbsoluteH1, body).await,
            (false, HttpVersion::H2) => self.send_h2(run, key, entry, Form::AbsoluteH2, body).await,
            (true, HttpVersion::H1) => self.send_h1(run, key, entry, Form::Origin, body).await,
            (true, HttpVersion::H2) => self.send_h2(run, key, entry, Form::AbsoluteTls, body).await,
        }
    }

    fn build(
        &self,
        t: &Target,
        proxy: &ProxyEndpoint,
        form: Form,
        body: Option<u64>,
    ) -> Request<ClientBody> {
        let body = match body {
            Some(n) => client::full(vec![b'x'; usize::try_from(n).unwrap_or(0)]),
            None => client::empty(),
        };
        let (uri, host_header, version) = match form {
            Form::AbsoluteH1 => (t.url(), true, Version::HTTP_11),
            Form::AbsoluteH2 => (t.url(), false, Version::HTTP_2),
            Form::Origin => (t.path.clone(), true, Version::HTTP_11),
            Form::AbsoluteTls => (t.url(), false, Version::HTTP_2),
        };
        let mut request = Request::new(body);
        *request.method_mut() = t.method.clone();
        *request.uri_mut() = uri.parse().unwrap_or_default();
        *request.version_mut() = version;
        if host_header && let Ok(host) = http::HeaderValue::from_str(&t.authority()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
        if matches!(form, Form::AbsoluteH1 | Form::AbsoluteH2) {
            proxy.decorate(request.headers_mut());
        }
        request
    }

    /// HTTP/1.1 on a pooled connection: plain to the proxy, or inside a tunnel.
    async fn send_h1(
        &self,
        run: &Context,
        key: ConnKey,
        entry: &BookEntry,
        form: Form,
        body: Option<u64>,
    ) -> Result<u16, Attempt> {
        let t = &run.plan.targets[key.1];
        let proxy = &self.proxies[key.0];
        let pooled = {
            let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(key).or_default();
            std::iter::from_fn(|| list.pop()).find(|c| !c.sender.is_closed())
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let tunnel = matches!(form, Form::Origin).then_some("http/1.1");
                let io = self.transport(run, key, entry, tunnel).await?;
                let sender = client::http1(io).await.map_err(ErrorKind::of)?;
                Reusable { sender, uses: 0 }
            }
        };
        let reused = conn.uses > 0;
        conn.sender
            .ready()
            .await
            .map_err(|e| Attempt::failed(e, reused))?;
        let response = conn
            .sender
            .send_request(self.build(t, proxy, form, body))
            .await
            .map_err(|e| Attempt::failed(e, reused))?;
        let status = complete(
            response,
            matches!(form, Form::AbsoluteH1).then_some(&entry.http1),
        )
        .await?;
        conn.uses += 1;
        if conn.uses < run.plan.requests_per_connection {
            let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
            idle.entry(key).or_default().push(conn);
        }
        Ok(status)
    }

    /// HTTP/2 on the shared connection of this key: h2c to the proxy, or inside a tunnel.
    async fn send_h2(
        &self,
        run: &Context,
        key: ConnKey,
        entry: &BookEntry,
        form: Form,
        body: Option<u64>,
    ) -> Result<u16, Attempt> {
        let t = &run.plan.targets[key.1];
        let proxy = &self.proxies[key.0];
        let (mut sender, reused) = {
            let mut shared = self.shared_h2.lock().await;
            let usable = shared.get(&key).is_some_and(|c| {
                c.uses < run.plan.requests_per_connection && !c.sender.is_closed()
            });
            if !usable {
                let tunnel = matches!(form, Form::AbsoluteTls).then_some("h2");
                let io = self.transport(run, key, entry, tunnel).await?;
                let sender = client::http2(io).await.map_err(ErrorKind::of)?;
                shared.insert(key, Reusable { sender, uses: 0 });
            }
            let conn = shared.get_mut(&key).ok_or(ErrorKind::Http)?;
            conn.uses += 1;
            (conn.sender.clone(), conn.uses > 1)
        };
        let response = sender
            .send_request(self.build(t, proxy, form, body))
            .await
            .map_err(|e| Attempt::failed(e, reused))?;
        Ok(complete(
            response,
            matches!(form, Form::AbsoluteH2).then_some(&entry.h2),
        )
        .await?)
    }

    /// The connection a new HTTP connection runs on: TLS inside a new tunnel offering
    /// `tunnel_alpn`, or without it a plain connection to the proxy.
    async fn transport(
        &self,
        run: &Context,
        key: ConnKey,
        entry: &BookEntry,
        tunnel_alpn: Option<&str>,
    ) -> Result<
        Either<
            tokio_rustls::client::TlsStream<TokioIo<hyper::upgrade::Upgraded>>,
            client::CountingIo<tokio::net::TcpStream>,
        >,
        ErrorKind,
    > {
        match tunnel_alpn {
            Some(alpn) => Ok(Either::Left(self.open_tunnel(run, key, entry, alpn).await?)),
            None => self.proxies[key.0]
                .dial(entry.wire.clone())
                .await
                .map(Either::Right)
                .map_err(ErrorKind::of),
        }
    }

    /// A CONNECT tunnel to the target, with TLS offering `alpn` inside.
    async fn open_tunnel(
        &self,
        run: &Context,
        key: ConnKey,
        entry: &BookEntry,
        alpn: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TokioIo<hyper::upgrade::Upgraded>>, ErrorKind> {
        let t = &run.plan.targets[key.1];
        let proxy = &self.proxies[key.0];
        let authority = t.connect_authority();
        let tunnel = if t.h2_tunnel {
            let mut carriers = self.carriers.lock().await;
            if carriers.get(&key).is_none_or(|c| c.is_closed()) {
                let io = proxy
                    .dial(entry.wire.clone())
                    .await
                    .map_err(ErrorKind::of)?;
                carriers.insert(key, client::http2(io).await.map_err(ErrorKind::of)?);
            }
            let mut carrier = carriers.get(&key).ok_or(ErrorKind::Http)?.clone();
            drop(carriers);
            client::tunnel_h2(proxy, &mut carrier, &authority).await
        } else {
            let io = proxy
                .dial(entry.wire.clone())
                .await
                .map_err(ErrorKind::of)?;
            client::tunnel_h1(proxy, io, &authority).await
        };
        if matches!(tunnel, Ok(_) | Err(ClientError::Refused(_))) {
            entry.connect.fetch_add(1, Ordering::Relaxed);
        }
        let tunnel = tunnel.map_err(ErrorKind::of)?;
        client::tls(TokioIo::new(tunnel), &t.host, &[alpn], run.roots.clone())
            .await
            .map_err(ErrorKind::of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate requirement of the load generator: 2,000 requests/s held within 2% over 10 s on
    /// real time. The schedule catches up after late wake-ups, so only a stall of more than
    /// 200 ms at the very end could miss; the tolerance is the requirement itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_schedule_holds_2000_per_second_within_2_percent_over_10_seconds() {
        let window = Duration::from_secs(10);
        let start = Instant::now();
        let mut ticker = Ticker::new(start, 2000.0);
        let mut fired = 0u64;
        loop {
            ticker.tick().await;
            if start.elapsed() >= window {
                break;
            }
            fired += 1;
        }
        let rate = fired as f64 / window.as_secs_f64();
        assert!((rate - 2000.0).abs() <= 40.0, "{rate:.1} per second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_schedule_catches_up_instead_of_drifting() {
        let start = Instant::now();
        let mut ticker = Ticker::new(start, 100.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Fifty instants are already due: they fire at once, each with its own scheduled time.
        for i in 0..50u32 {
            assert_eq!(ticker.tick().await, start + Duration::from_millis(10) * i);
        }
        assert_eq!(Instant::now(), start + Duration::from_millis(500));
    }
}
