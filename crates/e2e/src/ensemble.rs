//! A temporary ensemble bundle for when `models/demo/ensemble` is not there: the five demo
//! models score the committed normal and abnormal studies, the scores are jittered into a small
//! labelled set, and `ensemble_svc::train` trains a main and a thoracic model on it. Used only
//! by the tests, in a temporary directory; never presented as a model.

use ct_proto::v1::model_service_client::ModelServiceClient;
use ensemble_svc::align::MissingPolicy;
use ensemble_svc::spec::FeatureSpec;
use ensemble_svc::train::{TrainConfig, TrainParams, train};
use model_server::testing::{predict, prepare, study};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Studies per class in the training set.
const PER_CLASS: usize = 40;

/// Trains the bundle; returns its directory and the temporary directory holding it.
pub async fn train_temporary(models: &[(&str, SocketAddr)]) -> (PathBuf, tempfile::TempDir) {
    let mut base = Vec::new();
    for (label, name) in [(0u8, "chest_normal"), (1u8, "chest_abnormal")] {
        let (header, volume, mask) = tokio::task::spawn_blocking(move || prepare(&study(name), false)).await.expect("prepare task");
        let mut set = serde_json::Map::new();
        for (model, addr) in models {
            let ch = tonic_channel(*addr).await;
            let mut client = ModelServiceClient::new(ch).max_decoding_message_size(8 << 20);
            let scores = predict(&mut client, header.clone(), &volume, mask.as_ref()).await.unwrap_or_else(|e| panic!("{model} on {name}: {e:?}"));
            let labels: serde_json::Map<String, serde_json::Value> = scores.scores.iter().map(|s| (s.label.clone(), serde_json::json!(s.value))).collect();
            set.insert(model.to_string(), serde_json::Value::Object(labels));
        }
        base.push((label, set));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let scores_dir = tmp.path().join("scores");
    std::fs::create_dir_all(&scores_dir).expect("mkdir");
    let mut labels = String::from("study,label,thoracic\n");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    for (label, set) in &base {
        for n in 0..PER_CLASS {
            let jittered: serde_json::Map<String, serde_json::Value> = set
                .iter()
                .map(|(model, labels)| {
                    let l = labels.as_object().expect("object").iter().map(|(k, v)| (k.clone(), serde_json::json!((v.as_f64().expect("number") + 0.01 * noise()).clamp(0.0, 1.0)))).collect();
                    (model.clone(), serde_json::Value::Object(l))
                })
                .collect();
            let id = format!("s{label}_{n:03}");
            std::fs::write(scores_dir.join(format!("{id}.json")), serde_json::Value::Object(jittered).to_string()).expect("write scores");
            labels.push_str(&format!("{id},{label},{label}\n"));
        }
    }
    let labels_csv = tmp.path().join("labels.csv");
    std::fs::write(&labels_csv, labels).expect("write labels");
    let out = tmp.path().join("bundle");
    let cfg = TrainConfig {
        scores_dir,
        labels: labels_csv,
        out: out.clone(),
        id_column: "study".into(),
        label_column: "label".into(),
        thoracic_label_column: Some("thoracic".into()),
        holdout_fraction: 0.25,
        seed: 7,
        missing: MissingPolicy::Zero,
        spec: FeatureSpec::reference(),
        threshold: 0.5,
        threshold_thoracic: 0.5,
        version: "e2e-temporary".into(),
        params: TrainParams { num_iterations: 30, min_data_in_leaf: 5, ..TrainParams::default() },
    };
    tokio::task::spawn_blocking(move || train(&cfg)).await.expect("train task").unwrap_or_else(|e| panic!("training the temporary ensemble: {e}"));
    (out, tmp)
}

async fn tonic_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect to a model service")
}
