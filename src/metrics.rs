//! Prometheus metrics, exposed at `/metrics`: the server's own (HTTP, retrieval, ingestion) and the engine's
//! (`engram_engine::metrics`).

use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, Encoder, HistogramVec, IntCounter, IntCounterVec, Registry,
    TextEncoder,
};
use std::sync::LazyLock;

/// The engine's generation metrics, gathered into `/metrics` with the server's own.
pub use engram_engine::metrics::{
    INTER_TOKEN_LATENCY, KV_BLOCKS_TOTAL, KV_BLOCKS_USED, KV_EVICTED_TOKENS, QUEUE_DEPTH,
    SPECULATIVE_ACCEPTED, SPECULATIVE_PROPOSED, TARGET_STEPS, TIME_TO_FIRST_TOKEN,
    TOKENS_GENERATED,
};

/// The registry every Engram metric lives in.
pub static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::new_custom(Some("engram".into()), None).expect("valid prefix"));

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter_with_registry!(name, help, REGISTRY).expect("metric registers once")
}

/// HTTP requests by method, matched route and status.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "http_requests_total",
        "HTTP requests by method, route and status",
        &["method", "route", "status"],
        REGISTRY
    )
    .expect("metric registers once")
});

/// HTTP request latency by method and route.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec_with_registry!(
        "http_request_duration_seconds",
        "HTTP request latency by method and route",
        &["method", "route"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        REGISTRY
    )
    .expect("metric registers once")
});

/// Retrieval latency by method.
pub static RETRIEVE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec_with_registry!(
        "retrieve_duration_seconds",
        "Retrieval latency by method",
        &["method"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
        REGISTRY
    )
    .expect("metric registers once")
});

/// Ingestion jobs accepted.
pub static JOBS_SUBMITTED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("ingest_jobs_submitted_total", "Ingestion jobs accepted"));
/// Documents stored.
pub static DOCUMENTS_INGESTED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("documents_ingested_total", "Documents stored"));
/// Documents skipped as identical to a stored one.
pub static DOCUMENTS_DUPLICATE: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "documents_duplicate_total",
        "Documents skipped because an identical one is stored",
    )
});
/// Passages stored.
pub static PASSAGES_INGESTED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("passages_ingested_total", "Passages stored"));
/// Documents deleted.
pub static DOCUMENTS_DELETED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("documents_deleted_total", "Documents deleted"));

/// Panics caught: in request handlers (answered 500) and in ingestion jobs (the job failed).
pub static PANICS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("panics_total", "Panics caught in handlers and jobs"));

/// The registry in Prometheus' text exposition format.
pub fn render() -> String {
    // Touch every metric so that it is listed even before its first event.
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&RETRIEVE_DURATION);
    LazyLock::force(&JOBS_SUBMITTED);
    LazyLock::force(&DOCUMENTS_INGESTED);
    LazyLock::force(&DOCUMENTS_DUPLICATE);
    LazyLock::force(&PASSAGES_INGESTED);
    LazyLock::force(&DOCUMENTS_DELETED);
    LazyLock::force(&PANICS);
    let mut buf = Vec::new();
    let mut families = REGISTRY.gather();
    families.extend(engram_engine::metrics::gather());
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
