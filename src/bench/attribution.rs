//! `engram bench attribution`: TextGenSHAP's passage game on a model, timed three ways in one process.
//!
//! The prompt is an instruction and question (`prefix_tokens`), `passages` passages of `passage_tokens` tokens,
//! an answer cue (`suffix_tokens`) and an answer of `answer_tokens` tokens, all random token ids with a fixed seed
//! (timing does not depend on what the tokens say); every passage count is measured with every answer length. The Shapley values come from permutation sampling,
//! `permutations` permutations in antithetic pairs, each distinct coalition valued once. Runs:
//! - `separate`: each passage encoded once ([`engram_engine::internals::score_segments`]); a coalition costs its tail.
//! - `joint` (optional: it is slow from 10 passages on): every coalition prompt written out, prepacked into passes
//!   with the shared prefix computed once ([`engram_engine::internals::score`]), what `/v1/qa` does with
//!   `passage_encoding: "joint"`.
//! - `one by one`: the baseline the issue names, each coalition prompt alone in its own pass, no prefix reuse, no
//!   packing. It is timed on `baseline_sample` of the same coalitions (spread over the list) and scaled to all of
//!   them: the report says so.
//!
//! Each run is preceded by an untimed pass of the same shapes (kernel compilation, GEMM tuning).

use std::time::Instant;

use serde::Serialize;

use super::engine::BenchError;
use engram::attribution::logprob::{LogProbGame, Scorer, SeparatePrompt, Value};
use engram::attribution::shapley::{permutation_shapley, Coalition, Game};
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::score::score_continuations;
use engram_engine::internals::score_segments::score_segmented;
use engram_engine::internals::start::load_model;
use engram_engine::{Scores, SegmentedScoring};

/// Coalitions per scoring call in the joint run, as `/v1/qa` does ([`crate::qa::generated`]).
const JOINT_COALITIONS_PER_CALL: usize = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct AttributionBenchConfig {
    /// Model spec.
    pub model: String,
    /// Passage counts, one measurement each.
    pub passages: Vec<usize>,
    /// Tokens per passage.
    pub passage_tokens: usize,
    /// Tokens before the passages (instruction and question).
    pub prefix_tokens: usize,
    /// Tokens between the passages and the answer.
    pub suffix_tokens: usize,
    /// Answer lengths in tokens, one measurement each (for every passage count).
    pub answer_tokens: Vec<usize>,
    /// Permutations sampled (in antithetic pairs).
    pub permutations: usize,
    /// Coalition prompts timed one by one for the baseline.
    pub baseline_sample: usize,
    /// Also time the joint (prepacked, shared-prefix) mode.
    pub joint: bool,
    /// Tokens per forward pass.
    pub capacity: usize,
    /// KV cache size in MiB.
    pub kv_cache_mib: usize,
}

/// One timed way of valuing the coalitions.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionRun {
    /// `separate`, `joint` or `one by one`.
    pub label: String,
    /// Seconds for all the coalitions (for `one by one`: the sample's time scaled to all of them).
    pub seconds: f64,
    /// Forward passes (for `one by one`: one per coalition).
    pub forward_passes: usize,
    /// Tokens computed (for `one by one`: every prompt's tokens).
    pub computed_tokens: usize,
    /// Coalitions actually timed.
    pub timed_coalitions: usize,
    /// Seconds actually measured.
    pub measured_seconds: f64,
}

/// One passage count's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionCase {
    /// Passages (players).
    pub passages: usize,
    /// Answer tokens.
    pub answer_tokens: usize,
    /// Distinct coalitions the estimator valued.
    pub coalitions: usize,
    /// Tokens of one full prompt (all passages and the answer).
    pub full_prompt_tokens: usize,
    /// The runs.
    pub runs: Vec<AttributionRun>,
    /// `one by one` seconds over `separate` seconds.
    pub speedup_vs_one_by_one: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionReport {
    /// Device.
    pub device: String,
    /// Model spec.
    pub model: String,
    /// Tokens per passage.
    pub passage_tokens: usize,
    /// Permutations.
    pub permutations: usize,
    /// The cases.
    pub cases: Vec<AttributionCase>,
}

/// Random token ids below `vocab` (xorshift, fixed seed).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab.min(u32::MAX as usize) as u64) as u32
        })
        .collect()
}

/// A game that remembers which coalitions it was asked for.
struct Recording<G> {
    inner: G,
    asked: Vec<Coalition>,
}

impl<G: Game> Game for Recording<G> {
    fn players(&self) -> usize {
        self.inner.players()
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        self.asked.extend_from_slice(coalitions);
        self.inner.values(coalitions)
    }
}

/// A [`Scorer`] over a model held directly, with a KV cache of its own (used for the call's sequences only).
pub struct ModelScorer<'m, B: Backend> {
    /// The model.
    pub model: &'m LlamaModel<B>,
    /// Its KV cache storage.
    pub kv: &'m mut B::Kv,
    /// The cache's block tables.
    pub cache: &'m mut KvCache,
    /// Tokens per forward pass (at least the longest pair).
    pub capacity: usize,
}

impl<B: Backend> Scorer for ModelScorer<'_, B> {
    fn score(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Scores, String> {
        score_continuations(self.model, self.kv, self.cache, pairs, self.capacity, 0)
            .map_err(|e| e.to_string())
    }

    fn score_segmented(&mut self, request: SegmentedScoring) -> Result<Scores, String> {
        score_segmented(self.model, self.kv, self.cache, &request, self.capacity, 0)
            .map_err(|e| e.to_string())
    }
}

/// Runs the benchmark.
pub fn bench_attribution<B: Backend + DeviceProbe>(
    backend: B,
    cfg: &AttributionBenchConfig,
) -> Result<AttributionReport, BenchError> {
    let (model, _, _) = load_model(backend, &cfg.model)?;
    let c = model.config().clone();
    let token_bytes = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2;
    let block_size = 16;
    let cache_cfg = KvCacheConfig {
        block_size,
        num_blocks: (cfg.kv_cache_mib << 20) / (token_bytes * block_size),
    };
    let mut kv = model.backend_kv(&cache_cfg)?;
    let mut cache = KvCache::new(cache_cfg);
    let vocab = c.vocab_size;
    let mut cases = Vec::new();
    let shapes = cfg
        .passages
        .iter()
        .flat_map(|&n| cfg.answer_tokens.iter().map(move |&a| (n, a)));
    for (n, answer_len) in shapes {
        let prompt = SeparatePrompt {
            prefix: tokens(cfg.prefix_tokens, vocab, 1),
            passages: (0..n)
                .map(|i| tokens(cfg.passage_tokens, vocab, 100 + i as u64))
                .collect(),
            suffix: tokens(cfg.suffix_tokens, vocab, 2),
        };
        let answer = tokens(answer_len, vocab, 3);
        let pairs = cfg.permutations.div_ceil(2);
        let mut env = Env {
            model: &model,
            kv: &mut kv,
            cache: &mut cache,
            capacity: cfg.capacity,
        };
        // Warm-up with the same shapes, then the timed run.
        env.separate(&prompt, &answer, pairs)?;
        let (separate, asked) = env.separate(&prompt, &answer, pairs)?;
        let mut runs = vec![separate];
        if cfg.joint {
            env.joint(&prompt, &answer, &asked[..asked.len().min(16)])?;
            runs.push(env.joint(&prompt, &answer, &asked)?);
        }
        let step = (asked.len() / cfg.baseline_sample.max(1)).max(1);
        let sample: Vec<Coalition> = asked.iter().step_by(step).copied().collect();
        env.one_by_one(&prompt, &answer, &sample[..sample.len().min(2)], 0)?;
        runs.push(env.one_by_one(&prompt, &answer, &sample, asked.len())?);
        let speedup = runs[runs.len() - 1].seconds / runs[0].seconds;
        cases.push(AttributionCase {
            passages: n,
            answer_tokens: answer_len,
            coalitions: asked.len(),
            full_prompt_tokens: joint_prompt(&prompt, engram::attribution::all_players(n)).len()
                + answer.len(),
            runs,
            speedup_vs_one_by_one: speedup,
        });
    }
    Ok(AttributionReport {
        device: model.backend().device(),
        model: cfg.model.clone(),
        passage_tokens: cfg.passage_tokens,
        permutations: cfg.permutations.div_ceil(2) * 2,
        cases,
    })
}

/// The prompt of a coalition written out: prefix, its passages in order, suffix.
fn joint_prompt(p: &SeparatePrompt, coalition: Coalition) -> Vec<u32> {
    let mut out = p.prefix.clone();
    for (i, passage) in p.passages.iter().enumerate() {
        if coalition & (1 << i) != 0 {
            out.extend_from_slice(passage);
        }
    }
    out.extend_from_slice(&p.suffix);
    out
}

/// The model and its cache, borrowed for the runs.
struct Env<'m, B: Backend> {
    model: &'m LlamaModel<B>,
    kv: &'m mut B::Kv,
    cache: &'m mut KvCache,
    capacity: usize,
}

impl<B: Backend> Env<'_, B> {
    fn scorer(&mut self) -> ModelScorer<'_, B> {
        ModelScorer {
            model: self.model,
            kv: self.kv,
            cache: self.cache,
            capacity: self.capacity,
        }
    }

    /// Permutation Shapley with each passage encoded once; also returns the coalitions valued.
    fn separate(
        &mut self,
        prompt: &SeparatePrompt,
        answer: &[u32],
        pairs: usize,
    ) -> Result<(AttributionRun, Vec<Coalition>), BenchError> {
        let t = Instant::now();
        let game = LogProbGame::separate(
            self.scorer(),
            prompt.clone(),
            answer.to_vec(),
            Value::AnswerLogProb,
        );
        let mut game = Recording {
            inner: game,
            asked: Vec::new(),
        };
        permutation_shapley(&mut game, pairs, 0).map_err(|e| BenchError::Setup(e.to_string()))?;
        let seconds = t.elapsed().as_secs_f64();
        let run = AttributionRun {
            label: "separate".into(),
            seconds,
            forward_passes: game.inner.passes,
            computed_tokens: game.inner.computed_tokens,
            timed_coalitions: game.asked.len(),
            measured_seconds: seconds,
        };
        Ok((run, game.asked))
    }

    /// The same coalitions' prompts written out, prepacked, the shared prefix computed once, in calls of
    /// [`JOINT_COALITIONS_PER_CALL`] coalitions (each call's prompts stay cached until it ends).
    fn joint(
        &mut self,
        prompt: &SeparatePrompt,
        answer: &[u32],
        coalitions: &[Coalition],
    ) -> Result<AttributionRun, BenchError> {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = coalitions
            .iter()
            .map(|&c| (joint_prompt(prompt, c), answer.to_vec()))
            .collect();
        let (mut passes, mut computed) = (0, 0);
        let t = Instant::now();
        for chunk in pairs.chunks(JOINT_COALITIONS_PER_CALL) {
            let s = score_continuations(self.model, self.kv, self.cache, chunk, self.capacity, 0)?;
            passes += s.passes;
            computed += s.computed_tokens;
        }
        let seconds = t.elapsed().as_secs_f64();
        Ok(AttributionRun {
            label: "joint".into(),
            seconds,
            forward_passes: passes,
            computed_tokens: computed,
            timed_coalitions: coalitions.len(),
            measured_seconds: seconds,
        })
    }

    /// Each coalition prompt alone (a pass of its own, nothing reused), timed on `sample` and scaled to `all`
    /// coalitions (`all` = 0: the sample alone, for warming up).
    fn one_by_one(
        &mut self,
        prompt: &SeparatePrompt,
        answer: &[u32],
        sample: &[Coalition],
        all: usize,
    ) -> Result<AttributionRun, BenchError> {
        let all = all.max(sample.len());
        let mut tokens_per = 0;
        let t = Instant::now();
        for &c in sample {
            let pair = [(joint_prompt(prompt, c), answer.to_vec())];
            let capacity = pair[0].0.len() + answer.len();
            let s = score_continuations(self.model, self.kv, self.cache, &pair, capacity, 0)?;
            tokens_per += s.computed_tokens;
        }
        let measured = t.elapsed().as_secs_f64();
        let scale = all as f64 / sample.len().max(1) as f64;
        Ok(AttributionRun {
            label: "one by one".into(),
            seconds: measured * scale,
            forward_passes: all,
            computed_tokens: (tokens_per as f64 * scale).round() as usize,
            timed_coalitions: sample.len(),
            measured_seconds: measured,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::backend::cpu::CpuBackend;

    #[test]
    fn the_benchmark_runs_on_a_tiny_model() {
        let cfg = AttributionBenchConfig {
            model: "synthetic:tiny".into(),
            passages: vec![4],
            passage_tokens: 12,
            prefix_tokens: 10,
            suffix_tokens: 3,
            answer_tokens: vec![4],
            permutations: 8,
            baseline_sample: 5,
            joint: true,
            capacity: 256,
            kv_cache_mib: 4,
        };
        let r = bench_attribution(CpuBackend, &cfg).unwrap();
        let case = &r.cases[0];
        assert_eq!(case.full_prompt_tokens, 10 + 4 * 12 + 3 + 4);
        assert!(case.coalitions >= 2 && case.coalitions <= 16);
        let labels: Vec<&str> = case.runs.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["separate", "joint", "one by one"]);
        // One pass per coalition for the baseline; the separate run computes each passage once.
        assert_eq!(case.runs[2].forward_passes, case.coalitions);
        assert!(case.runs[0].computed_tokens < case.runs[1].computed_tokens);
        assert!(case.runs[1].computed_tokens < case.runs[2].computed_tokens);
        assert!(case.runs.iter().all(|r| r.seconds > 0.0));
    }
}
