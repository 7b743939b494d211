//! ctclip-svc with the demo bundle: a real gRPC server on 127.0.0.1 port 0.

use ctclip_svc::{Ctclip, PATHOLOGIES};
use model_server::ServerConfig;
use model_server::testing::{Expect, check_service, demo_bundle, metric, predict, prepare, spawn, study};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_predict_on_generated_and_real_series() {
    check_service::<Ctclip>(Expect { labels: &PATHOLOGIES, predicted: &PATHOLOGIES, margin: 0.1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_encoder_runs_exactly_once_per_study() {
    let svc = spawn::<Ctclip>(&demo_bundle("ctclip"), ServerConfig::default()).await;
    let mut client = svc.client().await;
    let after_warmup = metric(svc.admin, "ct_model_session_runs_total").await.expect("runs metric");
    assert_eq!(after_warmup, 1.0, "one warm-up run");
    let (header, volume, mask) = prepare(&study("chest_abnormal"), false);
    for n in 1..=2 {
        let scores = predict(&mut client, header.clone(), &volume, mask.as_ref()).await.expect("Predict");
        assert_eq!(scores.scores.len(), 55);
        assert_eq!(metric(svc.admin, "ct_model_session_runs_total").await, Some(after_warmup + n as f64), "one session run per study (the reference: 55)");
    }
    svc.stop().await;
}
