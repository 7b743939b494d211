//! supervised-svc with the demo bundle: a real gRPC server on 127.0.0.1 port 0.

use model_server::testing::{Expect, check_service};
use supervised_svc::{MOSMED_PATHOLOGIES, Supervised};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_predict_on_generated_and_real_series() {
    check_service::<Supervised>(Expect { labels: &MOSMED_PATHOLOGIES, predicted: &MOSMED_PATHOLOGIES, margin: 0.1 }).await;
}
