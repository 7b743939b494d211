//! mednext-svc with the demo bundle: a real gRPC server on 127.0.0.1 port 0.

use mednext_svc::Mednext;
use model_server::testing::{Expect, check_service, demo_bundle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_predict_on_generated_and_real_series() {
    let bundle = model_server::Bundle::load(&demo_bundle("mednext")).expect("demo bundle");
    let labels: Vec<&str> = bundle.manifest.labels.names.iter().map(String::as_str).collect();
    assert_eq!(labels.len(), 22);
    assert!(labels.contains(&"normal"));
    check_service::<Mednext>(Expect { labels: &labels, predicted: &labels, margin: 0.1 }).await;
}
