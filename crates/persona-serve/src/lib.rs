//! `persona serve`: an OpenAI-compatible server whose requests choose their
//! own steering and monitoring.
//!
//! - `api`: the request bodies (OpenAI's fields and the `persona` extension);
//! - `request`: a request checked and turned into an engine job;
//! - `engine`: one thread per model decoding every running request in one
//!   batch, each row with its own steering;
//! - `text`, `monitor`: what a client reads back (text, log-probabilities,
//!   projections);
//! - `complete`: the two completion endpoints, whole or streamed;
//! - `routes`: the router, authentication, models, vectors, health, metrics;
//! - `vectors`, `metrics`, `error`.

pub mod api;
mod complete;
mod engine;
pub mod error;
mod metrics;
mod monitor;
mod request;
mod routes;
mod text;
mod vectors;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use burn::tensor::Device;
use persona_model::LoadedModel;

use engine::{Engine, Job};
pub use error::{ApiError, ServeError};
use metrics::{Metrics, ModelMetrics};
use request::Limits;
use vectors::VectorStore;

/// Everything `persona serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The base model spec (cache name, `.gguf` or HF folder).
    pub model: String,
    pub device: Device,
    /// The type the frozen weights are kept in (adapters are merged in f32).
    pub dtype: persona_model::WeightDtype,
    /// Vector files served by name (`<name>.safetensors`).
    pub vectors: Option<PathBuf>,
    /// Run folders (or PEFT adapter folders), each served as `<model>:<folder>`.
    pub adapters: Option<PathBuf>,
    /// Answers decoded together per model.
    pub max_batch: usize,
    /// Requests running or waiting; more get 429.
    pub max_concurrent: usize,
    pub max_prompt_tokens: Option<usize>,
    pub max_body_bytes: usize,
    /// When set, every endpoint needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// One served model: the base, or the base with a run's adapters merged.
pub(crate) struct Served {
    pub model: Arc<LoadedModel>,
    pub jobs: Sender<Job>,
    pub metrics: ModelMetrics,
}

/// What every handler reads.
pub(crate) struct AppState {
    pub models: BTreeMap<String, Served>,
    pub vectors: VectorStore,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub api_key: Option<String>,
    pub slots: Arc<tokio::sync::Semaphore>,
    pub next_id: AtomicU64,
    pub created: u64,
}

/// A loaded server, ready to accept connections.
pub struct Server {
    state: Arc<AppState>,
    body_limit: usize,
    grace: Duration,
}

impl Server {
    /// Loads the model, the adapters' merged models and the vectors, and
    /// starts one engine thread per model. `progress` hears what loads.
    pub fn load(opts: &ServeOptions, mut progress: impl FnMut(&str)) -> Result<Self, ServeError> {
        for (name, v) in [
            ("--max-batch", opts.max_batch),
            ("--max-concurrent", opts.max_concurrent),
            ("--max-body-bytes", opts.max_body_bytes),
        ] {
            if v == 0 {
                return Err(ServeError::Setup(format!("{name} must be at least 1")));
            }
        }
        progress(&format!("loading {}", opts.model));
        let base = persona_model::load_as(&opts.model, &opts.device, opts.dtype)?;
        let vectors = VectorStore::open(
            opts.vectors.as_deref(),
            base.model.config.clone(),
            base.identity.clone(),
        )?;
        let context = base.model.config.max_positions;
        let base_id = base.identity.name.clone();
        let arms = adapter_arms(opts, &base_id)?;
        let mut models = vec![(base_id, base)];
        for (id, arm) in arms {
            progress(&format!(
                "merging {} into {id}",
                arm.adapter
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            ));
            models.push((id, arm.host_model()?.to_device(&opts.device)?));
        }
        let metrics = Arc::new(Metrics::new());
        let mut served = BTreeMap::new();
        for (id, model) in models {
            let model = Arc::new(model);
            let (jobs, rx) = mpsc::channel();
            let engine = Engine {
                model: model.clone(),
                max_rows: opts.max_batch,
                metrics: metrics.for_model(&id),
            };
            let m = engine.metrics.clone();
            std::thread::Builder::new()
                .name(format!("engine {id}"))
                .spawn(move || engine.run(rx))?;
            served.insert(
                id,
                Served {
                    model,
                    jobs,
                    metrics: m,
                },
            );
        }
        let state = AppState {
            models: served,
            vectors,
            metrics,
            limits: Limits {
                max_prompt_tokens: opts.max_prompt_tokens.unwrap_or(context),
                max_choices: opts.max_batch,
            },
            api_key: opts.api_key.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent)),
            next_id: AtomicU64::new(0),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        Ok(Self {
            state: Arc::new(state),
            body_limit: opts.max_body_bytes,
            grace: opts.shutdown_grace,
        })
    }

    /// The model ids a request may name.
    pub fn model_ids(&self) -> Vec<String> {
        self.state.models.keys().cloned().collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish for at most the grace period.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = routes::router(self.state.clone(), self.body_limit);
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = signalled.send(());
        });
        let mut server = tokio::spawn(async move { server.await });
        let grace = self.grace;
        tokio::select! {
            r = &mut server => {
                r.map_err(|e| ServeError::Setup(format!("the server task failed: {e}")))??;
            }
            _ = async { if on_signal.await.is_ok() { tokio::time::sleep(grace).await } else { std::future::pending::<()>().await } } => {
                eprintln!(
                    "persona serve: requests still running after {} s; stopping them",
                    grace.as_secs()
                );
            }
        }
        Ok(())
    }
}

/// The `(model id, arm)` of every adapter folder under `--adapters`
/// (folders without adapter weights are skipped: a run still training).
fn adapter_arms(
    opts: &ServeOptions,
    model_name: &str,
) -> Result<Vec<(String, persona_eval::Arm)>, ServeError> {
    let Some(dir) = &opts.adapters else {
        return Ok(Vec::new());
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ServeError::Setup(format!(
            "cannot read the adapters folder {}: {e}",
            dir.display()
        ))
    })?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    Ok(folders
        .into_iter()
        .filter(|f| {
            persona_eval::arm::adapter_dir(f)
                .join(persona_train::run_dir::ADAPTER_WEIGHTS)
                .exists()
        })
        .filter_map(|f| {
            let name = f.file_name()?.to_str()?.to_string();
            let arm = persona_eval::Arm {
                id: name.clone(),
                label: name.clone(),
                model: opts.model.clone(),
                dtype: opts.dtype,
                adapter: Some(f),
                step: None,
                steer: None,
                cap: None,
                system: None,
            };
            Some((format!("{model_name}:{name}"), arm))
        })
        .collect())
}
