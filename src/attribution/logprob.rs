//! The model-backed game of TextGenSHAP: players are passages, and the value of a coalition is the
//! log-probability the model gives a fixed answer when the prompt holds only those passages (teacher-forced, one
//! prefill per coalition, no decoding), or, with [`Value::AnswerKept`], whether that log-probability stays within
//! a margin of the full prompt's (a smooth stand-in for the paper's answer-change indicator).
//! Coalition prompts are scored by a [`Scorer`]: a model held directly (the benchmark's) or the running engine
//! (`crate::qa::generated::EngineScorer`), both in prepacked batches with shared prefixes computed once
//! (`engram_engine`'s scoring). A coalition's prompt is either written out in full ([`Prompts::Joint`]: exact) or
//! assembled from passages encoded once each ([`Prompts::Separate`], TextGenSHAP's Fusion-in-Decoder speed-up in
//! decoder form, `engram_engine`'s segmented scoring: a coalition then costs only the tokens after its passages).

use super::shapley::{all_players, Coalition, Game};
use engram_engine::{Scores, SegmentedScoring};

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

/// A prompt cut around its passages, for scoring with each passage encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeparatePrompt {
    /// Everything before the passages (instruction, question).
    pub prefix: Vec<u32>,
    /// Each passage's tokens.
    pub passages: Vec<Vec<u32>>,
    /// Everything after the passages, up to the answer.
    pub suffix: Vec<u32>,
}

/// How a coalition's prompt is made.
pub enum Prompts<'a> {
    /// Each coalition's prompt written out in full and computed as one text.
    Joint(PromptBuilder<'a>),
    /// Each passage encoded once after the prefix; a coalition's suffix and answer attend to its passages.
    Separate(SeparatePrompt),
}

/// Scores continuations: the teacher-forced log-probability of each.
pub trait Scorer {
    /// Scores (context, continuation) `pairs`, in order.
    fn score(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Scores, String>;
    /// Scores a continuation under subsets of segments encoded once each.
    fn score_segmented(&mut self, request: SegmentedScoring) -> Result<Scores, String>;
}

/// A passage-attribution game over one scorer, question and answer.
pub struct LogProbGame<'a, S: Scorer> {
    scorer: S,
    players: usize,
    prompts: Prompts<'a>,
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
        Self::with_prompts(scorer, players, Prompts::Joint(prompt), answer, value)
    }

    /// A game whose players are `prompt`'s passages, each encoded once ([`Prompts::Separate`]).
    pub fn separate(scorer: S, prompt: SeparatePrompt, answer: Vec<u32>, value: Value) -> Self {
        let players = prompt.passages.len();
        Self::with_prompts(scorer, players, Prompts::Separate(prompt), answer, value)
    }

    fn with_prompts(
        scorer: S,
        players: usize,
        prompts: Prompts<'a>,
        answer: Vec<u32>,
        value: Value,
    ) -> Self {
        Self {
            scorer,
            players,
            prompts,
            answer,
            value,
            full: None,
            passes: 0,
            computed_tokens: 0,
            total_tokens: 0,
        }
    }

    fn log_probs(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let s = match &self.prompts {
            Prompts::Joint(prompt) => {
                let pairs = coalitions
                    .iter()
                    .map(|&c| Ok((prompt(c)?, self.answer.clone())))
                    .collect::<Result<Vec<_>, String>>()?;
                self.scorer.score(&pairs)?
            }
            Prompts::Separate(p) => self.scorer.score_segmented(SegmentedScoring {
                prefix: p.prefix.clone(),
                segments: p.passages.clone(),
                suffix: p.suffix.clone(),
                continuation: self.answer.clone(),
                subsets: coalitions.to_vec(),
            })?,
        };
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
    use engram_engine::internals::backend::cpu::CpuBackend;
    use engram_engine::internals::backend::Backend;
    use engram_engine::internals::kv_cache::KvCache;
    use engram_engine::internals::kv_cache::KvCacheConfig;
    use engram_engine::internals::llama::LlamaModel;
    use engram_engine::internals::model::synthetic::synthetic_config;
    use engram_engine::internals::score::score_continuations;
    use engram_engine::internals::score_segments::score_segmented;

    /// A [`Scorer`] over a model held directly (the tests' own; `engram bench attribution` has the same).
    struct ModelScorer<'m, B: Backend> {
        model: &'m LlamaModel<B>,
        kv: &'m mut B::Kv,
        cache: &'m mut KvCache,
        capacity: usize,
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
    fn separately_encoded_passages_make_an_efficient_game() {
        let config = synthetic_config("tiny").unwrap();
        let model = LlamaModel::synthetic(CpuBackend, &config, 9).unwrap();
        // Equal lengths: a coalition of one passage is then exactly its joint prompt.
        let passages: Vec<Vec<u32>> = (0..6u32)
            .map(|k| (0..12).map(|i| (k * 37 + i * 5) % 390).collect())
            .collect();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 256,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let prompt = SeparatePrompt {
            prefix: (0..20).map(|i| (i * 3 + 1) % 500).collect(),
            passages: passages.clone(),
            suffix: vec![400, 401, 402],
        };
        let answer = vec![7, 8, 9];
        let mut game = LogProbGame::separate(
            ModelScorer {
                model: &model,
                kv: &mut kv,
                cache: &mut cache,
                capacity: 512,
            },
            prompt,
            answer.clone(),
            Value::AnswerLogProb,
        );
        assert_eq!(game.players(), 6);
        let exact = exact_shapley(&mut game).unwrap();
        assert_eq!(exact.evaluations, 64);
        assert!((exact.values.iter().sum::<f64>() - (exact.full - exact.empty)).abs() < 1e-6);
        // Each passage once, plus 64 tails of 6 tokens: far fewer than the 64 prompts written out.
        assert!(
            game.computed_tokens <= 20 + 6 * 12 + 64 * 6,
            "{}",
            game.computed_tokens
        );
        assert!(game.total_tokens > 64 * 26);
        let one = game.values(&[0b000100]).unwrap()[0];
        let alone = {
            let mut kv2 = model.backend_kv(&cfg).unwrap();
            let mut cache2 = KvCache::new(cfg);
            let pairs = vec![(prompt_for(&passages)(0b000100), answer.clone())];
            score_continuations(&model, &mut kv2, &mut cache2, &pairs, 512, 0)
                .unwrap()
                .log_probs[0]
        };
        assert!((one - alone).abs() < 1e-4, "{one} vs {alone}");
        let sampled = permutation_shapley(&mut game, 64, 3).unwrap();
        for i in 0..6 {
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
