//! The whole stack in-process on 127.0.0.1 port 0: preprocess-svc, the five model services
//! with their demo bundles, ensemble-svc and any number of gateways.
//!
//! The upstreams are started once per test binary ([`stack`]) on a runtime of their own, so that
//! every test (each on its own `#[tokio::test]` runtime) can use them; loading and warming up
//! the five models is the slow part. Gateways are cheap: each test starts its own with the
//! configuration it needs ([`Stack::gateway`]).

use ensemble_svc::bundle::Bundle;
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::service::{EnsembleHandle, EnsembleSvc, Metrics};
use model_server::ServerConfig;
use model_server::testing::{demo_bundle, spawn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The running upstreams.
pub struct Stack {
    /// URLs of the seven upstreams, ready for a gateway config.
    pub upstreams: gateway::Upstreams,
    /// The ensemble bundle in use (`models/demo/ensemble`).
    pub ensemble_bundle: PathBuf,
    /// The model services' shared-volume folder (one-machine mode); they take streamed volumes too.
    pub shared_dir: PathBuf,
    /// A second preprocess-svc with that folder: it writes the volume file itself when asked.
    pub preprocess_shared_url: String,
    _shared_dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

static STACK: OnceLock<Stack> = OnceLock::new();

/// The upstreams of this test binary, started on first use.
pub async fn stack() -> &'static Stack {
    tokio::task::spawn_blocking(|| {
        STACK.get_or_init(|| {
            // blocking here is fine: this is a blocking-pool thread (or the first caller's)
            std::thread::spawn(start_blocking).join().expect("starting the stack panicked")
        })
    })
    .await
    .expect("stack start task")
}

fn bind0() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// An address on which nothing listens (for "service down" tests).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start_blocking() -> Stack {
    if std::env::var_os("CT_LOG").is_some() {
        ct_service::init_tracing();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("e2e-stack").enable_all().build().expect("stack runtime");
    let shared = tempfile::Builder::new().prefix("e2e-shared-").tempdir().expect("shared volume folder");
    let (upstreams, ensemble_bundle, preprocess_shared_url) = runtime.block_on(start(shared.path().to_path_buf()));
    Stack { upstreams, ensemble_bundle, shared_dir: shared.path().to_path_buf(), preprocess_shared_url, _shared_dir: shared, _runtime: runtime }
}

async fn start(shared_dir: PathBuf) -> (gateway::Upstreams, PathBuf, String) {
    let url = |a: SocketAddr| format!("http://{a}");

    // preprocess-svc (lung validation on, as deployed)
    let l = tokio::net::TcpListener::from_std(bind0()).expect("listener");
    let preprocess = l.local_addr().expect("addr");
    let svc = preprocess_svc::service::Preprocessor::new(preprocess_svc::PrepareConfig::default(), 2);
    tokio::spawn(preprocess_svc::service::run(l, None, svc, ct_service::Shutdown::new()));
    let l = tokio::net::TcpListener::from_std(bind0()).expect("listener");
    let preprocess_shared = l.local_addr().expect("addr");
    let svc = preprocess_svc::service::Preprocessor::new(preprocess_svc::PrepareConfig::default(), 2).with_shared_dir(Some(shared_dir.clone()));
    tokio::spawn(preprocess_svc::service::run(l, None, svc, ct_service::Shutdown::new()));

    // the five model services; a deep queue: several tests send studies at the same time
    let cfg = ServerConfig { queue_depth: 64, shared_volume_dir: Some(shared_dir), ..ServerConfig::default() };
    let ctclip = spawn::<ctclip_svc::Ctclip>(&demo_bundle("ctclip"), cfg.clone()).await;
    let supervised = spawn::<supervised_svc::Supervised>(&demo_bundle("supervised"), cfg.clone()).await;
    let diffusion = spawn::<diffusion_svc::Diffusion>(&demo_bundle("diffusion"), cfg.clone()).await;
    let mednext = spawn::<mednext_svc::Mednext>(&demo_bundle("mednext"), cfg.clone()).await;
    let fvlm = spawn::<fvlm_svc::Fvlm>(&demo_bundle("fvlm"), cfg.clone()).await;
    let models = [("ctclip", ctclip.grpc), ("supervised", supervised.grpc), ("diffusion", diffusion.grpc), ("mednext", mednext.grpc), ("fvlm", fvlm.grpc)];

    // the ensemble: the demo bundle scripts/setup copies from tools/demo_models/ensemble
    let bundle = demo_bundle("ensemble");
    let b = bundle.clone();
    let (handle, _) = tokio::task::spawn_blocking(move || EnsembleHandle::spawn(move || Ensemble::from_bundle(&Bundle::load(&b)?, &Options::default())))
        .await
        .expect("ensemble load task")
        .unwrap_or_else(|e| panic!("loading the ensemble bundle {}: {e}", bundle.display()));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("ensemble metrics");
    let l = tokio::net::TcpListener::from_std(bind0()).expect("listener");
    let ensemble = l.local_addr().expect("addr");
    tokio::spawn(ensemble_svc::service::run(l, EnsembleSvc::new(handle, metrics), std::future::pending::<()>()));

    let upstreams = gateway::Upstreams {
        preprocess_url: url(preprocess),
        ctclip_url: url(models[0].1),
        supervised_url: url(models[1].1),
        diffusion_url: url(models[2].1),
        mednext_url: url(models[3].1),
        fvlm_url: url(models[4].1),
        ensemble_url: url(ensemble),
    };
    (upstreams, bundle, url(preprocess_shared))
}

/// A gateway started by a test, on the test's runtime.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: ct_service::Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    /// A gateway configuration pointing at this stack (fast health polling for tests).
    pub fn gateway_config(&self) -> gateway::Config {
        gateway::Config { upstreams: self.upstreams.clone(), health_interval: Duration::from_millis(200), ..gateway::Config::default() }
    }

    /// Starts a gateway with `config` (its addresses are replaced by 127.0.0.1 port 0).
    pub async fn gateway(&self, config: gateway::Config) -> Gateway {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, admin_addr) = (http.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let shutdown = ct_service::Shutdown::new();
        let task = tokio::spawn(gateway::run(config, http, admin, shutdown.clone()));
        Gateway { addr, admin: admin_addr, shutdown, task }
    }
}

impl Gateway {
    /// Waits until the admin `/ready` answers `want` (200 or 503).
    pub async fn wait_ready(&self, want: u16, within: Duration) {
        let t = std::time::Instant::now();
        loop {
            let r = crate::http::get(self.admin, "/ready").await;
            if r.status == want {
                return;
            }
            assert!(t.elapsed() < within, "/ready still {} after {within:?}: {}", r.status, crate::http::get(self.admin, "/upstreams").await.text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One metric sample: the first line of `/metrics` starting with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let body = crate::http::get(self.admin, "/metrics").await.text();
        body.lines().filter(|l| !l.starts_with('#')).find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    /// Triggers the shutdown and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("gateway task").expect("gateway ran cleanly");
    }
}
