//! The model-backed game of TextGenSHAP: players are passages, and the value of a coalition is the
//! log-probability the model gives a fixed answer when the prompt holds only those passages (teacher-forced, one
//! prefill per coalition, no decoding), or, with [`Value::AnswerKept`], whether that log-probability stays within
//! a margin of the full prompt's (a smooth stand-in for the paper's answer-change indicator).
//! Coalition prompts are scored in prepacked batches with shared prefixes computed once
//! ([`crate::engine::score`]).

use super::shapley::{Coalition, Game};
use crate::engine::backend::Backend;
use crate::engine::kv_cache::KvCache;
use crate::engine::llama::LlamaModel;
use crate::engine::score::score_continuations;

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
pub type PromptBuilder<'a> = Box<dyn Fn(Coalition) -> Vec<u32> + Send + 'a>;

/// A passage-attribution game over one model, question and answer.
pub struct LogProbGame<'m, B: Backend> {
    model: &'m LlamaModel<B>,
    kv: &'m mut B::Kv,
    cache: &'m mut KvCache,
    players: usize,
    prompt: PromptBuilder<'m>,
    answer: Vec<u32>,
    value: Value,
    capacity: usize,
    full: Option<f64>,
    /// Forward passes and computed tokens so far.
    pub passes: usize,
    /// Prompt tokens computed so far (after prefix reuse).
    pub computed_tokens: usize,
    /// Prompt tokens of all scored coalitions so far.
    pub total_tokens: usize,
}

impl<'m, B: Backend> LogProbGame<'m, B> {
    /// A game over `players` passages: `prompt` renders a coalition's prompt, `answer` is the answer's tokens,
    /// `capacity` bounds the tokens of one forward pass; the cache is used for the call's sequences only.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'m LlamaModel<B>,
        kv: &'m mut B::Kv,
        cache: &'m mut KvCache,
        players: usize,
        prompt: PromptBuilder<'m>,
        answer: Vec<u32>,
        value: Value,
        capacity: usize,
    ) -> Self {
        Self {
            model,
            kv,
            cache,
            players,
            prompt,
            answer,
            value,
            capacity,
            full: None,
            passes: 0,
            computed_tokens: 0,
            total_tokens: 0,
        }
    }

    fn log_probs(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = coalitions
            .iter()
            .map(|&c| ((self.prompt)(c), self.answer.clone()))
            .collect();
        let s = score_continuations(self.model, self.kv, self.cache, &pairs, self.capacity, 0)
            .map_err(|e| e.to_string())?;
        self.passes += s.passes;
        self.computed_tokens += s.computed_tokens;
        self.total_tokens += s.total_tokens;
        Ok(s.log_probs)
    }
}

impl<B: Backend> Game for LogProbGame<'_, B> {
    fn players(&self) -> usize {
        self.players
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let lps = self.log_probs(coalitions)?;
        match self.value {
            Value::AnswerLogProb => Ok(lps),
            Value::AnswerKept { margin } => {
                let all = if self.players == 64 {
                    u64::MAX
                } else {
                    (1u64 << self.players) - 1
                };
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
        let mut game = LogProbGame::new(
            &model,
            &mut kv,
            &mut cache,
            5,
            Box::new(prompt_for(&passages)),
            answer.clone(),
            Value::AnswerLogProb,
            512,
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
        let mut game = LogProbGame::new(
            &model,
            &mut kv,
            &mut cache,
            3,
            Box::new(prompt_for(&passages)),
            vec![5],
            Value::AnswerKept { margin: 0.0 },
            256,
        );
        let v = game.values(&[0b111, 0b000, 0b011]).unwrap();
        assert_eq!(v[0], 1.0, "the full prompt keeps its own answer");
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
    }
}
