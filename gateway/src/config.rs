//! Configuration: every setting is a flag with a `CT_*` environment variable. Validated before
//! any port is bound ([`Config::validate`]).

use std::net::SocketAddr;
use std::time::Duration;

/// What the gateway does when a model service is down or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MissingModelPolicy {
    /// Fail the study with 503 (`upstream_unavailable`).
    Fail,
    /// Answer with the ensemble's missing-feature policy and name the missing models in the
    /// response (`missing_models`). At least one model must answer.
    Degrade,
}

impl MissingModelPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingModelPolicy::Fail => "fail",
            MissingModelPolicy::Degrade => "degrade",
        }
    }
}

/// How the gateway finds the replicas behind an upstream URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    /// One lazily connected HTTP/2 connection per URL (compose, a single replica per service,
    /// or a Kubernetes ClusterIP Service: every request of this gateway goes to the replica the
    /// connection landed on).
    Static,
    /// Resolve each URL's host name at start and every `CT_UPSTREAM_RESOLVE_INTERVAL`, keep one
    /// connection per resolved address and spread the calls over them (Kubernetes headless
    /// Services: one address per ready pod).
    Dns,
}

impl Discovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Discovery::Static => "static",
            Discovery::Dns => "dns",
        }
    }
}

/// The gRPC addresses of the seven upstream services.
#[derive(Debug, Clone, clap::Args)]
pub struct Upstreams {
    /// preprocess-svc (archive / NIfTI -> volume).
    #[arg(long, env = "CT_PREPROCESS_URL", default_value = "http://127.0.0.1:50051")]
    pub preprocess_url: String,
    /// ctclip-svc.
    #[arg(long, env = "CT_CTCLIP_URL", default_value = "http://127.0.0.1:50052")]
    pub ctclip_url: String,
    /// supervised-svc.
    #[arg(long, env = "CT_SUPERVISED_URL", default_value = "http://127.0.0.1:50053")]
    pub supervised_url: String,
    /// diffusion-svc.
    #[arg(long, env = "CT_DIFFUSION_URL", default_value = "http://127.0.0.1:50054")]
    pub diffusion_url: String,
    /// mednext-svc.
    #[arg(long, env = "CT_MEDNEXT_URL", default_value = "http://127.0.0.1:50055")]
    pub mednext_url: String,
    /// fvlm-svc (the only model that receives the lung mask).
    #[arg(long, env = "CT_FVLM_URL", default_value = "http://127.0.0.1:50056")]
    pub fvlm_url: String,
    /// ensemble-svc.
    #[arg(long, env = "CT_ENSEMBLE_URL", default_value = "http://127.0.0.1:50057")]
    pub ensemble_url: String,
}

impl Default for Upstreams {
    fn default() -> Self {
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        Self {
            preprocess_url: url(50051),
            ctclip_url: url(50052),
            supervised_url: url(50053),
            diffusion_url: url(50054),
            mednext_url: url(50055),
            fvlm_url: url(50056),
            ensemble_url: url(50057),
        }
    }
}

impl Upstreams {
    /// `(model name, URL)` of the five model services, in the order the response lists them.
    pub fn models(&self) -> [(&'static str, &str); 5] {
        [
            ("ctclip", self.ctclip_url.as_str()),
            ("supervised", self.supervised_url.as_str()),
            ("diffusion", self.diffusion_url.as_str()),
            ("mednext", self.mednext_url.as_str()),
            ("fvlm", self.fvlm_url.as_str()),
        ]
    }

    /// `(upstream name, URL)` of all seven upstreams.
    pub fn all(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("preprocess", self.preprocess_url.as_str())];
        v.extend(self.models());
        v.push(("ensemble", self.ensemble_url.as_str()));
        v
    }
}

/// Everything the gateway needs; the entry point ([`crate::run`]) takes this one struct.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// REST API address (/predict, /predict_nifti, /health, /, /openapi.json).
    #[arg(long, env = "CT_GATEWAY_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Admin HTTP address (/live, /ready, /metrics, /upstreams).
    #[arg(long, env = "CT_GATEWAY_ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub upstreams: Upstreams,
    /// Largest accepted request body (bytes; K/M/G/KiB/MiB/GiB suffixes allowed); larger -> 413.
    #[arg(long, env = "CT_MAX_BODY_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,
    /// Deadline of one study from admission to answer (e.g. 300s, 5m); exceeded -> 504.
    #[arg(long, env = "CT_REQUEST_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Studies processed at the same time.
    #[arg(long, env = "CT_MAX_IN_FLIGHT", default_value_t = 2)]
    pub max_in_flight: usize,
    /// Studies allowed to wait for a free slot; beyond max_in_flight + queue_depth -> 429.
    #[arg(long, env = "CT_QUEUE_DEPTH", default_value_t = 8)]
    pub queue_depth: usize,
    /// Seconds sent in Retry-After with a 429.
    #[arg(long, env = "CT_RETRY_AFTER", default_value_t = 5)]
    pub retry_after_secs: u64,
    /// What to do when a model service is down or times out.
    #[arg(long, env = "CT_MISSING_MODEL_POLICY", value_enum, default_value = "fail")]
    pub missing_model_policy: MissingModelPolicy,
    /// Time one model service has for one study (receiving the volume + inference), e.g. 120s.
    #[arg(long, env = "CT_MODEL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub model_timeout: Duration,
    /// Time to open a connection to an upstream service.
    #[arg(long, env = "CT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How upstream replicas are found: static (one connection per URL) or dns (every address the
    /// URL's host resolves to, re-resolved periodically; calls spread over them).
    #[arg(long, env = "CT_UPSTREAM_DISCOVERY", value_enum, default_value = "static")]
    pub upstream_discovery: Discovery,
    /// With dns discovery: how often each upstream host name is resolved again, e.g. 10s.
    #[arg(long, env = "CT_UPSTREAM_RESOLVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub upstream_resolve_interval: Duration,
    /// How often /ready re-checks the upstreams' grpc.health.v1.
    #[arg(long, env = "CT_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// How long a shutdown waits for studies in flight before the process exits anyway.
    #[arg(long, env = "CT_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// One-machine mode: a folder (tmpfs, e.g. under /dev/shm) that the model services also read
    /// (their CT_SHARED_VOLUME_DIR). Each study's volume is written there once and the model
    /// services get its file name instead of five copies over gRPC and map the file; when the study
    /// ends the file goes back to the pool (`shared_volume_pool`) if every model answered, else it
    /// is removed. Unset (default, and always across machines): the volume is streamed.
    #[arg(long, env = "CT_SHARED_VOLUME_DIR")]
    pub shared_volume_dir: Option<std::path::PathBuf>,
    /// One-machine mode: how many finished studies' files are kept in the shared folder for reuse
    /// instead of removed (each holds a study's volume and mask in memory, about 235 MB for 300
    /// slices of 512 x 512; reusing their pages saves the kernel allocating and zeroing them for
    /// every study, and the model services their mappings). 0: remove every file.
    #[arg(long, env = "CT_SHARED_VOLUME_POOL", default_value_t = 2)]
    pub shared_volume_pool: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
            upstreams: Upstreams::default(),
            max_body_bytes: 1 << 30,
            request_timeout: Duration::from_secs(300),
            max_in_flight: 2,
            queue_depth: 8,
            retry_after_secs: 5,
            missing_model_policy: MissingModelPolicy::Fail,
            model_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            upstream_discovery: Discovery::Static,
            upstream_resolve_interval: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            shared_volume_dir: None,
            shared_volume_pool: 2,
        }
    }
}

impl Config {
    /// Checks what clap cannot: URLs, ranges. One line per problem.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in self.upstreams.all() {
            let uri: axum::http::Uri = url.parse().map_err(|e| format!("{name} URL {url:?}: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http")) || uri.host().is_none() {
                return Err(format!("{name} URL {url:?}: expected http://host:port"));
            }
        }
        if self.max_in_flight == 0 {
            return Err("CT_MAX_IN_FLIGHT must be at least 1".into());
        }
        if let Some(dir) = &self.shared_volume_dir
            && !dir.is_dir()
        {
            return Err(format!("CT_SHARED_VOLUME_DIR {} is not a folder", dir.display()));
        }
        if self.max_body_bytes == 0 || usize::try_from(self.max_body_bytes).is_err() {
            return Err(format!("CT_MAX_BODY_BYTES {} is out of range", self.max_body_bytes));
        }
        for (name, d) in [
            ("CT_REQUEST_TIMEOUT", self.request_timeout),
            ("CT_MODEL_TIMEOUT", self.model_timeout),
            ("CT_CONNECT_TIMEOUT", self.connect_timeout),
            ("CT_HEALTH_INTERVAL", self.health_interval),
            ("CT_UPSTREAM_RESOLVE_INTERVAL", self.upstream_resolve_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than 0"));
            }
        }
        Ok(())
    }
}

/// `"1073741824"`, `"512M"`, `"1GiB"`, `"64 KiB"` -> bytes (K/M/G are binary, as in the defaults).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a byte size (e.g. 1073741824, 512MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `"300"` (seconds), `"300s"`, `"1500ms"`, `"5m"`, `"0.5s"` -> duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 300s, 1500ms, 5m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("1TB").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_validate_and_bad_urls_do_not() {
        assert_eq!(Config::default().validate(), Ok(()));
        let mut c = Config::default();
        c.upstreams.fvlm_url = "127.0.0.1:50056".into();
        assert!(c.validate().unwrap_err().contains("fvlm"));
        assert!(Config { max_in_flight: 0, ..Config::default() }.validate().is_err());
        assert!(Config { upstream_resolve_interval: Duration::ZERO, ..Config::default() }.validate().unwrap_err().contains("CT_UPSTREAM_RESOLVE_INTERVAL"));
    }

    #[test]
    fn clap_defaults_equal_default_impl() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        // no CT_* variables influence this: only explicit defaults are compared
        let parsed = Cli::try_parse_from(["gateway"]).expect("defaults parse").config;
        let d = Config::default();
        if std::env::vars().any(|(k, _)| k.starts_with("CT_") && k != "CT_LOG") {
            return; // an operator's environment is set: the comparison would be meaningless
        }
        assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
    }
}
