//! The model-backed game of TextGenSHAP: players are passages, and the value of a coalition is the
//! log-probability the model gives a fixed answer when the prompt holds only those passages (teacher-forced, one
//! prefill per coalition, no decoding), or, with [`Value::AnswerKept`], whether that log-probability stays within
//! a margin of the full prompt's (a smooth stand-in for the paper's answer-change indicator).
//! Coalition prompts are scored by a [`Scorer`]: a model held directly ([`ModelScorer`]) or the running engine
//! (`crate::qa::generated::EngineScorer`), both in prepacked batches with shared prefixes computed once
//! ([`crate::engine::score`]).

use super::shapley::{all_players, Coalition, Game};
use crate::engine::backend::Backend;
use crate::engine::kv_cache::KvCache;
use crate::engine::llama::LlamaModel;
use crate::engine::score::{score_continuations, Scores};

/// What a coalition is worth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Σ log p(answer token | prompt, earlier answer tokens).
    AnswerLogProb,
    /// 1 when the answer's log-probability is within `margin` nats of the full prompt's, else 0.
    AnswerKept {
        /// Allowed drop in nats.
        margin: f64,
    },
}

/// Builds the prompt tokens for a coalition (bit `i`: passage `i` is in).
pub type PromptBuilder<'a> = Box<dyn Fn(Coalition) -> Result<Vec<u32>, String> + Send + 'a>;

/// Scores (context, continuation) pairs: the teacher-forced log-probability of each continuation.
pub trait Scorer {
    /// Scores `pairs`, in order.
    fn score(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Scores, String>;
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
}

/// A passage-attribution game over one scorer, question and answer.
pub struct LogProbGame<'a, S: Scorer> {
    scorer: S,
    players: usize,
    prompt: PromptBuilder<'a>,
    answer: Vec<u32>,
    value: Value,
    full: Option<f64>,
    /// Forward passes so far.
    pub passes: usize,
    /// Prompt tokens computed so far (after prefix reuse).
    pub computed_tokens: usize,
    /// Prompt tokens of all scored coalitions so far.
    pub total_tokens: usize,
}

impl<'a, S: Scorer> LogProbGame<'a, S> {
    /// A game over `players` passages: `prompt` renders a coalition's prompt, `answer` is the answer's tokens.
    pub fn new(
        scorer: S,
        players: usize,
        prompt: PromptBuilder<'a>,
        answer: Vec<u32>,
        value: Value,
    ) -> Self {
        Self {
            scorer,
            players,
            prompt,
            answer,
            value,
            full: None,
            passes: 0,
            computed_tokens: 0,
            total_tokens: 0,
        }
    }

    fn log_probs(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let pairs = coalitions
            .iter()
            .map(|&c| Ok(((self.prompt)(c)?, self.answer.clone())))
            .collect::<Result<Vec<_>, String>>()?;
        let s = self.scorer.score(&pairs)?;
        self.passes += s.passes;
        self.computed_tokens += s.computed_tokens;
        self.total_tokens += s.total_tokens;
        Ok(s.log_probs)
    }
}

impl<S: Scorer> Game for LogProbGame<'_, S> {
    fn players(&self) -> usize {
        self.players
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let lps = self.log_probs(coalitions)?;
        match self.value {
            Value::AnswerLogProb => Ok(lps),
            Value::AnswerKept { margin } => {
                let all = all_players(self.players);
                let full = match self.full {
                    Some(f) => f,
                    None => {
                        let f = match coalitions.iter().position(|&c| c == all) {
                            Some(i) => lps[i],
                            None => self.log_probs(&[all])?[0],
                        };
                        self.full = Some(f);
                        f
                    }
                };
                Ok(lps
                    .iter()
                    .map(|&lp| if lp >= full - margin { 1.0 } else { 0.0 })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{exact_shapley, permutation_shapley};
    use crate::engine::backend::cpu::CpuBackend;
    use crate::engine::kv_cache::KvCacheConfig;
    use crate::engine::model::synthetic::synthetic_config;

    /// An instruction, then the passages of the coalition in order, then the question.
    fn prompt_for(passages: &[Vec<u32>]) -> impl Fn(Coalition) -> Vec<u32> + Send + '_ {
        move |c| {
            let mut p: Vec<u32> = (0..20).map(|i| (i * 3 + 1) % 500).collect();
            for (i, passage) in passages.iter().enumerate() {
                if c & (1 << i) != 0 {
                    p.extend(passage);
                }
            }
            p.extend([400, 401, 402]);
            p
        }
    }

    #[test]
    fn passage_values_are_efficient_and_match_direct_scores() {
        let config = synthetic_config("tiny").unwrap();
        let model = LlamaModel::synthetic(CpuBackend, &config, 9).unwrap();
        let passages: Vec<Vec<u32>> = (0..5u32)
            .map(|k| (0..12).map(|i| (k * 37 + i * 5) % 390).collect())
            .collect();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 256,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let answer = vec![7, 8, 9];
        let prompt = prompt_for(&passages);
        let mut game = LogProbGame::new(
            ModelScorer {
                model: &model,
                kv: &mut kv,
                cache: &mut cache,
                capacity: 512,
            },
            5,
            Box::new(move |c| Ok(prompt(c))),
            answer.clone(),
            Value::AnswerLogProb,
        );
        let exact = exact_shapley(&mut game).unwrap();
        assert_eq!(exact.evaluations, 32);
        assert!((exact.values.iter().sum::<f64>() - (exact.full - exact.empty)).abs() < 1e-6);
        // The game's value of a coalition is the answer's log-probability under that prompt, scored alone.
        let direct = game.values(&[0b10110]).unwrap()[0];
        let alone = {
            let mut kv2 = model.backend_kv(&cfg).unwrap();
            let mut cache2 = KvCache::new(cfg);
            let pairs = vec![(prompt_for(&passages)(0b10110), answer.clone())];
            score_continuations(&model, &mut kv2, &mut cache2, &pairs, 512, 0)
                .unwrap()
                .log_probs[0]
        };
        assert!((direct - alone).abs() < 1e-4, "{direct} vs {alone}");
        // The 32 coalition prompts share the 20-token instruction's first full block.
        assert!(game.computed_tokens < game.total_tokens);
        // Sampling lands near the exact values.
        let sampled = permutation_shapley(&mut game, 64, 1).unwrap();
        for i in 0..5 {
            assert!(
                (sampled.values[i] - exact.values[i]).abs() <= 4.0 * sampled.std_errors[i] + 1e-9,
                "passage {i}: {} vs {}",
                sampled.values[i],
                exact.values[i]
            );
        }
    }

    #[test]
    fn answer_kept_values_are_indicators() {
        let config = synthetic_config("tiny").unwrap();
        let model = LlamaModel::synthetic(CpuBackend, &config, 9).unwrap();
        let passages: Vec<Vec<u32>> = (0..3u32).map(|k| vec![k + 100; 10]).collect();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let prompt = prompt_for(&passages);
        let mut game = LogProbGame::new(
            ModelScorer {
                model: &model,
                kv: &mut kv,
                cache: &mut cache,
                capacity: 256,
            },
            3,
            Box::new(move |c| Ok(prompt(c))),
            vec![5],
            Value::AnswerKept { margin: 0.0 },
        );
        let v = game.values(&[0b111, 0b000, 0b011]).unwrap();
        assert_eq!(v[0], 1.0, "the full prompt keeps its own answer");
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
    }
}
