//! Prometheus metrics, exposed at `/metrics`.

use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_with_registry, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Registry, TextEncoder,
};
use std::sync::LazyLock;

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

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge_with_registry!(name, help, REGISTRY).expect("metric registers once")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register_histogram_with_registry!(name, help, buckets, REGISTRY).expect("metric registers once")
}

/// Generation: seconds from a request's arrival to its first token.
pub static TIME_TO_FIRST_TOKEN: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "generation_time_to_first_token_seconds",
        "Seconds from a generation request's arrival to its first token",
        vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
});
/// Generation: seconds between consecutive tokens of a request.
pub static INTER_TOKEN_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "generation_inter_token_latency_seconds",
        "Seconds between consecutive tokens of a generation request",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
    )
});
/// Generation: requests waiting for admission.
pub static QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "generation_queue_depth",
        "Generation requests waiting for KV cache admission",
    )
});
/// Generation: KV cache blocks in use.
pub static KV_BLOCKS_USED: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("generation_kv_blocks_used", "KV cache blocks in use"));
/// Generation: KV cache blocks in all.
pub static KV_BLOCKS_TOTAL: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("generation_kv_blocks_total", "KV cache blocks in all"));
/// Generation: tokens generated.
pub static TOKENS_GENERATED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("generation_tokens_total", "Tokens generated"));

/// Generation: forward passes of the target model that produced tokens, counted per sequence (tokens per target
/// step = `generation_tokens_total` / this; above 1 with speculative decoding).
/// H2O: cached tokens evicted (per KV head, every head evicts as many).
pub static KV_EVICTED_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "kv_evicted_tokens_total",
        "Cached tokens evicted by H2O budgets (kv_budget)",
    )
});
/// Target-model passes that produced tokens, per sequence.
pub static TARGET_STEPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "generation_target_steps_total",
        "Target-model passes that produced tokens, per sequence",
    )
});
/// Speculative decoding: tokens proposed.
pub static SPECULATIVE_PROPOSED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "generation_speculative_proposed_tokens_total",
        "Tokens proposed by speculative decoding",
    )
});
/// Speculative decoding: proposed tokens the target accepted (acceptance rate = this / proposed).
pub static SPECULATIVE_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "generation_speculative_accepted_tokens_total",
        "Proposed tokens the target model accepted",
    )
});

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
    LazyLock::force(&TIME_TO_FIRST_TOKEN);
    LazyLock::force(&INTER_TOKEN_LATENCY);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&KV_BLOCKS_USED);
    LazyLock::force(&KV_BLOCKS_TOTAL);
    LazyLock::force(&TOKENS_GENERATED);
    LazyLock::force(&TARGET_STEPS);
    LazyLock::force(&SPECULATIVE_PROPOSED);
    LazyLock::force(&SPECULATIVE_ACCEPTED);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
