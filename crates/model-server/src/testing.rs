//! Helpers for the model services' integration tests: a real service on 127.0.0.1 port 0, a
//! real client, and volumes streamed from real or generated studies.

use crate::adapter::Adapter;
use crate::engine::EngineConfig;
use crate::server::{Model, ServerConfig};
use ct_proto::v1::model_service_client::ModelServiceClient;
use ct_proto::v1::{Scores, VolumeHeader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The workspace root (tests run with the crate directory as working directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|p| p.join("Cargo.lock").is_file()).unwrap_or(here).to_path_buf()
}

/// `models/demo/<kind>` of the workspace; panics with the fix when setup has not generated it.
pub fn demo_bundle(kind: &str) -> PathBuf {
    let dir = workspace_root().join("models/demo").join(kind);
    assert!(dir.join("manifest.toml").is_file(), "demo bundle {} is missing: run scripts/setup (it generates models/demo/)", dir.display());
    dir
}

/// A running service.
pub struct Running<A: Adapter> {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub model: Arc<Model<A>>,
    pub shutdown: ct_service::Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl<A: Adapter> Running<A> {
    pub async fn client(&self) -> ModelServiceClient<tonic::transport::Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc)).expect("valid uri").connect().await.expect("connect to the model service");
        ModelServiceClient::new(ch).max_decoding_message_size(8 << 20)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("service task").expect("service ran cleanly");
    }
}

/// Loads `bundle` and serves it on 127.0.0.1 port 0 (gRPC and admin).
pub async fn spawn<A: Adapter>(bundle: &Path, config: ServerConfig) -> Running<A> {
    let b = bundle.to_path_buf();
    let model = tokio::task::spawn_blocking(move || Model::<A>::load(&b, &EngineConfig::default(), config)).await.expect("load task").expect("bundle loads");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (g, a) = (grpc.local_addr().expect("addr"), admin.local_addr().expect("addr"));
    let shutdown = ct_service::Shutdown::new();
    let task = tokio::spawn(crate::cli::run(model.clone(), grpc, admin, shutdown.clone()));
    Running { grpc: g, admin: a, model, shutdown, task }
}

/// Preprocesses `input` (ZIP, DICOM folder, NIfTI) with the real pipeline and returns what
/// preprocess-svc would stream: header, volume, lung mask.
pub fn prepare(input: &Path, skip_lung_validation: bool) -> (VolumeHeader, ct_volume::Volume, Option<ndarray::Array3<u8>>) {
    let cfg = ct_prep::PrepareConfig { skip_lung_validation, ..Default::default() };
    let p = ct_prep::prepare_path(input, &cfg).unwrap_or_else(|e| panic!("preprocessing {}: {e}", input.display()));
    let header = VolumeHeader { study_uid: p.meta.study_uid.clone(), series_uid: p.meta.series_uid.clone(), ..Default::default() };
    (header, p.volume, p.lung_mask)
}

/// Streams a volume (and mask) to `Predict`.
pub async fn predict(client: &mut ModelServiceClient<tonic::transport::Channel>, header: VolumeHeader, volume: &ct_volume::Volume, mask: Option<&ndarray::Array3<u8>>) -> Result<Scores, tonic::Status> {
    let chunks: Vec<_> = ct_proto::codec::encode(header, volume, mask).collect();
    client.predict(tokio_stream::iter(chunks)).await.map(|r| r.into_inner())
}

/// Reads one metric value (first sample whose line starts with `name`) from `/metrics`.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let body = http_get(admin, "/metrics").await.1;
    body.lines().filter(|l| !l.starts_with('#')).find(|l| l.split(['{', ' ']).next() == Some(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// A minimal HTTP/1.1 GET (status, body) for the admin port.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A committed synthetic chest study: `tests/fixtures/studies/<name>.zip` ("chest_normal",
/// "chest_abnormal"; made by tools/fixtures/make_studies.sh).
pub fn study(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/studies").join(format!("{name}.zip"))
}

/// A real CT series from `../shared/testdata` (Philips Ingenuity, 28 slices; a head phantom,
/// so it has no lungs).
pub fn real_series() -> PathBuf {
    workspace_root().join("../shared/testdata/dicom/series/dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip")
}

/// What [`check_service`] expects of one service with its demo bundle.
pub struct Expect<'a> {
    /// The full label list `Info` reports.
    pub labels: &'a [&'a str],
    /// Labels a prediction on the generated chest studies returns (fvlm without a heart/aorta
    /// segmenter: the lung items only).
    pub predicted: &'a [&'a str],
    /// The mean score of the abnormal study must exceed the normal one's by this much.
    pub margin: f64,
}

fn mean(s: &Scores) -> f64 {
    s.scores.iter().map(|x| x.value).sum::<f64>() / s.scores.len().max(1) as f64
}

/// The checks every model service passes with its demo bundle: a real server on 127.0.0.1
/// port 0, `Info`, readiness and metrics on the admin port, `Predict` on a generated normal and
/// abnormal chest study and on a real DICOM series, with the right label sets.
pub async fn check_service<A: Adapter>(expect: Expect<'_>) {
    let svc = spawn::<A>(&demo_bundle(A::KIND), ServerConfig::default()).await;
    let mut client = svc.client().await;
    let info = client.info(ct_proto::v1::InfoRequest {}).await.expect("Info").into_inner();
    assert_eq!(info.name, A::KIND);
    assert_eq!(info.labels, expect.labels, "Info labels");
    assert!(info.execution_providers.iter().any(|p| p == "cpu"), "providers {:?}", info.execution_providers);
    assert_eq!(info.onnx_sha256.len(), 64);
    assert_eq!(http_get(svc.admin, "/ready").await.0, 200);
    assert_eq!(http_get(svc.admin, "/live").await.0, 200);

    let mut means = Vec::new();
    for name in ["chest_normal", "chest_abnormal"] {
        let (header, volume, mask) = prepare(&study(name), false);
        let scores = predict(&mut client, header, &volume, mask.as_ref()).await.unwrap_or_else(|e| panic!("Predict {name}: {e:?}"));
        assert_eq!(scores.model, A::KIND);
        let labels: Vec<&str> = scores.scores.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, expect.predicted, "labels predicted for {name}");
        assert!(scores.scores.iter().all(|s| s.value.is_finite() && (0.0..=1.0).contains(&s.value)), "{name}: {:?}", scores.scores);
        for stage in ["receive", "queue", "recipe", "infer", "total"] {
            assert!(scores.timings_ms.contains_key(stage), "timing {stage} missing: {:?}", scores.timings_ms);
        }
        means.push(mean(&scores));
    }
    assert!(means[1] > means[0] + expect.margin, "abnormal mean {:.3} should exceed normal mean {:.3} by {}", means[1], means[0], expect.margin);

    // a real series (no lungs: a head phantom), with the lung mask the preprocessing computes
    let (header, volume, _) = prepare(&real_series(), true);
    let mask = ct_volume::lung_mask(&volume);
    let scores = predict(&mut client, header, &volume, Some(&mask)).await.expect("Predict on the real series");
    assert!(scores.scores.iter().all(|s| expect.labels.contains(&s.label.as_str())), "labels {:?}", scores.scores);
    if !A::NEEDS_LUNG_MASK {
        assert_eq!(scores.scores.len(), expect.labels.len());
    }
    assert_eq!(metric(svc.admin, "ct_model_requests_total").await, Some(3.0));
    svc.stop().await;
}
