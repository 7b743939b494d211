//! diffusion-svc with the demo bundle: a real gRPC server on 127.0.0.1 port 0.

use diffusion_svc::{Diffusion, LABELS};
use model_server::testing::{Expect, check_service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_predict_on_generated_and_real_series() {
    // the demo diffusion graph separates the generated studies least (see tools/demo_models/README.md)
    check_service::<Diffusion>(Expect { labels: &LABELS, predicted: &LABELS, margin: 0.005 }).await;
}
