//! fvlm-svc with the demo bundle: a real gRPC server on 127.0.0.1 port 0.

use fvlm_svc::Fvlm;
use model_server::testing::{Expect, check_service, demo_bundle, predict, prepare, spawn, study};

const LUNG_ITEMS: [&str; 13] = [
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
    "Pneumothorax",
    "Lung cancer",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_predict_on_generated_and_real_series() {
    let bundle = model_server::Bundle::load(&demo_bundle("fvlm")).expect("demo bundle");
    let labels: Vec<&str> = bundle.manifest.labels.names.iter().map(String::as_str).collect();
    assert_eq!(labels.len(), 18);
    assert_eq!(&labels[..13], &LUNG_ITEMS);
    // without a heart/aorta segmenter only the lung (from the preprocessing lung mask) is scored
    check_service::<Fvlm>(Expect { labels: &labels, predicted: &LUNG_ITEMS, margin: 0.05 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_without_its_lung_mask_is_a_typed_bad_request() {
    let svc = spawn::<Fvlm>(&demo_bundle("fvlm"), model_server::ServerConfig::default()).await;
    let mut client = svc.client().await;
    let (header, volume, _) = prepare(&study("chest_normal"), false);
    let err = predict(&mut client, header, &volume, None).await.expect_err("no mask");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(ct_proto::errors::error_type(&err).as_deref(), Some("bad_request"));
    svc.stop().await;
}
