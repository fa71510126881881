//! `engram bench h2o`: H2O eviction against the full cache on the same model, prompts and tokens. First the full
//! cache decodes greedily and its log-softmax at every step is kept; then each budget decodes the same tokens
//! (teacher-forced, so both see identical inputs) and the KL divergence of its next-token distribution from the
//! full cache's is measured at every step. KV memory is the blocks in use (after each prompt's eviction, and at
//! the peak of decoding), decode speed the steps' wall time, eviction included.

use serde::Serialize;

use super::engine::BenchError;
use super::speculative::{qa_prompt_tokens, QaPrompt};
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::h2o::KvBudget;
use engram_engine::internals::h2o_decode::{decode, DecodeOptions, DecodeRun, EvictionTimes};
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaError;
use engram_engine::internals::start::load_model;
use engram_engine::internals::workload::prompt_tokens;

/// What to run.
#[derive(Debug, Clone)]
pub struct H2oBenchConfig {
    /// Model spec.
    pub model: String,
    /// Sequences decoding together.
    pub sequences: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Decode steps.
    pub steps: usize,
    /// The budgets to compare with the full cache.
    pub budgets: Vec<KvBudget>,
    /// Tokens over the budget before evicting.
    pub slack: usize,
    /// Prompt tokens per prefill pass.
    pub chunk: usize,
    /// Real QA prompts (the `/v1/qa` prompt over each question's passages) instead of `sequences` random prompts
    /// of `prompt_len` tokens.
    pub qa_prompts: Option<Vec<QaPrompt>>,
}

/// One run: the full cache or a budget.
#[derive(Debug, Clone, Serialize)]
pub struct H2oRun {
    /// `full` or the budget.
    pub label: String,
    /// KV bytes in use after the prefill (every prompt evicted to its budget).
    pub kv_bytes_after_prefill: u64,
    /// Most KV bytes in use while decoding.
    pub kv_bytes_peak: u64,
    /// Decode tokens per second (all sequences).
    pub tokens_per_s: f64,
    /// Median step, milliseconds.
    pub step_ms_median: f64,
    /// Mean KL(full ‖ this) of the next-token distributions over all steps and sequences (nats; 0 for `full`).
    pub kl_mean: f64,
    /// Largest per-step KL.
    pub kl_max: f64,
    /// Share of steps whose greedy token equals the full cache's.
    pub top1_agreement: f64,
    /// Share of sequences whose greedy tokens equal the full cache's at every step (the same answer).
    pub sequence_agreement: f64,
    /// Eviction during decoding: rounds, sequences and seconds by phase (included in the steps' time).
    pub eviction: EvictionTimes,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct H2oReport {
    /// Device.
    pub device: String,
    /// Model spec.
    pub model: String,
    /// Sequences.
    pub sequences: usize,
    /// Prompt tokens per sequence (the longest, for real prompts).
    pub prompt_len: usize,
    /// Whether the prompts are real QA prompts.
    pub real_prompts: bool,
    /// Decode steps.
    pub steps: usize,
    /// The runs, the full cache first.
    pub runs: Vec<H2oRun>,
}

/// Log-softmax of each row of `data` (`rows x vocab`).
fn log_softmax(data: &[f32], vocab: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks_exact(vocab) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        out.extend(row.iter().map(|x| x - lse));
    }
    out
}

/// KL(p ‖ q) from log-probabilities, in f64.
fn kl(log_p: &[f32], log_q: &[f32]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
        .sum::<f64>()
        .max(0.0)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    x.get(x.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark.
pub fn bench_h2o<B: Backend + DeviceProbe>(
    backend: B,
    cfg: &H2oBenchConfig,
) -> Result<H2oReport, BenchError> {
    let (model, tokenizer, _) = load_model(backend, &cfg.model)?;
    let c = model.config().clone();
    let vocab = c.vocab_size;
    let prompts = match &cfg.qa_prompts {
        Some(qa) => qa_prompt_tokens(qa, &tokenizer)?,
        None => prompt_tokens(&vec![cfg.prompt_len; cfg.sequences], vocab),
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let block_size = 16;
    let token_bytes = (2 * c.num_layers * c.num_kv_heads * c.head_dim * 2) as u64;
    let cache_cfg = KvCacheConfig {
        block_size,
        num_blocks: prompts.len() * (longest + cfg.steps + 1).div_ceil(block_size) + prompts.len(),
    };
    let mut kv = model.backend_kv(&cache_cfg)?;
    let block_bytes = token_bytes * block_size as u64;
    let options = |budget: Option<KvBudget>, steps: usize| DecodeOptions {
        steps,
        budget,
        slack: cfg.slack,
        chunk: cfg.chunk,
    };
    // Warm-up (kernel compilation, GEMM tuning) on a short run of each kind.
    let short: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| p[..p.len().min(64)].to_vec())
        .collect();
    for budget in std::iter::once(None).chain(cfg.budgets.iter().copied().map(Some)) {
        let mut cache = KvCache::new(cache_cfg);
        decode(
            &model,
            &mut kv,
            &mut cache,
            &short,
            &options(budget, 4),
            None,
            &mut |_, _| Ok(()),
        )?;
    }
    // The full cache: its tokens and log-softmax at every step.
    let mut reference: Vec<Vec<f32>> = Vec::with_capacity(cfg.steps);
    let mut cache = KvCache::new(cache_cfg);
    let b = model.backend();
    let full = decode(
        &model,
        &mut kv,
        &mut cache,
        &prompts,
        &options(None, cfg.steps),
        None,
        &mut |_, logits| {
            let (data, _, _) = b.to_host(logits).map_err(LlamaError::from)?;
            reference.push(log_softmax(&data, vocab));
            Ok(())
        },
    )?;
    let mut runs = vec![summary("full", &full, block_bytes, 0.0, 0.0, 1.0, 1.0)];
    for budget in &cfg.budgets {
        let mut cache = KvCache::new(cache_cfg);
        let (mut kl_sum, mut kl_max, mut agree, mut count) = (0.0f64, 0.0f64, 0usize, 0usize);
        let mut same_answer = vec![true; prompts.len()];
        let run = decode(
            &model,
            &mut kv,
            &mut cache,
            &prompts,
            &options(Some(*budget), cfg.steps),
            Some(&full.tokens),
            &mut |step, logits| {
                let (data, _, _) = b.to_host(logits).map_err(LlamaError::from)?;
                let ours = log_softmax(&data, vocab);
                for (s, (p, q)) in reference[step]
                    .chunks_exact(vocab)
                    .zip(ours.chunks_exact(vocab))
                    .enumerate()
                {
                    let d = kl(p, q);
                    kl_sum += d;
                    kl_max = kl_max.max(d);
                    count += 1;
                    let same = if step + 1 < cfg.steps {
                        argmax(q) as u32 == full.tokens[s][step + 1]
                    } else {
                        argmax(q) == argmax(p)
                    };
                    agree += usize::from(same);
                    same_answer[s] &= same;
                }
                Ok(())
            },
        )?;
        let label = serde_json::to_string(budget).unwrap_or_default();
        runs.push(summary(
            &label,
            &run,
            block_bytes,
            kl_sum / count.max(1) as f64,
            kl_max,
            agree as f64 / count.max(1) as f64,
            same_answer.iter().filter(|&&s| s).count() as f64 / same_answer.len().max(1) as f64,
        ));
    }
    Ok(H2oReport {
        device: model.backend().device(),
        model: cfg.model.clone(),
        sequences: prompts.len(),
        prompt_len: longest,
        real_prompts: cfg.qa_prompts.is_some(),
        steps: cfg.steps,
        runs,
    })
}

fn summary(
    label: &str,
    run: &DecodeRun,
    block_bytes: u64,
    kl_mean: f64,
    kl_max: f64,
    top1_agreement: f64,
    sequence_agreement: f64,
) -> H2oRun {
    let seconds: f64 = run.step_seconds.iter().sum();
    let tokens = run.tokens.len() * run.step_seconds.len();
    H2oRun {
        label: label.to_string(),
        kv_bytes_after_prefill: run.blocks_after_prefill as u64 * block_bytes,
        kv_bytes_peak: run.peak_decode_blocks as u64 * block_bytes,
        tokens_per_s: tokens as f64 / seconds.max(1e-12),
        step_ms_median: median(run.step_seconds.clone()) * 1e3,
        kl_mean,
        kl_max,
        top1_agreement,
        sequence_agreement,
        eviction: run.eviction.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::backend::cpu::CpuBackend;
    use engram_engine::BudgetPart;

    #[test]
    fn kl_is_zero_for_equal_distributions_and_positive_otherwise() {
        let p = log_softmax(&[1.0, 2.0, 3.0], 3);
        let q = log_softmax(&[3.0, 2.0, 1.0], 3);
        assert!(kl(&p, &p).abs() < 1e-9);
        assert!(kl(&p, &q) > 0.1);
    }

    #[test]
    fn the_benchmark_runs_on_a_tiny_model() {
        let cfg = H2oBenchConfig {
            model: "synthetic:tiny".into(),
            sequences: 2,
            prompt_len: 80,
            steps: 6,
            budgets: vec![
                KvBudget::default(),
                KvBudget {
                    heavy: BudgetPart::Tokens(100),
                    recent: BudgetPart::Tokens(100),
                },
            ],
            slack: 4,
            chunk: 32,
            qa_prompts: None,
        };
        let r = bench_h2o(CpuBackend, &cfg).unwrap();
        assert_eq!(r.runs.len(), 3);
        let (full, small, covering) = (&r.runs[0], &r.runs[1], &r.runs[2]);
        assert!(small.kv_bytes_after_prefill < full.kv_bytes_after_prefill / 2);
        assert!(small.kl_mean > 0.0);
        // A budget covering the sequence is the full cache: no divergence.
        assert!(covering.kl_max < 1e-6, "{covering:?}");
        assert_eq!(covering.top1_agreement, 1.0);
        assert_eq!(covering.sequence_agreement, 1.0);
        assert_eq!(covering.kv_bytes_peak, full.kv_bytes_peak);
    }

    #[test]
    fn real_prompts_replace_the_random_ones() {
        let passage = |i: usize| {
            (
                format!("Title {i}"),
                format!("Passage {i} says that {i} is a number. ").repeat(6),
            )
        };
        let qa = (0..3)
            .map(|q| QaPrompt {
                question: format!("Which number is question {q} about?"),
                passages: (0..4).map(|i| passage(q * 4 + i)).collect(),
            })
            .collect();
        let cfg = H2oBenchConfig {
            model: "synthetic:tiny".into(),
            sequences: 9,
            prompt_len: 9999,
            steps: 4,
            budgets: vec![KvBudget {
                heavy: BudgetPart::Tokens(16),
                recent: BudgetPart::Tokens(16),
            }],
            slack: 4,
            chunk: 64,
            qa_prompts: Some(qa),
        };
        let r = bench_h2o(CpuBackend, &cfg).unwrap();
        assert!(r.real_prompts);
        assert_eq!(r.sequences, 3);
        assert!(
            r.prompt_len > 100 && r.prompt_len < 9999,
            "{}",
            r.prompt_len
        );
        assert!(r.runs[1].kv_bytes_after_prefill < r.runs[0].kv_bytes_after_prefill);
    }
}
