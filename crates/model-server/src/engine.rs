//! ONNX Runtime through `ort` (`load-dynamic`: the library comes from `ORT_DYLIB_PATH` or
//! `--ort-lib`, never from a download). One process-wide environment; one [`Engine`] (session)
//! per inference worker thread.

use crate::bundle::{Bundle, BundleError, DType, TensorSpec};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Which execution provider to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// CUDA when it can be used (built with the `cuda` feature and a GPU present), else CPU with a warning.
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA; start-up fails when it cannot be used.
    Cuda,
}

/// Execution settings shared by every session of the process.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineConfig {
    /// Path of libonnxruntime.so (defaults to $ORT_DYLIB_PATH, then the system search path).
    #[arg(long, env = "CT_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, env = "CT_PROVIDER", value_enum, default_value = "auto")]
    pub provider: Provider,
    /// Refuse to start unless the CUDA provider is in use (same as --provider cuda).
    #[arg(long, env = "CT_REQUIRE_GPU", default_value_t = false)]
    pub require_gpu: bool,
    /// CUDA device id.
    #[arg(long, env = "CT_CUDA_DEVICE", default_value_t = 0)]
    pub cuda_device: i32,
    /// CUDA memory-arena limit in MiB (0 = ONNX Runtime's default: no limit).
    #[arg(long, env = "CT_GPU_MEM_LIMIT_MB", default_value_t = 0)]
    pub gpu_mem_limit_mb: usize,
    /// Intra-op threads per session on CPU (0 = ONNX Runtime's default: one per core).
    #[arg(long, env = "CT_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { ort_lib: None, provider: Provider::Auto, require_gpu: false, cuda_device: 0, gpu_mem_limit_mb: 0, intra_threads: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("loading {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("the CUDA execution provider is required but unavailable: {0}")]
    GpuRequired(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("inference failed: {0}")]
    Run(String),
    #[error("model output {name}: {message}")]
    Output { name: String, message: String },
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(cfg: &EngineConfig) -> Result<ort::environment::Environment, EngineError> {
    ENV.get_or_init(|| {
        let lib = cfg.ort_lib.clone().or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
        let builder = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        builder.with_name("ct-model").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(EngineError::Environment)
}

/// An input tensor for [`Engine::run`].
#[derive(Debug, Clone)]
pub enum Input {
    F32(Vec<i64>, Vec<f32>),
    F16(Vec<i64>, Vec<half::f16>),
    I64(Vec<i64>, Vec<i64>),
}

impl Input {
    /// An f32 tensor converted to the element type `dtype` asks for.
    pub fn float(dtype: DType, shape: Vec<i64>, data: Vec<f32>) -> Input {
        match dtype {
            // ct-volume's parallel converter (round to nearest even, checked against NumPy);
            // `half::f16` is only ONNX Runtime's element type (the collect reuses the buffer)
            DType::Float16 => Input::F16(shape, ct_volume::to_f16_bits(&data).into_iter().map(half::f16::from_bits).collect()),
            _ => Input::F32(shape, data),
        }
    }
}

/// One output, converted to f32, with its shape.
#[derive(Debug, Clone)]
pub struct Output {
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// A session on one bundle, checked against its manifest.
pub struct Engine {
    session: Session,
    provider: &'static str,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Engine {
    /// Creates the session (CUDA first when asked, else CPU) and verifies that its real inputs and
    /// outputs are exactly the manifest's.
    pub fn open(bundle: &Bundle, cfg: &EngineConfig) -> Result<Engine, EngineError> {
        let env = environment(cfg)?;
        let path = bundle.model_path();
        let session_err = |e: ort::Error| EngineError::Session { path: path.clone(), message: e.to_string() };
        let want_cuda = cfg.require_gpu || cfg.provider != Provider::Cpu;
        let mut chosen = None;
        if want_cuda {
            match cuda_session(&env, &path, cfg) {
                Ok(s) => chosen = Some((s, "cuda")),
                Err(reason) => {
                    if cfg.require_gpu || cfg.provider == Provider::Cuda {
                        return Err(EngineError::GpuRequired(reason));
                    }
                    tracing::warn!(%reason, "CUDA execution provider unavailable, falling back to CPU");
                }
            }
        }
        let (session, provider) = match chosen {
            Some(c) => c,
            None => {
                let mut b = Session::builder(&env).map_err(session_err)?.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| session_err(e.into()))?;
                if cfg.intra_threads > 0 {
                    b = b.with_intra_threads(cfg.intra_threads).map_err(|e| session_err(e.into()))?;
                }
                (b.commit_from_file(&path).map_err(session_err)?, "cpu")
            }
        };
        let m = &bundle.manifest;
        check_outlets(bundle, "inputs", session.inputs(), &m.inputs)?;
        check_outlets(bundle, "outputs", session.outputs(), &m.outputs)?;
        Ok(Engine { session, provider, inputs: m.inputs.clone(), outputs: m.outputs.clone() })
    }

    /// "cuda" or "cpu".
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Runs the session on `inputs` (in manifest input order) and returns every output as f32,
    /// in manifest output order.
    pub fn run(&mut self, inputs: Vec<Input>) -> Result<Vec<Output>, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(e.to_string());
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (spec, input) in self.inputs.iter().zip(inputs) {
            let v: ort::value::DynValue = match input {
                Input::F32(s, d) => Tensor::from_array((s, d)).map_err(run_err)?.into_dyn(),
                Input::F16(s, d) => Tensor::from_array((s, d)).map_err(run_err)?.into_dyn(),
                Input::I64(s, d) => Tensor::from_array((s, d)).map_err(run_err)?.into_dyn(),
            };
            values.push((spec.name.clone(), v.into()));
        }
        let outputs = self.session.run(values).map_err(run_err)?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs.get(&spec.name).ok_or_else(|| EngineError::Output { name: spec.name.clone(), message: "missing from the run's outputs".into() })?;
            let out_err = |e: ort::Error| EngineError::Output { name: spec.name.clone(), message: e.to_string() };
            let (shape, data) = match spec.dtype {
                DType::Float32 => {
                    let (s, d) = value.try_extract_tensor::<f32>().map_err(out_err)?;
                    (s.to_vec(), d.to_vec())
                }
                DType::Float16 => {
                    let (s, d) = value.try_extract_tensor::<half::f16>().map_err(out_err)?;
                    (s.to_vec(), d.iter().map(|v| v.to_f32()).collect())
                }
                DType::Int64 => {
                    let (s, d) = value.try_extract_tensor::<i64>().map_err(out_err)?;
                    (s.to_vec(), d.iter().map(|&v| v as f32).collect())
                }
            };
            result.push(Output { shape, data });
        }
        Ok(result)
    }
}

#[cfg(feature = "cuda")]
fn cuda_session(env: &ort::environment::Environment, path: &std::path::Path, cfg: &EngineConfig) -> Result<Session, String> {
    let mut ep = ort::ep::CUDA::default().with_device_id(cfg.cuda_device);
    if cfg.gpu_mem_limit_mb > 0 {
        ep = ep.with_memory_limit(cfg.gpu_mem_limit_mb << 20);
    }
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let mut builder = builder.with_execution_providers([ep.build().error_on_failure()]).map_err(|e| e.to_string())?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| e.to_string())?;
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_session(_env: &ort::environment::Environment, _path: &std::path::Path, _cfg: &EngineConfig) -> Result<Session, String> {
    Err("this binary was built without the `cuda` feature".into())
}

fn element(ty: TensorElementType) -> Option<DType> {
    match ty {
        TensorElementType::Float32 => Some(DType::Float32),
        TensorElementType::Float16 => Some(DType::Float16),
        TensorElementType::Int64 => Some(DType::Int64),
        _ => None,
    }
}

/// The session's real inputs/outputs must be the manifest's: same count, order, names, element
/// types and ranks; fixed dimensions equal (a dynamic graph axis must be -1 in the manifest).
fn check_outlets(bundle: &Bundle, what: &str, real: &[ort::value::Outlet], declared: &[TensorSpec]) -> Result<(), BundleError> {
    let names = |v: &mut dyn Iterator<Item = String>| format!("[{}]", v.collect::<Vec<_>>().join(", "));
    if real.len() != declared.len() || real.iter().zip(declared).any(|(r, d)| r.name() != d.name) {
        return Err(bundle.mismatch(what, names(&mut declared.iter().map(|d| d.name.clone())), names(&mut real.iter().map(|r| r.name().to_string()))));
    }
    for (r, d) in real.iter().zip(declared) {
        let field = format!("{what}.{}", d.name);
        let ValueType::Tensor { ty, shape, .. } = r.dtype() else {
            return Err(bundle.mismatch(field, "a tensor", format!("{:?}", r.dtype())));
        };
        if element(*ty) != Some(d.dtype) {
            return Err(bundle.mismatch(format!("{field}.dtype"), d.dtype.as_str(), format!("{ty:?}")));
        }
        let real_shape: Vec<i64> = shape.iter().copied().collect();
        let same = real_shape.len() == d.shape.len() && real_shape.iter().zip(&d.shape).all(|(a, b)| a == b || (*a < 0 && *b < 0));
        if !same {
            return Err(bundle.mismatch(format!("{field}.shape"), format!("{:?}", d.shape), format!("{real_shape:?}")));
        }
    }
    Ok(())
}
