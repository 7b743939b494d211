//! gRPC clients of the seven upstreams (one lazily connected HTTP/2 channel each, shared by all
//! requests) and the readiness poller behind the admin `/ready`.

use crate::config::{Config, MissingModelPolicy};
use crate::metrics::Metrics;
use ct_proto::v1::ensemble_service_client::EnsembleServiceClient;
use ct_proto::v1::model_service_client::ModelServiceClient;
use ct_proto::v1::preprocess_service_client::PreprocessServiceClient;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Messages from upstreams are chunked well under 4 MiB; this leaves room for headers.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// The one model service that receives the lung mask chunks (the others get a header without
/// a mask and no mask chunks).
pub const LUNG_MASK_MODELS: [&str; 1] = ["fvlm"];

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
}

/// Clients of all upstreams.
#[derive(Clone)]
pub struct Clients {
    pub preprocess: PreprocessServiceClient<Channel>,
    pub models: Vec<ModelTarget>,
    pub ensemble: EnsembleServiceClient<Channel>,
    health: Vec<HealthTarget>,
}

fn channel(url: &str, config: &Config) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(ct_service::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(ct_service::CONNECTION_WINDOW_BYTES)
        .max_frame_size(ct_service::MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_lazy())
}

impl Clients {
    /// Creates the channels; nothing is connected until the first call.
    pub fn new(config: &Config) -> Result<Self, tonic::transport::Error> {
        let u = &config.upstreams;
        let pre = channel(&u.preprocess_url, config)?;
        let ens = channel(&u.ensemble_url, config)?;
        let mut health = vec![HealthTarget { name: "preprocess", url: u.preprocess_url.clone(), service: "ct.v1.PreprocessService", client: HealthClient::new(pre.clone()) }];
        let mut models = Vec::new();
        for (name, url) in u.models() {
            let ch = channel(url, config)?;
            health.push(HealthTarget { name, url: url.to_string(), service: "ct.v1.ModelService", client: HealthClient::new(ch.clone()) });
            models.push(ModelTarget {
                name,
                client: ModelServiceClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES),
                needs_lung_mask: LUNG_MASK_MODELS.contains(&name),
            });
        }
        health.push(HealthTarget { name: "ensemble", url: u.ensemble_url.clone(), service: "ct.v1.EnsembleService", client: HealthClient::new(ens.clone()) });
        Ok(Self {
            preprocess: PreprocessServiceClient::new(pre).max_decoding_message_size(MAX_MESSAGE_BYTES),
            models,
            ensemble: EnsembleServiceClient::new(ens).max_decoding_message_size(MAX_MESSAGE_BYTES),
            health,
        })
    }
}

/// The last health check of one upstream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamState {
    pub name: &'static str,
    pub url: String,
    /// `serving`, `not_serving`, `unreachable` or `unknown` (not checked yet).
    pub status: String,
}

/// Latest health of every upstream, shared between the poller and the admin routes.
#[derive(Clone, Default)]
pub struct HealthBoard(Arc<Mutex<Vec<UpstreamState>>>);

impl HealthBoard {
    pub fn snapshot(&self) -> Vec<UpstreamState> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
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
    board.set(clients.health.iter().map(|t| UpstreamState { name: t.name, url: t.url.clone(), status: "unknown".into() }).collect());
    let timeout = config.health_interval.min(Duration::from_secs(2)).max(Duration::from_millis(200));
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut was_ready: Option<bool> = None;
    loop {
        let checks = clients.health.iter().map(|t| async move { (t, check(t, timeout).await) });
        let results = futures::future::join_all(checks).await;
        let states: Vec<UpstreamState> = results.iter().map(|(t, s)| UpstreamState { name: t.name, url: t.url.clone(), status: s.to_string() }).collect();
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
            .map(|n| UpstreamState { name: n, url: String::new(), status: if down.contains(n) { "unreachable".into() } else { "serving".into() } })
            .collect()
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
