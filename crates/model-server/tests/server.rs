//! The generic server with a real ONNX Runtime session on the demo supervised bundle: bundle
//! verification at start-up, overload, bad streams.

use ct_proto::v1::{VolumeChunk, volume_chunk};
use model_server::bundle::sha256_file;
use model_server::testing::{demo_bundle, metric, predict, prepare, spawn, study};
use model_server::{Adapter, AdapterOptions, Bundle, BundleError, EngineConfig, EngineError, Input, Model, ModelError, Runner, ServerConfig, Study};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the probe adapter holds its worker, in ms.
static HOLD_MS: AtomicU64 = AtomicU64::new(0);

/// A real adapter over the supervised demo graph that runs it on an all-air input, after
/// holding the worker for `HOLD_MS` (so a test can keep the service busy deterministically).
struct Probe;

impl Adapter for Probe {
    const KIND: &'static str = "supervised";
    const DEFAULT_PORT: u16 = 0;

    fn load(_bundle: &Bundle, _options: &AdapterOptions) -> Result<Self, BundleError> {
        Ok(Probe)
    }

    fn predict(&self, _study: &Study, run: &mut Runner<'_>) -> Result<Vec<(String, f64)>, ModelError> {
        std::thread::sleep(Duration::from_millis(HOLD_MS.load(Ordering::SeqCst)));
        let shape = ct_volume::CTCLIP_INPUT_SHAPE;
        let n: i64 = shape.iter().product();
        let out = run.run(vec![Input::F32(shape.to_vec(), vec![-1.0; n as usize])])?;
        Ok(vec![("first".into(), f64::from(out[0].data[0]))])
    }

    fn recipe(&self) -> &'static str {
        "probe"
    }
}

fn copy_bundle(kind: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(kind);
    std::fs::create_dir(&dir).unwrap();
    for f in ["manifest.toml", "model.onnx"] {
        std::fs::copy(demo_bundle(kind).join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let p = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "manifest has no {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Model::<Probe>::load(dir, &EngineConfig::default(), ServerConfig::default()) {
        Ok(_) => panic!("bundle {} should be refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_file_stops_start_up() {
    let (_tmp, dir) = copy_bundle("supervised");
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.onnx") && err.contains("missing"), "{err}");
}

#[test]
fn a_hash_mismatch_stops_start_up() {
    let (_tmp, dir) = copy_bundle("supervised");
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("sha256 of model.onnx is") && err.contains("manifest says"), "{err}");
    assert!(matches!(Bundle::load(&dir), Err(BundleError::HashMismatch { .. })));
}

#[test]
fn a_manifest_that_disagrees_with_the_graph_stops_start_up() {
    // the declared input shape differs from the graph's
    let (_tmp, dir) = copy_bundle("supervised");
    edit_manifest(&dir, "shape = [1, 1, 240, 480, 480]", "shape = [1, 1, 240, 240, 240]");
    let err = load_err(&dir);
    assert!(err.contains("inputs.image.shape") && err.contains("[1, 1, 240, 240, 240]") && err.contains("[1, 1, 240, 480, 480]"), "{err}");

    // a wrongly named output
    let (_tmp2, dir) = copy_bundle("supervised");
    edit_manifest(&dir, "name = \"logits\"", "name = \"probabilities\"");
    let err = load_err(&dir);
    assert!(err.contains("outputs: expected [probabilities], found [logits]"), "{err}");

    // a wrong element type
    let (_tmp3, dir) = copy_bundle("supervised");
    edit_manifest(&dir, "dtype = \"float32\"", "dtype = \"float16\"");
    let err = load_err(&dir);
    assert!(err.contains("inputs.image.dtype: expected float16"), "{err}");
}

#[test]
fn a_bundle_of_another_model_is_refused() {
    let err = match Model::<Probe>::load(&demo_bundle("ctclip"), &EngineConfig::default(), ServerConfig::default()) {
        Ok(_) => panic!("a ctclip bundle must not load as supervised"),
        Err(e) => e,
    };
    assert!(matches!(&err, EngineError::Bundle(BundleError::Mismatch { field, .. }) if field == "model.name"), "{err}");
}

#[test]
fn hashes_are_checked_for_every_listed_file() {
    let (_tmp, dir) = copy_bundle("supervised");
    std::fs::write(dir.join("extra.bin"), b"payload").unwrap();
    let good = sha256_file(&dir.join("extra.bin")).unwrap();
    edit_manifest(&dir, "[files]\n", &format!("[files]\n\"extra.bin\" = \"{good}\"\n"));
    assert!(Bundle::load(&dir).is_ok());
    std::fs::write(dir.join("extra.bin"), b"tampered").unwrap();
    assert!(matches!(Bundle::load(&dir), Err(BundleError::HashMismatch { file, .. }) if file == "extra.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_promptly() {
    HOLD_MS.store(0, Ordering::SeqCst);
    let svc = spawn::<Probe>(&demo_bundle("supervised"), ServerConfig { concurrency: 1, queue_depth: 0, ..ServerConfig::default() }).await;
    let (header, volume, mask) = prepare(&study("chest_normal"), false);
    HOLD_MS.store(1500, Ordering::SeqCst);
    let mut c1 = svc.client().await;
    let (h1, v1) = (header.clone(), volume.clone());
    let busy = tokio::spawn(async move { predict(&mut c1, h1, &v1, None).await });
    let t = Instant::now();
    while metric(svc.admin, "ct_model_in_flight").await != Some(1.0) {
        assert!(t.elapsed() < Duration::from_secs(10), "the first request never became in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c2 = svc.client().await;
    let t = Instant::now();
    let err = predict(&mut c2, header, &volume, mask.as_ref()).await.expect_err("queue is full");
    let waited = t.elapsed();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(ct_proto::errors::error_type(&err).as_deref(), Some("overloaded"));
    assert!(waited < Duration::from_millis(1000), "refused after {waited:?}, not promptly");
    let first = busy.await.unwrap().expect("the admitted request completes");
    assert_eq!(first.scores.len(), 1);
    HOLD_MS.store(0, Ordering::SeqCst);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_volume_stream_is_a_typed_bad_request() {
    let svc = spawn::<Probe>(&demo_bundle("supervised"), ServerConfig::default()).await;
    let mut client = svc.client().await;
    // voxels before any header
    let chunks = vec![VolumeChunk { part: Some(volume_chunk::Part::Voxels(ct_proto::v1::Bytes { offset: 0, data: vec![0; 16].into() })) }];
    let err = client.predict(tokio_stream::iter(chunks)).await.expect_err("no header");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(ct_proto::errors::error_type(&err).as_deref(), Some("bad_request"));
    // the service is still healthy afterwards
    let (header, volume, _) = prepare(&study("chest_normal"), false);
    assert!(predict(&mut client, header, &volume, None).await.is_ok());
    svc.stop().await;
}
