//! gRPC clients of the seven upstreams and the readiness poller behind the admin `/ready`.
//!
//! Discovery (`CT_UPSTREAM_DISCOVERY`):
//! - `static`: one lazily connected HTTP/2 channel per upstream URL, shared by all requests. Behind
//!   a Kubernetes ClusterIP Service (which balances connections, not requests) every call of this
//!   gateway goes to the one replica its connection landed on.
//! - `dns`: the URL's host name is resolved at start and every `CT_UPSTREAM_RESOLVE_INTERVAL`
//!   ([`maintain_endpoints`]); a tonic balanced channel holds one lazily connected endpoint per
//!   resolved address (a headless Service: one per ready pod) and every call picks one of them.
//!   tonic's balancer (tower's power-of-two-choices) weighs every endpoint the same (its load
//!   metric is constant), so the pick is uniformly random among the endpoints whose connection is
//!   ready; one still connecting is skipped. A busy replica is not avoided: it answers
//!   `overloaded` (429) when its own queue is full.

use crate::config::{Config, Discovery, MissingModelPolicy};
use crate::metrics::Metrics;
use ct_proto::v1::ensemble_service_client::EnsembleServiceClient;
use ct_proto::v1::model_service_client::ModelServiceClient;
use ct_proto::v1::preprocess_service_client::PreprocessServiceClient;
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Messages from upstreams are chunked well under 4 MiB; this leaves room for headers.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// The one model service that receives the lung mask chunks (the others get a header without
/// a mask and no mask chunks).
pub const LUNG_MASK_MODELS: [&str; 1] = ["fvlm"];

/// Endpoint changes queued towards one balanced channel (the balancer takes them when it next
/// serves a call; the health poller makes one every `CT_HEALTH_INTERVAL`).
const BALANCE_CHANGES: usize = 256;

/// One model service.
#[derive(Clone)]
pub struct ModelTarget {
    pub name: &'static str,
    pub client: ModelServiceClient<Channel>,
    pub needs_lung_mask: bool,
}

/// One upstream as `/ready` checks it.
#[derive(Clone)]
struct HealthTarget {
    name: &'static str,
    url: String,
    /// The gRPC service name the upstream reports in grpc.health.v1.
    service: &'static str,
    client: HealthClient<Channel>,
    endpoints: EndpointList,
}

/// Clients of all upstreams.
#[derive(Clone)]
pub struct Clients {
    pub preprocess: PreprocessServiceClient<Channel>,
    pub models: Vec<ModelTarget>,
    pub ensemble: EnsembleServiceClient<Channel>,
    health: Vec<HealthTarget>,
    discovery: Discovery,
}

/// Resolves `(host, port)` to socket addresses (`dns` discovery). The gateway uses
/// [`system_resolver`]; tests inject their own.
pub type Resolver = Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// `tokio::net::lookup_host` (the system resolver: /etc/hosts, then DNS; IP literals as they are).
pub fn system_resolver() -> Resolver {
    Arc::new(|host: String, port: u16| Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) }))
}

/// The settings of every upstream connection (windows, frame size, timeouts, keep-alive), for
/// a URL (`static`) or one resolved address (`dns`).
fn endpoint(uri: String, config: &Config) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(ct_service::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(ct_service::CONNECTION_WINDOW_BYTES)
        .max_frame_size(ct_service::MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// The addresses one upstream's calls currently go to, as `/upstreams` lists them.
#[derive(Clone, Debug, Default)]
pub struct EndpointList(Arc<Mutex<Vec<String>>>);

impl EndpointList {
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn set(&self, endpoints: Vec<String>) {
        if let Ok(mut g) = self.0.lock() {
            *g = endpoints;
        }
    }
}

/// `host` and `port` of an `http://host[:port]` URL (port 80 when absent; IPv6 brackets removed).
pub fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok((host.to_string(), uri.port_u16().unwrap_or(80)))
}

/// A balanced channel over the addresses `url`'s host resolves to, and the task that keeps its
/// endpoint set current (see [`maintain_endpoints`]).
pub struct DnsUpstream {
    pub channel: Channel,
    pub endpoints: EndpointList,
    pub task: JoinHandle<()>,
}

impl DnsUpstream {
    /// Creates the channel and spawns the resolver task (it stops on `shutdown`). `gauge` is set
    /// to the number of resolved addresses.
    pub fn spawn(name: &'static str, url: &str, config: &Config, resolver: Resolver, gauge: prometheus::IntGauge, shutdown: &ct_service::Shutdown) -> anyhow::Result<Self> {
        let (host, port) = host_and_port(url).map_err(anyhow::Error::msg)?;
        let (channel, changes) = Channel::balance_channel::<SocketAddr>(BALANCE_CHANGES);
        let endpoints = EndpointList::default();
        gauge.set(0);
        let cfg = config.clone();
        let resolving = Resolving {
            name,
            host,
            port,
            interval: config.upstream_resolve_interval,
            resolver,
            make_endpoint: Box::new(move |addr| endpoint(format!("http://{addr}"), &cfg)),
            changes,
            gauge,
            endpoints: endpoints.clone(),
        };
        let task = tokio::spawn(maintain_endpoints(resolving, shutdown.wait()));
        Ok(Self { channel, endpoints, task })
    }
}

/// What one resolution did to the endpoint set: the balancer changes and what to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub insert: Vec<SocketAddr>,
    pub remove: Vec<SocketAddr>,
    /// Set when the outcome differs from the previous one (so a lasting failure logs once).
    pub event: Option<ResolveEvent>,
}

/// A change of state worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveEvent {
    /// The address set changed (the first resolution included): INFO.
    Changed,
    /// The same set resolves again after a failure or an empty answer: INFO.
    Recovered,
    /// Resolution failed; the last known set is kept: WARN.
    Failed(String),
    /// The name resolved to no address; the last known set is kept: WARN.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotYet,
    Resolved,
    Failed,
    Empty,
}

/// The known addresses of one upstream and the outcome of its last resolution.
#[derive(Debug)]
pub struct EndpointTracker {
    known: BTreeSet<SocketAddr>,
    last: Outcome,
}

impl Default for EndpointTracker {
    fn default() -> Self {
        Self { known: BTreeSet::new(), last: Outcome::NotYet }
    }
}

/// `(to insert, to remove)` turning `known` into `resolved`, each sorted.
pub fn diff(known: &BTreeSet<SocketAddr>, resolved: &BTreeSet<SocketAddr>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    (resolved.difference(known).copied().collect(), known.difference(resolved).copied().collect())
}

impl EndpointTracker {
    pub fn known(&self) -> &BTreeSet<SocketAddr> {
        &self.known
    }

    /// Applies one resolution: a non-empty answer replaces the set (new addresses inserted,
    /// vanished ones removed); a failure or an empty answer keeps the last known set, so that
    /// calls keep failing fast on those addresses instead of waiting on an empty balancer.
    pub fn apply(&mut self, resolved: Result<Vec<SocketAddr>, String>) -> Step {
        let (outcome, step) = match resolved {
            Ok(addrs) if !addrs.is_empty() => {
                let new: BTreeSet<SocketAddr> = addrs.into_iter().collect();
                let (insert, remove) = diff(&self.known, &new);
                self.known = new;
                let event = if !insert.is_empty() || !remove.is_empty() {
                    Some(ResolveEvent::Changed)
                } else if self.last != Outcome::Resolved {
                    Some(ResolveEvent::Recovered)
                } else {
                    None
                };
                (Outcome::Resolved, Step { insert, remove, event })
            }
            Ok(_) => (Outcome::Empty, Step { event: (self.last != Outcome::Empty).then_some(ResolveEvent::Empty), ..Step::default() }),
            Err(e) => (Outcome::Failed, Step { event: (self.last != Outcome::Failed).then_some(ResolveEvent::Failed(e)), ..Step::default() }),
        };
        self.last = outcome;
        step
    }

    /// An address whose endpoint could not be built is not known (so the next round retries).
    fn forget(&mut self, addr: &SocketAddr) {
        self.known.remove(addr);
    }
}

/// Everything the resolver task of one upstream needs.
struct Resolving {
    name: &'static str,
    host: String,
    port: u16,
    interval: Duration,
    resolver: Resolver,
    make_endpoint: Box<dyn Fn(SocketAddr) -> Result<Endpoint, tonic::transport::Error> + Send + Sync>,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
    gauge: prometheus::IntGauge,
    endpoints: EndpointList,
}

/// Resolves `host:port` now and then every `interval` until `stop`, and sends the differences
/// to the balanced channel. Ends early when the channel is gone.
async fn maintain_endpoints(r: Resolving, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut tracker = EndpointTracker::default();
    let timeout = r.interval.max(Duration::from_secs(5));
    loop {
        let round = async {
            let resolved = match tokio::time::timeout(timeout, (r.resolver)(r.host.clone(), r.port)).await {
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            let step = tracker.apply(resolved);
            for addr in &step.remove {
                if r.changes.send(Change::Remove(*addr)).await.is_err() {
                    return false;
                }
            }
            for addr in &step.insert {
                match (r.make_endpoint)(*addr) {
                    Ok(e) => {
                        if r.changes.send(Change::Insert(*addr, e)).await.is_err() {
                            return false;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(upstream = r.name, %addr, error = %e, "cannot build an endpoint for the resolved address");
                        tracker.forget(addr);
                    }
                }
            }
            let known: Vec<String> = tracker.known().iter().map(ToString::to_string).collect();
            let n = known.len();
            match &step.event {
                Some(ResolveEvent::Changed) => {
                    tracing::info!(upstream = r.name, host = %r.host, endpoints = ?known, added = ?step.insert, removed = ?step.remove, "upstream endpoints changed")
                }
                Some(ResolveEvent::Recovered) => tracing::info!(upstream = r.name, host = %r.host, endpoints = ?known, "upstream host resolves again"),
                Some(ResolveEvent::Failed(e)) if n == 0 => {
                    tracing::warn!(upstream = r.name, host = %r.host, error = %e, "cannot resolve the upstream host; no endpoint yet: its calls wait (up to their timeouts) until it resolves")
                }
                Some(ResolveEvent::Failed(e)) => tracing::warn!(upstream = r.name, host = %r.host, error = %e, kept = ?known, "cannot resolve the upstream host; keeping the last known endpoints"),
                Some(ResolveEvent::Empty) => {
                    tracing::warn!(upstream = r.name, host = %r.host, kept = ?known, "the upstream host resolves to no address (no ready pod?); keeping the last known endpoints")
                }
                None => {}
            }
            r.gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
            r.endpoints.set(known);
            true
        };
        tokio::select! {
            _ = &mut stop => break,
            open = round => if !open { break },
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(r.interval) => {}
        }
    }
}

/// Resolver tasks of the `dns` upstreams: aborted when dropped, awaited by [`UpstreamTasks::join`]
/// after the shutdown (they stop on it).
#[derive(Default)]
pub struct UpstreamTasks(Vec<JoinHandle<()>>);

impl UpstreamTasks {
    pub async fn join(mut self) {
        for t in std::mem::take(&mut self.0) {
            let _ = t.await;
        }
    }
}

impl Drop for UpstreamTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Clients {
    /// Creates the channels; nothing is connected until the first call. With `dns` discovery one
    /// resolver task per upstream is spawned (it stops on `shutdown`).
    pub fn new(config: &Config, metrics: &Metrics, resolver: Resolver, shutdown: &ct_service::Shutdown) -> anyhow::Result<(Self, UpstreamTasks)> {
        let mut tasks = UpstreamTasks::default();
        let mut connect = |name: &'static str, url: &str| -> anyhow::Result<(Channel, EndpointList)> {
            let gauge = metrics.upstream_endpoints.with_label_values(&[name]);
            match config.upstream_discovery {
                Discovery::Static => {
                    let ch = endpoint(url.to_string(), config)?.connect_lazy();
                    let (host, port) = host_and_port(url).map_err(anyhow::Error::msg)?;
                    let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                    let list = EndpointList::default();
                    list.set(vec![shown]);
                    gauge.set(1);
                    Ok((ch, list))
                }
                Discovery::Dns => {
                    let u = DnsUpstream::spawn(name, url, config, resolver.clone(), gauge, shutdown)?;
                    tasks.0.push(u.task);
                    Ok((u.channel, u.endpoints))
                }
            }
        };
        let u = &config.upstreams;
        let (pre, pre_eps) = connect("preprocess", &u.preprocess_url)?;
        let mut health = vec![HealthTarget { name: "preprocess", url: u.preprocess_url.clone(), service: "ct.v1.PreprocessService", client: HealthClient::new(pre.clone()), endpoints: pre_eps }];
        let mut models = Vec::new();
        for (name, url) in u.models() {
            let (ch, eps) = connect(name, url)?;
            health.push(HealthTarget { name, url: url.to_string(), service: "ct.v1.ModelService", client: HealthClient::new(ch.clone()), endpoints: eps });
            models.push(ModelTarget {
                name,
                client: ModelServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES),
                needs_lung_mask: LUNG_MASK_MODELS.contains(&name),
            });
        }
        let (ens, ens_eps) = connect("ensemble", &u.ensemble_url)?;
        health.push(HealthTarget { name: "ensemble", url: u.ensemble_url.clone(), service: "ct.v1.EnsembleService", client: HealthClient::new(ens.clone()), endpoints: ens_eps });
        let clients = Self {
            preprocess: PreprocessServiceClient::new(pre).max_decoding_message_size(MAX_MESSAGE_BYTES),
            models,
            ensemble: EnsembleServiceClient::new(ens).max_decoding_message_size(MAX_MESSAGE_BYTES),
            health,
            discovery: config.upstream_discovery,
        };
        Ok((clients, tasks))
    }
}

/// The last health check of one upstream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamState {
    pub name: &'static str,
    pub url: String,
    /// `serving`, `not_serving`, `unreachable` or `unknown` (not checked yet).
    pub status: String,
    /// `static` or `dns` (`CT_UPSTREAM_DISCOVERY`).
    pub discovery: &'static str,
    /// Where calls go: `dns`: the resolved addresses (`10.1.2.3:50052`, current when read);
    /// `static`: the URL's `host:port`.
    pub endpoints: Vec<String>,
    #[serde(skip)]
    endpoint_list: EndpointList,
}

/// Latest health of every upstream, shared between the poller and the admin routes.
#[derive(Clone, Default)]
pub struct HealthBoard(Arc<Mutex<Vec<UpstreamState>>>);

impl HealthBoard {
    /// The last health check of every upstream, with its current endpoints.
    pub fn snapshot(&self) -> Vec<UpstreamState> {
        let mut states = self.0.lock().map(|g| g.clone()).unwrap_or_default();
        for s in &mut states {
            s.endpoints = s.endpoint_list.snapshot();
        }
        states
    }

    fn set(&self, states: Vec<UpstreamState>) {
        if let Ok(mut g) = self.0.lock() {
            *g = states;
        }
    }
}

async fn check(t: &HealthTarget, timeout: Duration) -> &'static str {
    let mut client = t.client.clone();
    let call = client.check(HealthCheckRequest { service: t.service.to_string() });
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => "serving",
        Ok(Ok(_)) => "not_serving",
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => "not_serving",
        Ok(Err(_)) | Err(_) => "unreachable",
    }
}

/// Whether the stack can answer: preprocess and ensemble serving, and every model (policy
/// `fail`) or at least one model (policy `degrade`).
pub fn ready(states: &[UpstreamState], policy: MissingModelPolicy) -> bool {
    let up = |n: &str| states.iter().any(|s| s.name == n && s.status == "serving");
    let models: Vec<bool> = states.iter().filter(|s| s.name != "preprocess" && s.name != "ensemble").map(|s| s.status == "serving").collect();
    let models_ok = match policy {
        MissingModelPolicy::Fail => !models.is_empty() && models.iter().all(|&m| m),
        MissingModelPolicy::Degrade => models.iter().any(|&m| m),
    };
    up("preprocess") && up("ensemble") && models_ok
}

/// Checks all upstreams every `interval` until `shutdown`, updating the board, the readiness
/// flag and `ct_gateway_upstream_up`. Logs every change of readiness.
pub async fn poll_health(clients: Clients, board: HealthBoard, readiness: ct_service::Readiness, metrics: Metrics, config: Config, shutdown: ct_service::Shutdown) {
    let state = |t: &HealthTarget, status: &str| UpstreamState {
        name: t.name,
        url: t.url.clone(),
        status: status.to_string(),
        discovery: clients.discovery.as_str(),
        endpoints: Vec::new(),
        endpoint_list: t.endpoints.clone(),
    };
    board.set(clients.health.iter().map(|t| state(t, "unknown")).collect());
    let timeout = config.health_interval.min(Duration::from_secs(2)).max(Duration::from_millis(200));
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut was_ready: Option<bool> = None;
    loop {
        let checks = clients.health.iter().map(|t| async move { (t, check(t, timeout).await) });
        let results = futures::future::join_all(checks).await;
        let states: Vec<UpstreamState> = results.iter().map(|(t, s)| state(t, s)).collect();
        for s in &states {
            metrics.upstream_up.with_label_values(&[s.name]).set(i64::from(s.status == "serving"));
        }
        let now_ready = ready(&states, config.missing_model_policy);
        if was_ready != Some(now_ready) {
            let down: Vec<String> = states.iter().filter(|s| s.status != "serving").map(|s| format!("{}={}", s.name, s.status)).collect();
            if now_ready {
                tracing::info!(not_serving = ?down, "ready: upstreams serving");
            } else {
                tracing::warn!(not_serving = ?down, "not ready: waiting for upstreams");
            }
            was_ready = Some(now_ready);
        }
        board.set(states);
        readiness.set(now_ready);
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(config.health_interval) => {}
        }
    }
    readiness.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(down: &[&str]) -> Vec<UpstreamState> {
        ["preprocess", "ctclip", "supervised", "diffusion", "mednext", "fvlm", "ensemble"]
            .iter()
            .map(|n| UpstreamState {
                name: n,
                url: String::new(),
                status: if down.contains(n) { "unreachable".into() } else { "serving".into() },
                discovery: "static",
                endpoints: Vec::new(),
                endpoint_list: EndpointList::default(),
            })
            .collect()
    }

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports.iter().map(|p| SocketAddr::from(([10, 0, 0, 1], *p))).collect()
    }

    fn set(ports: &[u16]) -> BTreeSet<SocketAddr> {
        addrs(ports).into_iter().collect()
    }

    #[test]
    fn diff_inserts_new_and_removes_vanished_addresses() {
        assert_eq!(diff(&set(&[]), &set(&[1, 2])), (addrs(&[1, 2]), vec![]));
        assert_eq!(diff(&set(&[1, 2]), &set(&[2, 3])), (addrs(&[3]), addrs(&[1])));
        assert_eq!(diff(&set(&[1, 2]), &set(&[2, 1])), (vec![], vec![]));
        assert_eq!(diff(&set(&[1, 2, 3]), &set(&[])), (vec![], addrs(&[1, 2, 3])));
        let v6: SocketAddr = "[fd00::1]:50052".parse().unwrap();
        let both: BTreeSet<SocketAddr> = [addrs(&[1])[0], v6].into_iter().collect();
        assert_eq!(diff(&set(&[1]), &both), (vec![v6], vec![]));
    }

    #[test]
    fn the_tracker_follows_answers_keeps_the_set_on_failure_and_logs_each_state_once() {
        let mut t = EndpointTracker::default();
        // the first answer: everything inserted, logged
        assert_eq!(t.apply(Ok(addrs(&[2, 1, 1]))), Step { insert: addrs(&[1, 2]), remove: vec![], event: Some(ResolveEvent::Changed) });
        // the same answer again: nothing to do, nothing logged
        assert_eq!(t.apply(Ok(addrs(&[1, 2]))), Step::default());
        // a replica more, one less
        assert_eq!(t.apply(Ok(addrs(&[2, 3]))), Step { insert: addrs(&[3]), remove: addrs(&[1]), event: Some(ResolveEvent::Changed) });
        // failures keep the set; only the first one of a run is logged
        assert_eq!(t.apply(Err("timeout".into())), Step { event: Some(ResolveEvent::Failed("timeout".into())), ..Step::default() });
        assert_eq!(t.apply(Err("timeout".into())), Step::default());
        assert_eq!(t.apply(Err("other".into())), Step::default());
        assert_eq!(t.known(), &set(&[2, 3]));
        // an empty answer is another state: logged once, the set kept
        assert_eq!(t.apply(Ok(vec![])), Step { event: Some(ResolveEvent::Empty), ..Step::default() });
        assert_eq!(t.apply(Ok(vec![])), Step::default());
        assert_eq!(t.known(), &set(&[2, 3]));
        // back to the same set: one line that says so
        assert_eq!(t.apply(Ok(addrs(&[3, 2]))), Step { event: Some(ResolveEvent::Recovered), ..Step::default() });
        assert_eq!(t.apply(Ok(addrs(&[3, 2]))), Step::default());
        // back after a failure with a different set: the change is the line
        assert!(t.apply(Err("x".into())).event.is_some());
        assert_eq!(t.apply(Ok(addrs(&[4]))), Step { insert: addrs(&[4]), remove: addrs(&[2, 3]), event: Some(ResolveEvent::Changed) });
        // a first resolution that fails is logged too
        let mut t = EndpointTracker::default();
        assert_eq!(t.apply(Err("nxdomain".into())).event, Some(ResolveEvent::Failed("nxdomain".into())));
        assert!(t.known().is_empty());
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(host_and_port("http://ctclip-svc-headless:50052"), Ok(("ctclip-svc-headless".into(), 50052)));
        assert_eq!(host_and_port("http://[::1]:7"), Ok(("::1".into(), 7)));
        assert_eq!(host_and_port("http://model"), Ok(("model".into(), 80)));
        assert!(host_and_port("not a url").is_err());
    }

    #[tokio::test]
    async fn the_system_resolver_keeps_ip_literals_and_resolves_localhost_to_loopback() {
        let r = system_resolver();
        assert_eq!(r("127.0.0.1".into(), 50052).await.unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], 50052))]);
        assert_eq!(r("::1".into(), 9).await.unwrap(), vec!["[::1]:9".parse::<SocketAddr>().unwrap()]);
        // 127.0.0.1 and, depending on /etc/hosts, ::1
        let local = r("localhost".into(), 50052).await.unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 50052), "{local:?}");
    }

    #[test]
    fn readiness_follows_the_policy() {
        assert!(ready(&states(&[]), MissingModelPolicy::Fail));
        assert!(!ready(&states(&["fvlm"]), MissingModelPolicy::Fail));
        assert!(ready(&states(&["fvlm"]), MissingModelPolicy::Degrade));
        assert!(!ready(&states(&["ctclip", "supervised", "diffusion", "mednext", "fvlm"]), MissingModelPolicy::Degrade));
        assert!(!ready(&states(&["preprocess"]), MissingModelPolicy::Degrade));
        assert!(!ready(&states(&["ensemble"]), MissingModelPolicy::Degrade));
    }
}
