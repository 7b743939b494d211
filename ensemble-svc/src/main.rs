//! `ensemble-svc`: the gRPC EnsembleService (`serve`, the default command) and a CLI for people
//! and tests (`features`, `predict`, `train`, `calibrate`).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ensemble_svc::align::MissingPolicy;
use ensemble_svc::bundle::Bundle;
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::features::ScoreSet;
use ensemble_svc::service::{EnsembleHandle, EnsembleSvc, Metrics};
use ensemble_svc::spec::FeatureSpec;
use ensemble_svc::train::{self, CalibrateConfig, Criterion, Split, TrainConfig, TrainParams, Which};
use ensemble_svc::EnsembleError;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Model scores -> the reference's ensemble features -> main + thoracic LightGBM -> decision and top pathologies",
    after_help = "Without a command, `serve` runs (e.g. `ensemble-svc --bundle DIR`, or only CT_* variables in a container)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The command line with `serve` inserted when no command is named (serve is the default).
fn args_with_default_command() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let named = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
        matches!(a, "serve" | "features" | "predict" | "train" | "calibrate" | "help" | "-h" | "--help" | "-V" | "--version")
    });
    if !named {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC EnsembleService with grpc.health.v1, reflection and the admin HTTP port (default).
    Serve(ServeArgs),
    /// Print the main model's feature vector for a scores file: {feature: value} in model order
    /// (null for a missing feature under the `nan` policy).
    Features(ScoresArgs),
    /// Print the decision for a scores file as one JSON object.
    Predict(ScoresArgs),
    /// Train main (and thoracic) models on per-study score files and 0/1 labels; write a bundle.
    Train(TrainArgs),
    /// Pick a threshold for a target sensitivity or by Youden's J and write it into the manifest.
    Calibrate(CalibrateArgs),
}

/// The bundle and the settings that may override it.
#[derive(Args, Clone)]
struct BundleArgs {
    /// Ensemble bundle directory (manifest.toml, main.txt, [thoracic.txt], [features.toml]).
    #[arg(long, env = "CT_ENSEMBLE_BUNDLE")]
    bundle: PathBuf,
    /// Main threshold: pathology = probability >= threshold (default: the manifest's).
    #[arg(long, env = "CT_THRESHOLD")]
    threshold: Option<f64>,
    /// Thoracic threshold (default: the manifest's).
    #[arg(long, env = "CT_THRESHOLD_THORACIC")]
    threshold_thoracic: Option<f64>,
    /// What a feature that cannot be built becomes: zero (the reference) or nan (LightGBM's
    /// missing-value path). Default: the manifest's, else zero.
    #[arg(long, env = "CT_MISSING_FEATURES", value_enum)]
    missing_features: Option<MissingPolicy>,
    /// The model services this deployment runs (comma-separated); a model feature none of them
    /// can produce stops the start-up.
    #[arg(long, env = "CT_ENSEMBLE_MODELS", value_delimiter = ',', default_value = "supervised,ctclip,mednext,fvlm,diffusion")]
    models: Vec<String>,
    /// Start even if a model expects features no configured model service can produce (they
    /// are then always filled by the missing-feature policy).
    #[arg(long, env = "CT_ALLOW_UNPRODUCIBLE_FEATURES")]
    allow_unproducible_features: bool,
}

impl BundleArgs {
    fn options(&self) -> Options {
        Options {
            threshold: self.threshold,
            threshold_thoracic: self.threshold_thoracic,
            missing: self.missing_features,
            models: self.models.clone(),
            allow_unproducible: self.allow_unproducible_features,
        }
    }

    fn load(&self) -> Result<(Bundle, Ensemble<ensemble_svc::booster::LgbmBooster>), EnsembleError> {
        for m in &self.models {
            if !ensemble_svc::spec::MODEL_NAMES.contains(&m.as_str()) {
                return Err(EnsembleError::FeatureSpec { reason: format!("--models: unknown model {m:?}") });
            }
        }
        let bundle = Bundle::load(&self.bundle)?;
        let e = Ensemble::from_bundle(&bundle, &self.options())?;
        Ok((bundle, e))
    }
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// gRPC address.
    #[arg(long, visible_alias = "addr", env = "CT_ENSEMBLE_ADDR", default_value = "127.0.0.1:50057")]
    listen: SocketAddr,
    /// Admin HTTP address (/live, /ready, /metrics); "off" disables it.
    #[arg(long, visible_alias = "admin-addr", env = "CT_ENSEMBLE_ADMIN_ADDR", default_value = "127.0.0.1:9107")]
    admin_listen: String,
}

#[derive(Args)]
struct ScoresArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// Scores file: {"supervised": {label: p}, "ctclip": {...}, "mednext": {...}, "fvlm": {...}, "diffusion": {name: value}}.
    #[arg(long, env = "CT_SCORES")]
    scores: PathBuf,
}

/// Where the per-study scores and labels are.
#[derive(Args, Clone)]
struct DataArgs {
    /// Directory of per-study score files `<study>.json`.
    #[arg(long, env = "CT_SCORES_DIR")]
    scores_dir: PathBuf,
    /// CSV with a header row, a study column and 0/1 label columns.
    #[arg(long, env = "CT_LABELS")]
    labels: PathBuf,
    /// Study column (the score file stem).
    #[arg(long, env = "CT_ID_COLUMN", default_value = "study")]
    id_column: String,
    /// Main label column (1 = pathological).
    #[arg(long, env = "CT_LABEL_COLUMN", default_value = "label")]
    label_column: String,
    /// Thoracic label column; `train` trains a thoracic model when given.
    #[arg(long, env = "CT_THORACIC_LABEL_COLUMN")]
    thoracic_label_column: Option<String>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output bundle directory (created).
    #[arg(long, env = "CT_OUT")]
    out: PathBuf,
    /// Fraction of studies held out (stratified) for the reported AUC and for `calibrate`.
    #[arg(long, env = "CT_HOLDOUT_FRACTION", default_value_t = 0.25)]
    holdout_fraction: f64,
    /// Seed of the split and of LightGBM.
    #[arg(long, env = "CT_SEED", default_value_t = 42)]
    seed: u64,
    /// Missing-feature policy used for training and written to the manifest.
    #[arg(long, env = "CT_MISSING_FEATURES", value_enum, default_value = "zero")]
    missing_features: MissingPolicy,
    /// Feature definition (default: the reference's).
    #[arg(long, env = "CT_FEATURES_FILE")]
    features_file: Option<PathBuf>,
    /// Main threshold written to the manifest (run `calibrate` to choose one).
    #[arg(long, env = "CT_THRESHOLD", default_value_t = 0.5)]
    threshold: f64,
    /// Thoracic threshold written to the manifest.
    #[arg(long, env = "CT_THRESHOLD_THORACIC", default_value_t = 0.5)]
    threshold_thoracic: f64,
    /// Bundle version written to the manifest.
    #[arg(long, env = "CT_BUNDLE_VERSION", default_value = "retrained")]
    version: String,
    #[command(flatten)]
    params: TrainParams,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("criterion").required(true).args(["target_sensitivity", "youden"])))]
struct CalibrateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Bundle whose manifest gets the threshold.
    #[arg(long, env = "CT_ENSEMBLE_BUNDLE")]
    bundle: PathBuf,
    /// The highest threshold whose sensitivity on the split is at least this.
    #[arg(long)]
    target_sensitivity: Option<f64>,
    /// Maximise sensitivity + specificity - 1 instead.
    #[arg(long)]
    youden: bool,
    /// Which model's threshold (thoracic uses --thoracic-label-column).
    #[arg(long, value_enum, default_value = "main")]
    model: Which,
    /// Studies used.
    #[arg(long, value_enum, default_value = "holdout")]
    split: Split,
    /// Print the threshold without writing the manifest.
    #[arg(long)]
    dry_run: bool,
}

/// mimalloc, keeping freed memory for the next study: see `ct_service::alloc`.
#[global_allocator]
static ALLOCATOR: ct_service::alloc::Allocator = ct_service::alloc::Allocator;

fn main() -> ExitCode {
    ct_service::alloc::configure();
    let cli = Cli::parse_from(args_with_default_command());
    match cli.command {
        Command::Serve(args) => {
            ct_service::init_tracing();
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Features(a) => report(features(&a)),
        Command::Predict(a) => report(predict(&a)),
        Command::Train(a) => report(run_train(a)),
        Command::Calibrate(a) => report(calibrate(&a)),
    }
}

/// Prints one JSON object; failures exit with code 2 and `{"error_type", "error"}`.
fn report(r: Result<serde_json::Value, EnsembleError>) -> ExitCode {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({"error_type": e.error_type(), "error": e.to_string()}));
            ExitCode::from(2)
        }
    }
}

fn read_scores(path: &Path) -> Result<ScoreSet, EnsembleError> {
    let text = std::fs::read_to_string(path).map_err(|e| EnsembleError::Io { path: path.to_path_buf(), source: e })?;
    ScoreSet::from_json_str(&text)
}

fn number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn features(a: &ScoresArgs) -> Result<serde_json::Value, EnsembleError> {
    let (_, e) = a.bundle.load()?;
    let (values, _) = e.features(&read_scores(&a.scores)?);
    Ok(serde_json::Value::Object(e.feature_names().iter().cloned().zip(values.into_iter().map(number)).collect()))
}

fn predict(a: &ScoresArgs) -> Result<serde_json::Value, EnsembleError> {
    let (_, e) = a.bundle.load()?;
    let p = e.predict(&read_scores(&a.scores)?)?;
    Ok(json!({
        "probability_of_pathology": p.probability,
        "pathology": p.pathology,
        "probability_of_pathology_thoracic": p.thoracic.map(|t| t.0),
        "pathology_thoracic": p.thoracic.map(|t| t.1),
        "top_pathologies": p.top_pathologies,
        "missing_features": p.missing_features,
    }))
}

fn run_train(a: TrainArgs) -> Result<serde_json::Value, EnsembleError> {
    let spec = match &a.features_file {
        Some(p) => FeatureSpec::parse(&std::fs::read_to_string(p).map_err(|e| EnsembleError::Io { path: p.clone(), source: e })?)?,
        None => FeatureSpec::reference(),
    };
    for (what, t) in [("--threshold", a.threshold), ("--threshold-thoracic", a.threshold_thoracic)] {
        if !(0.0..=1.0).contains(&t) {
            return Err(EnsembleError::Training { reason: format!("{what} {t} is not within [0, 1]") });
        }
    }
    let cfg = TrainConfig {
        scores_dir: a.data.scores_dir,
        labels: a.data.labels,
        out: a.out,
        id_column: a.data.id_column,
        label_column: a.data.label_column,
        thoracic_label_column: a.data.thoracic_label_column,
        holdout_fraction: a.holdout_fraction,
        seed: a.seed,
        missing: a.missing_features,
        spec,
        threshold: a.threshold,
        threshold_thoracic: a.threshold_thoracic,
        version: a.version,
        params: a.params,
    };
    let r = train::train(&cfg)?;
    serde_json::to_value(&r).map_err(|e| EnsembleError::Internal(e.to_string()))
}

fn calibrate(a: &CalibrateArgs) -> Result<serde_json::Value, EnsembleError> {
    let cfg = CalibrateConfig {
        bundle: a.bundle.clone(),
        scores_dir: a.data.scores_dir.clone(),
        labels: a.data.labels.clone(),
        id_column: a.data.id_column.clone(),
        label_column: a.data.label_column.clone(),
        thoracic_label_column: a.data.thoracic_label_column.clone(),
        criterion: match a.target_sensitivity {
            Some(t) => Criterion::Sensitivity(t),
            None => Criterion::Youden,
        },
        model: a.model,
        split: a.split,
        dry_run: a.dry_run,
    };
    let r = train::calibrate(&cfg)?;
    serde_json::to_value(&r).map_err(|e| EnsembleError::Internal(e.to_string()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let admin: Option<SocketAddr> = match args.admin_listen.trim() {
        "" | "off" | "none" => None,
        s => Some(s.parse().with_context(|| format!("--admin-listen {s:?} is not an address (or \"off\")"))?),
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), bundle = %args.bundle.bundle.display(), "ensemble-svc starting");
    let b = args.bundle.clone();
    // the boosters are created on the worker thread that will own them
    let (handle, loaded) = EnsembleHandle::spawn(move || {
        let (bundle, e) = b.load()?;
        let m = &bundle.manifest;
        tracing::info!(
            version = %m.ensemble.version,
            demo = m.ensemble.demo,
            main_sha256 = %bundle.main_sha256(),
            thoracic = m.thoracic.is_some(),
            features = if bundle.spec_is_default { "reference (embedded)" } else { "features.toml" },
            missing_policy = ?e.missing_policy(),
            name_matching = ?m.features.name_matching,
            "ensemble bundle loaded"
        );
        if m.ensemble.demo {
            tracing::warn!("this is a DEMO ensemble: not a medical model");
        }
        Ok(e)
    })
    .with_context(|| format!("loading the ensemble bundle {}", args.bundle.bundle.display()))?;
    for n in &loaded.notes {
        tracing::warn!("{n}");
    }
    tracing::info!(features = loaded.n_features, threshold = loaded.threshold, threshold_thoracic = ?loaded.threshold_thoracic, "ready to combine");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).context("registering metrics")?;
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let shutdown = ct_service::Shutdown::on_signals();
        let ready = ct_service::Readiness::default();
        let admin_task = match admin {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the admin port {addr}"))?;
                let addr = l.local_addr()?;
                tracing::info!(%addr, "admin HTTP listening (/live, /ready, /metrics)");
                Some(tokio::spawn(ct_service::serve_admin(l, ct_service::admin_router(ready.clone(), registry), shutdown.wait())))
            }
            None => None,
        };
        ready.set(true);
        let r = ensemble_svc::service::run(listener, EnsembleSvc::new(handle, metrics), shutdown.wait()).await;
        ready.set(false);
        if let Some(t) = admin_task {
            t.await.context("admin server task")??;
        }
        r
    })
}
