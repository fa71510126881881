//! `engram bench prefill` and `engram bench decode`: the engine on a (random-weight) model, on the prompts the
//! Hugging Face baseline (`benches/baselines/hf_llama8b.py`) uses, timed after warm-up with the device
//! synchronised around each run (median of the repetitions), with model-FLOPs utilisation and memory-bandwidth
//! rooflines measured in the same process.

use std::time::Instant;

use serde::Serialize;

use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::{Backend, BackendError};
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::{LlamaError, LlamaModel, StepBatch};
use engram_engine::internals::prefill::{push_chunk, PrefillError};
use engram_engine::internals::prepack::pack_first_fit_decreasing;
use engram_engine::internals::workload::{prompt_lengths, prompt_tokens};

/// The ≈ bf16 matrix rate cuBLAS reaches on a large product on an H200 (the MFU reference), FLOP/s.
pub const H200_BF16_REFERENCE: f64 = 790e12;

/// Errors of a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] LlamaError),
    /// Prefill bookkeeping failed.
    #[error(transparent)]
    Prefill(#[from] PrefillError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device or a model could not be opened.
    #[error(transparent)]
    Start(#[from] engram_engine::StartError),
    /// A generation request was refused.
    #[error(transparent)]
    Request(#[from] engram_engine::EngineError),
    /// An engine or proposer could not be set up, or a request failed.
    #[error("{0}")]
    Setup(String),
}

/// One prefill configuration's result.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillRun {
    /// What was run.
    pub label: String,
    /// Prompts.
    pub prompts: usize,
    /// Real tokens.
    pub tokens: usize,
    /// Forward passes per run.
    pub passes: usize,
    /// Median seconds per run.
    pub seconds: f64,
    /// Every repetition's seconds.
    pub all_seconds: Vec<f64>,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Model FLOPs per run (2 · params · tokens, without the embedding table, plus causal attention).
    pub flops: f64,
    /// Achieved TFLOP/s.
    pub tflops: f64,
    /// FLOPs utilisation against the measured GEMM rate of this run.
    pub mfu_measured: Option<f64>,
    /// FLOPs utilisation against [`H200_BF16_REFERENCE`].
    pub mfu_reference: f64,
    /// Peak device bytes during the runs (weights and KV cache included), where tracked.
    pub peak_bytes: Option<u64>,
}

/// `engram bench prefill`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    /// Device.
    pub device: String,
    /// Model spec.
    pub model: String,
    /// Parameters.
    pub params: u64,
    /// Measured bf16 GEMM FLOP/s (8192³), where measured.
    pub gemm_flops: Option<f64>,
    /// Measured device copy bandwidth, bytes/s (read + write), where measured.
    pub copy_bytes_per_s: Option<f64>,
    /// The 64 benchmark prompt lengths.
    pub prompt_lengths: Vec<usize>,
    /// The runs.
    pub runs: Vec<PrefillRun>,
}

/// FLOPs of prefilling `lens` (each its own causal sequence): linear layers over every token (the LM head only
/// over one row per prompt) and attention scores and values over the causal triangle.
pub fn prefill_flops(c: &engram_engine::internals::model::ModelConfig, lens: &[usize]) -> f64 {
    let tokens: f64 = lens.iter().sum::<usize>() as f64;
    let embed = (c.vocab_size * c.hidden_size) as f64;
    let head = if c.tie_word_embeddings { 0.0 } else { embed };
    let body = c.param_count() as f64 - embed - head;
    let tri: f64 = lens.iter().map(|&l| (l * (l + 1) / 2) as f64).sum();
    let attention = 4.0 * (c.num_heads * c.head_dim) as f64 * tri * c.num_layers as f64;
    // The LM head (`embed` elements, tied or not) runs on one row per prompt.
    2.0 * body * tokens + 2.0 * embed * lens.len() as f64 + attention
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// KV storage and cache bookkeeping sized for `tokens` tokens spread over `seqs` sequences.
fn cache_for<B: Backend>(
    model: &LlamaModel<B>,
    tokens: usize,
    seqs: usize,
    block_size: usize,
) -> Result<(B::Kv, KvCacheConfig), BenchError> {
    let config = KvCacheConfig {
        block_size,
        num_blocks: tokens.div_ceil(block_size) + seqs + 1,
    };
    Ok((model.backend_kv(&config)?, config))
}

/// Prepacked prefill of `prompts` into rows of at most `capacity` tokens, one varlen pass per row; returns the
/// number of passes. Next tokens are picked on the device (only their ids are copied back).
pub fn run_prefill<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache_config: KvCacheConfig,
    prompts: &[Vec<u32>],
    capacity: Option<usize>,
) -> Result<(usize, Vec<u32>), BenchError> {
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let packing = pack_first_fit_decreasing(&lengths, capacity).map_err(PrefillError::from)?;
    let mut cache = KvCache::new(cache_config);
    let mut next = vec![0; prompts.len()];
    for row in &packing.rows {
        let mut batch = StepBatch::default();
        for &i in &row.prompts {
            cache
                .admit(i as u64, &prompts[i])
                .map_err(PrefillError::from)?;
            push_chunk(&mut batch, &cache, i as u64, &prompts[i], 0, true)?;
        }
        let ids = model.forward_select(kv, &batch, cache_config.block_size, 0.0, 0)?;
        for (&i, id) in row.prompts.iter().zip(ids) {
            next[i] = id;
        }
    }
    Ok((packing.rows.len(), next))
}

/// Times prefill configurations on the benchmark prompts and on long prompts.
pub fn bench_prefill<B: Backend + DeviceProbe>(
    model: &LlamaModel<B>,
    spec: &str,
    reps: usize,
) -> Result<PrefillReport, BenchError> {
    let c = model.config().clone();
    let rooflines = model.backend().rooflines()?;
    let lens = prompt_lengths(64, 16, 2048, 42);
    let prompts = prompt_tokens(&lens, c.vocab_size);
    let longest = lens.iter().copied().max().unwrap_or(1);
    let total: usize = lens.iter().sum();
    let long_1k = prompt_tokens(&[1024; 16], c.vocab_size);
    let long_2k = prompt_tokens(&[2048; 8], c.vocab_size);
    type Config<'a> = (String, &'a [Vec<u32>], Option<usize>);
    let configs: Vec<Config> = vec![
        (
            format!("64 prompts, prepacked rows of {longest} tokens (the paper's capacity)"),
            &prompts,
            Some(longest),
        ),
        (
            format!("64 prompts, one varlen pass of {total} tokens"),
            &prompts,
            Some(total),
        ),
        (
            "16 prompts of 1,024 tokens, one pass".into(),
            &long_1k,
            Some(16 * 1024),
        ),
        (
            "8 prompts of 2,048 tokens, one pass".into(),
            &long_2k,
            Some(8 * 2048),
        ),
    ];
    let mut runs = Vec::new();
    for (label, set, capacity) in configs {
        let set_lens: Vec<usize> = set.iter().map(Vec::len).collect();
        let tokens: usize = set_lens.iter().sum();
        let (mut kv, cache_config) = cache_for(model, tokens, set.len(), 16)?;
        run_prefill(model, &mut kv, cache_config, set, capacity)?; // warm-up (plans, pool)
        model.backend().synchronize()?;
        model.backend().reset_peak();
        let mut times = Vec::with_capacity(reps);
        let mut passes = 0;
        for _ in 0..reps.max(1) {
            model.backend().synchronize()?;
            let t = Instant::now();
            passes = run_prefill(model, &mut kv, cache_config, set, capacity)?.0;
            model.backend().synchronize()?;
            times.push(t.elapsed().as_secs_f64());
        }
        let all = times.clone();
        let seconds = median(&mut times);
        let flops = prefill_flops(&c, &set_lens);
        runs.push(PrefillRun {
            label,
            prompts: set.len(),
            tokens,
            passes,
            seconds,
            all_seconds: all,
            tokens_per_s: tokens as f64 / seconds,
            flops,
            tflops: flops / seconds / 1e12,
            mfu_measured: rooflines.map(|(g, _)| flops / seconds / g),
            mfu_reference: flops / seconds / H200_BF16_REFERENCE,
            peak_bytes: model.backend().peak_bytes(),
        });
        drop(kv);
    }
    Ok(PrefillReport {
        device: model.backend().device(),
        model: spec.to_string(),
        params: c.param_count(),
        gemm_flops: rooflines.map(|r| r.0),
        copy_bytes_per_s: rooflines.map(|r| r.1),
        prompt_lengths: lens,
        runs,
    })
}

/// One decode batch's result.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeRun {
    /// Sequences decoding together.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// New tokens per sequence.
    pub steps: usize,
    /// Seconds of the prefill (prepacked, one pass).
    pub prefill_seconds: f64,
    /// Seconds of the decode steps.
    pub decode_seconds: f64,
    /// Decode tokens per second (batch · steps / decode seconds).
    pub tokens_per_s: f64,
    /// Tokens per second over prefill and decode (comparable to `generate`, which includes its prefill).
    pub end_to_end_tokens_per_s: f64,
    /// Median step milliseconds.
    pub step_ms_median: f64,
    /// Median host milliseconds to enqueue a step's forward pass (before waiting for the device): when close to
    /// the step time, the host is the bottleneck.
    pub enqueue_ms_median: f64,
    /// Device milliseconds per step by operation (profiled run of 16 steps), largest first; empty unless asked.
    pub profile: Vec<ProfileEntry>,
    /// Mean bytes a step must read (weights without the embedding table, plus the KV cache).
    pub bytes_per_step: f64,
    /// Tokens per second at the measured copy bandwidth with those bytes (the roofline), where measured.
    pub roofline_tokens_per_s: Option<f64>,
    /// tokens_per_s / roofline_tokens_per_s.
    pub roofline_fraction: Option<f64>,
}

/// One operation's share of a decode step.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileEntry {
    /// Operation (and shape, for products).
    pub op: String,
    /// Device milliseconds per step.
    pub ms_per_step: f64,
    /// Calls per step.
    pub calls_per_step: f64,
}

/// `engram bench decode`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    /// Device.
    pub device: String,
    /// Model spec.
    pub model: String,
    /// Measured copy bandwidth (bytes/s), where measured.
    pub copy_bytes_per_s: Option<f64>,
    /// The runs.
    pub runs: Vec<DecodeRun>,
}

/// Greedy decoding of `steps` tokens for each batch size, after a prefill of `prompt_len`-token prompts (the
/// baseline's: the benchmark prompts cut or padded with token 5 to `prompt_len`).
pub fn bench_decode<B: Backend + DeviceProbe>(
    model: &LlamaModel<B>,
    spec: &str,
    batches: &[usize],
    prompt_len: usize,
    steps: usize,
    profile: bool,
) -> Result<DecodeReport, BenchError> {
    let c = model.config().clone();
    let rooflines = model.backend().rooflines()?;
    let base = prompt_tokens(&prompt_lengths(64, 16, 2048, 42), c.vocab_size);
    let weight_bytes = 2.0 * (c.param_count() - (c.vocab_size * c.hidden_size) as u64) as f64
        + if c.tie_word_embeddings {
            2.0 * (c.vocab_size * c.hidden_size) as f64
        } else {
            0.0
        };
    let kv_token_bytes = (c.num_layers * 2 * c.num_kv_heads * c.head_dim * 2) as f64;
    let mut runs = Vec::new();
    for &batch in batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| {
                let mut p: Vec<u32> = base[i % base.len()]
                    .iter()
                    .copied()
                    .take(prompt_len)
                    .collect();
                p.resize(prompt_len, 5);
                p
            })
            .collect();
        let (mut kv, cache_config) = cache_for(model, batch * (prompt_len + steps + 1), batch, 16)?;
        // Warm-up: a short run with the same shapes.
        decode_once(model, &mut kv, cache_config, &prompts, steps.min(4))?;
        let (prefill_seconds, step_times, mut enqueue) =
            decode_once(model, &mut kv, cache_config, &prompts, steps)?;
        let decode_seconds: f64 = step_times.iter().sum();
        let mut st = step_times.clone();
        let step_ms_median = median(&mut st) * 1e3;
        let enqueue_ms_median = median(&mut enqueue) * 1e3;
        let mut profile_entries = Vec::new();
        if profile {
            const PROFILED: usize = 16;
            let probe = model.backend();
            probe.set_profiling(true);
            let profiled = decode_once(model, &mut kv, cache_config, &prompts, PROFILED);
            let spans = probe.take_profile();
            probe.set_profiling(false);
            profiled?;
            // The profiled run's prefill is in the spans too: keep the decode steps' share by dividing the
            // per-call averages of decode-shaped operations; prefill-only shapes are listed separately.
            for (op, ms, calls) in spans? {
                profile_entries.push(ProfileEntry {
                    op,
                    ms_per_step: ms / PROFILED as f64,
                    calls_per_step: calls as f64 / PROFILED as f64,
                });
            }
        }
        let mean_ctx = prompt_len as f64 + (steps as f64 + 1.0) / 2.0;
        let bytes_per_step = weight_bytes + batch as f64 * mean_ctx * kv_token_bytes;
        let tokens_per_s = (batch * steps) as f64 / decode_seconds;
        let roofline = rooflines.map(|(_, bw)| batch as f64 / (bytes_per_step / bw));
        runs.push(DecodeRun {
            batch,
            prompt_len,
            steps,
            prefill_seconds,
            decode_seconds,
            tokens_per_s,
            end_to_end_tokens_per_s: (batch * steps) as f64 / (prefill_seconds + decode_seconds),
            step_ms_median,
            enqueue_ms_median,
            profile: profile_entries,
            bytes_per_step,
            roofline_tokens_per_s: roofline,
            roofline_fraction: roofline.map(|r| tokens_per_s / r),
        });
    }
    Ok(DecodeReport {
        device: model.backend().device(),
        model: spec.to_string(),
        copy_bytes_per_s: rooflines.map(|r| r.1),
        runs,
    })
}

/// Prefills `prompts` in one pass, then decodes `steps` greedy tokens for all; returns the prefill seconds, each
/// step's seconds and each step's host enqueue seconds.
fn decode_once<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache_config: KvCacheConfig,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<(f64, Vec<f64>, Vec<f64>), BenchError> {
    model.backend().synchronize()?;
    let t = Instant::now();
    let mut cache = KvCache::new(cache_config);
    let mut batch = StepBatch::default();
    for (i, p) in prompts.iter().enumerate() {
        cache.admit(i as u64, p).map_err(PrefillError::from)?;
        push_chunk(&mut batch, &cache, i as u64, p, 0, true)?;
    }
    let mut next = model.forward_select(kv, &batch, cache_config.block_size, 0.0, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    let mut enqueue = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        let mut batch = StepBatch::default();
        for (i, &token) in next.iter().enumerate() {
            let seq = i as u64;
            let start = cache.table(seq).map_or(0, |t| t.len);
            cache.append_slots(seq, 1).map_err(PrefillError::from)?;
            push_chunk(&mut batch, &cache, seq, &[token], start, true)?;
        }
        let logits = model.forward_logits(kv, &batch, cache_config.block_size)?;
        enqueue.push(t.elapsed().as_secs_f64());
        next = match logits {
            Some(l) => model.backend().select_tokens(&l, 0.0, 0)?,
            None => Vec::new(),
        };
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((prefill, times, enqueue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::backend::cpu::CpuBackend;
    use engram_engine::internals::model::synthetic::synthetic_config;
    use engram_engine::internals::start::load_model;

    #[test]
    fn prompt_lengths_match_the_python_baseline() {
        // The first lengths the Python `lengths(64, 16, 2048, 42)` gives; total 6,264 real tokens.
        let lens = prompt_lengths(64, 16, 2048, 42);
        assert_eq!(lens.len(), 64);
        assert_eq!(lens.iter().sum::<usize>(), 6264);
        assert!(lens.iter().all(|&l| (16..=2048).contains(&l)));
        let p = prompt_tokens(&lens[..2], 128256);
        assert_eq!(p[1][1], (7919 + 104729 + 5) as u32);
    }

    #[test]
    fn prefill_flops_of_llama_8b_are_about_two_params_per_token() {
        let c = synthetic_config("llama-3-8b").unwrap();
        let f = prefill_flops(&c, &[1]);
        let body = c.param_count() as f64 - 2.0 * (c.vocab_size * c.hidden_size) as f64;
        assert!(
            (f - 2.0 * body - 2.0 * (c.vocab_size * c.hidden_size) as f64 - 4.0 * 4096.0 * 32.0)
                .abs()
                < 1.0
        );
    }

    #[test]
    fn cpu_prefill_and_decode_benches_run_on_the_tiny_model() {
        let (model, _, _) = load_model(CpuBackend, "synthetic:tiny").unwrap();
        let d = bench_decode(&model, "synthetic:tiny", &[1, 3], 8, 4, true).unwrap();
        assert_eq!(d.runs.len(), 2);
        assert!(d
            .runs
            .iter()
            .all(|r| r.tokens_per_s > 0.0 && r.roofline_fraction.is_none()));
        let prompts = prompt_tokens(&[5, 9, 3], 512);
        let (mut kv, cfg) = cache_for(&model, 17, 3, 4).unwrap();
        let (passes, next) = run_prefill(&model, &mut kv, cfg, &prompts, Some(9)).unwrap();
        assert_eq!(passes, 2);
        assert_eq!(next.len(), 3);
    }
}
