//! `GET /metrics`: requests, tokens, batch size, queue length, latency,
//! and the running mean of every monitored projection per model and
//! trait (the deployment's persona monitor), in Prometheus' text format.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::monitor::Projection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraitLabel {
    pub model: String,
    pub vector: String,
    pub row: u32,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabel, Counter>,
    pub prompt_tokens: Family<ModelLabel, Counter>,
    completion_tokens: Family<ModelLabel, Counter>,
    batch_rows: Family<ModelLabel, Gauge>,
    queued: Family<ModelLabel, Gauge>,
    latency: Histogram,
    monitor_seconds: Histogram,
    projection_mean: Family<TraitLabel, FloatGauge>,
    projection_count: Family<TraitLabel, Counter>,
    /// Sum and count of the response-mean projections per label.
    sums: Mutex<HashMap<TraitLabel, (f64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("persona");
        let m = Self {
            requests: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            batch_rows: Family::default(),
            queued: Family::default(),
            // Buckets from 10 ms, doubling.
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            monitor_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            projection_mean: Family::default(),
            projection_count: Family::default(),
            sums: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by endpoint and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens read",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            m.completion_tokens.clone(),
        );
        registry.register(
            "batch_rows",
            "Answers in the running batch",
            m.batch_rows.clone(),
        );
        registry.register(
            "queue_length",
            "Requests waiting to join the batch",
            m.queued.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from request to last token",
            m.latency.clone(),
        );
        registry.register(
            "monitor_seconds",
            "Time of the capture pass that measures an answer's projections",
            m.monitor_seconds.clone(),
        );
        registry.register(
            "monitor_projection_mean",
            "Running mean over served answers of the response-mean projection on a monitored vector",
            m.projection_mean.clone(),
        );
        registry.register(
            "monitor_answers",
            "Answers whose projection on a monitored vector was measured",
            m.projection_count.clone(),
        );
        Self { registry, ..m }
    }

    /// The metrics one model's engine updates.
    pub fn for_model(self: &std::sync::Arc<Self>, model: &str) -> ModelMetrics {
        let label = ModelLabel {
            model: model.to_string(),
        };
        ModelMetrics {
            model: model.to_string(),
            completion_tokens: self.completion_tokens.get_or_create(&label).clone(),
            batch_rows: self.batch_rows.get_or_create(&label).clone(),
            queued: self.queued.get_or_create(&label).clone(),
            monitor_seconds: self.monitor_seconds.clone(),
            all: self.clone(),
        }
    }

    pub fn request(&self, endpoint: &str, status: u16, seconds: Option<f64>) {
        self.requests
            .get_or_create(&RequestLabel {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        if let Some(s) = seconds {
            self.latency.observe(s);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One model's handles on the shared metrics.
#[derive(Clone)]
pub struct ModelMetrics {
    model: String,
    pub completion_tokens: Counter,
    pub batch_rows: Gauge,
    pub queued: Gauge,
    pub monitor_seconds: Histogram,
    all: std::sync::Arc<Metrics>,
}

impl ModelMetrics {
    /// Adds an answer's response-mean projections to the running means.
    pub fn observe_projections(&self, projections: &[Projection]) {
        let mut sums = self.all.sums.lock().unwrap_or_else(|e| e.into_inner());
        for p in projections {
            let Some(v) = p.response_mean else { continue };
            let label = TraitLabel {
                model: self.model.clone(),
                vector: p.name.clone(),
                row: p.row as u32,
            };
            let (sum, n) = sums.entry(label.clone()).or_insert((0.0, 0));
            *sum += v;
            *n += 1;
            self.all
                .projection_mean
                .get_or_create(&label)
                .set(*sum / *n as f64);
            self.all.projection_count.get_or_create(&label).inc();
        }
    }
}
