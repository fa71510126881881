//! The engine's Prometheus metrics (generation latency, queue, KV cache, speculation, H2O), in a registry of its
//! own that the server gathers into `/metrics` next to its HTTP and ingestion metrics ([`gather`]).

use prometheus::proto::MetricFamily;
use prometheus::{
    register_histogram_with_registry, register_int_counter_with_registry,
    register_int_gauge_with_registry, Histogram, IntCounter, IntGauge, Registry,
};
use std::sync::LazyLock;

/// The registry of the engine's metrics (names prefixed `engram_`, like the server's).
static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::new_custom(Some("engram".into()), None).expect("valid prefix"));

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter_with_registry!(name, help, REGISTRY).expect("metric registers once")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge_with_registry!(name, help, REGISTRY).expect("metric registers once")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register_histogram_with_registry!(name, help, buckets, REGISTRY).expect("metric registers once")
}

/// Seconds from a request's arrival to its first token.
pub static TIME_TO_FIRST_TOKEN: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "generation_time_to_first_token_seconds",
        "Seconds from a generation request's arrival to its first token",
        vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
});
/// Seconds between consecutive tokens of a request.
pub static INTER_TOKEN_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "generation_inter_token_latency_seconds",
        "Seconds between consecutive tokens of a generation request",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
    )
});
/// Requests waiting for admission.
pub static QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "generation_queue_depth",
        "Generation requests waiting for KV cache admission",
    )
});
/// KV cache blocks in use.
pub static KV_BLOCKS_USED: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("generation_kv_blocks_used", "KV cache blocks in use"));
/// KV cache blocks in all.
pub static KV_BLOCKS_TOTAL: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("generation_kv_blocks_total", "KV cache blocks in all"));
/// Tokens generated.
pub static TOKENS_GENERATED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("generation_tokens_total", "Tokens generated"));
/// H2O: cached tokens evicted (per KV head, every head evicts as many).
pub static KV_EVICTED_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "kv_evicted_tokens_total",
        "Cached tokens evicted by H2O budgets (kv_budget)",
    )
});
/// Sequences sent back to be recomputed because the KV cache could not hold their next token.
pub static PREEMPTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "generation_preemptions_total",
        "Sequences preempted (KV released, recomputed later) because the KV cache was full",
    )
});
/// Target-model passes that produced tokens, counted per sequence (tokens per target step =
/// `generation_tokens_total` / this; above 1 with speculative decoding).
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

/// Every engine metric, each listed even before its first event.
pub fn gather() -> Vec<MetricFamily> {
    LazyLock::force(&TIME_TO_FIRST_TOKEN);
    LazyLock::force(&INTER_TOKEN_LATENCY);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&KV_BLOCKS_USED);
    LazyLock::force(&KV_BLOCKS_TOTAL);
    LazyLock::force(&TOKENS_GENERATED);
    LazyLock::force(&KV_EVICTED_TOKENS);
    LazyLock::force(&PREEMPTIONS);
    LazyLock::force(&TARGET_STEPS);
    LazyLock::force(&SPECULATIVE_PROPOSED);
    LazyLock::force(&SPECULATIVE_ACCEPTED);
    REGISTRY.gather()
}
