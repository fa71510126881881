//! Attribution of an answer: first the retrieved passages (Shapley values: exact up to 10 passages, antithetic
//! permutation sampling with standard errors beyond, or Banzhaf values), then, with `attribution: "tokens"`, runs
//! of words of the most valuable passage ([`crate::qa::spans`]). A generated answer is valued by the model
//! (TextGenSHAP: its teacher-forced log-probability under the prompt holding only a coalition's passages); an
//! extractive one by the reader's own game ([`crate::qa::extractive::ReaderGame`]).

use crate::attribution::{
    all_players, banzhaf, contextcite, exact_shapley, logit_of_log_prob, permutation_shapley, Game,
    LogProbGame, Scorer, Value, MAX_EXACT_PLAYERS,
};
use crate::config::QaConfig;
use crate::qa::answerer::{Answered, Basis};
use crate::qa::error::QaError;
use crate::qa::extractive::{ReaderGame, Reading};
use crate::qa::generated::{prompt_ids, separate_prompt, titles_and_texts, EngineScorer};
use crate::qa::sentences::{
    kept_passages, sentence_players, sentence_segments, ReaderSentenceGame, SentencePlayer,
    MAX_SENTENCES,
};
use crate::qa::spans::{keep_runs, top_passage, word_runs, ReaderRunGame, SPAN_PLAYERS};
use crate::qa::types::{
    AttributionInfo, AttributionLevel, Estimator, PassageAttribution, PassageEncoding,
    SentenceAttribution, SentenceValue, SpanAttribution, TokenAttribution, ValueFunction,
};
use crate::retrieve::ScoredPassage;
use engram_engine::Generator;
use std::sync::Arc;

/// Antithetic permutation pairs sampled past [`MAX_EXACT_PLAYERS`] passages (128 permutations).
const PERMUTATION_PAIRS: usize = 64;

/// Random coalitions valued by the `banzhaf` estimator.
const BANZHAF_SAMPLES: usize = 1024;

/// Drop in the answer's log-probability (nats) below which `answer_kept` counts the answer as changed: the answer
/// is at least half as likely as with every passage.
const ANSWER_KEPT_MARGIN: f64 = std::f64::consts::LN_2;

/// The name of the extractive reader's value function.
const READER_VALUE: &str = "extractive_best_sentence_score";

/// What to attribute and how (the request's `attribution`, `passage_encoding`, `estimator` and `value`).
#[derive(Debug, Clone, Copy)]
pub struct AttributionOptions {
    /// None, passages, or passages then tokens.
    pub level: AttributionLevel,
    /// How a generated answer's coalition prompts are computed.
    pub encoding: PassageEncoding,
    /// How the values are estimated.
    pub estimator: Estimator,
    /// What a passage subset is worth for a generated answer.
    pub value: ValueFunction,
}

/// An answer's attributions.
#[derive(Debug, Default)]
pub struct Attributions {
    /// One value per retrieved passage, in rank order (`None` when not asked for, without passages, or for an
    /// empty generated answer).
    pub passages: Option<Vec<PassageAttribution>>,
    /// How the passage values were computed.
    pub info: Option<AttributionInfo>,
    /// Token level: the values of runs of words of the passage with the largest value.
    pub tokens: Option<TokenAttribution>,
    /// Sentence level: the values of the passages' sentences.
    pub sentences: Option<SentenceAttribution>,
}

/// Values of a game's players, their standard errors, and how they were computed.
struct Scored {
    values: Vec<f64>,
    errors: Vec<f64>,
    info: AttributionInfo,
}

/// Attributes `answered` to `passages` (those it was answered from, in order) as `options` ask.
pub async fn attribute(
    question: &str,
    passages: &[ScoredPassage],
    answered: &Answered,
    options: AttributionOptions,
    config: &QaConfig,
) -> Result<Attributions, QaError> {
    if options.level == AttributionLevel::None || passages.is_empty() {
        return Ok(Attributions::default());
    }
    if options.level == AttributionLevel::Sentences {
        return sentence_level(question, passages, answered, options, config).await;
    }
    let want_tokens = options.level == AttributionLevel::Tokens;
    let (scored, tokens) = match &answered.basis {
        Basis::Generated { tokens, .. } if tokens.is_empty() => return Ok(Attributions::default()),
        Basis::Generated { generator, tokens } => {
            let pairs = titles_and_texts(passages);
            let game = Generated::new(generator, question, &pairs, tokens, options.value, config);
            let estimator = EstimatorChoice {
                estimator: options.estimator,
                ablations: config.contextcite_ablations,
            };
            let scored = game.passages(options.encoding, estimator).await?;
            let tokens = match top_passage(&scored.values) {
                Some(p) if want_tokens => Some(game.tokens(p).await?),
                _ => None,
            };
            (scored, tokens)
        }
        Basis::Extractive(reading) => {
            let estimator = EstimatorChoice {
                estimator: options.estimator,
                ablations: config.contextcite_ablations,
            };
            extractive(question, passages, reading, estimator, want_tokens)?
        }
    };
    let attributions = scored
        .values
        .iter()
        .zip(&scored.errors)
        .map(|(&value, &std_error)| PassageAttribution { value, std_error })
        .collect();
    Ok(Attributions {
        passages: Some(attributions),
        info: Some(scored.info),
        tokens,
        sentences: None,
    })
}

/// Sentence-level attribution: the sentences of `passages` are the players; each passage's value is the sum of
/// its sentences' (standard errors added in quadrature). `auto` estimates beyond 10 sentences with ContextCite.
async fn sentence_level(
    question: &str,
    passages: &[ScoredPassage],
    answered: &Answered,
    options: AttributionOptions,
    config: &QaConfig,
) -> Result<Attributions, QaError> {
    let pairs = titles_and_texts(passages);
    let texts: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let players =
        sentence_players(&texts, MAX_SENTENCES).ok_or(QaError::TooManySentencePassages {
            passages: texts.iter().filter(|t| !t.trim().is_empty()).count(),
            most: MAX_SENTENCES,
        })?;
    if players.is_empty() {
        return Ok(Attributions::default());
    }
    let estimator = EstimatorChoice {
        estimator: match options.estimator {
            Estimator::Auto if players.len() > MAX_EXACT_PLAYERS => Estimator::ContextCite,
            other => other,
        },
        ablations: config.contextcite_ablations,
    };
    let scored = match &answered.basis {
        Basis::Generated { tokens, .. } if tokens.is_empty() => return Ok(Attributions::default()),
        Basis::Generated { generator, tokens } => {
            let game = Generated::new(generator, question, &pairs, tokens, options.value, config);
            game.sentences(&players, options.encoding, estimator)
                .await?
        }
        Basis::Extractive(_) => {
            let mut game = ReaderSentenceGame {
                question,
                texts: texts.clone(),
                players: &players,
            };
            shapley(&mut game, READER_VALUE, estimator, identity)?
        }
    };
    let mut sums = vec![(0.0, 0.0); passages.len()];
    let sentences = players
        .iter()
        .zip(scored.values.iter().zip(&scored.errors))
        .map(|(p, (&value, &std_error))| {
            sums[p.passage].0 += value;
            sums[p.passage].1 += std_error * std_error;
            SentenceValue {
                passage: p.passage,
                start_byte: p.start_byte,
                end_byte: p.end_byte,
                value,
                std_error,
            }
        })
        .collect();
    Ok(Attributions {
        passages: Some(
            sums.into_iter()
                .map(|(value, var)| PassageAttribution {
                    value,
                    std_error: var.sqrt(),
                })
                .collect(),
        ),
        info: Some(scored.info.clone()),
        tokens: None,
        sentences: Some(SentenceAttribution {
            sentences,
            attribution: scored.info,
        }),
    })
}

/// The extractive reader's passage values, then (with `want_tokens`) its values for runs of words of the top
/// passage.
fn extractive(
    question: &str,
    passages: &[ScoredPassage],
    reading: &Reading,
    estimator: EstimatorChoice,
    want_tokens: bool,
) -> Result<(Scored, Option<TokenAttribution>), QaError> {
    let texts: Vec<&str> = passages.iter().map(|p| p.passage.text.as_str()).collect();
    let mut game = ReaderGame {
        passages: texts.len(),
        reading,
    };
    let scored = shapley(&mut game, READER_VALUE, estimator, identity)?;
    let tokens = match top_passage(&scored.values) {
        Some(p) if want_tokens => {
            let runs = word_runs(texts[p], SPAN_PLAYERS);
            let mut game = ReaderRunGame {
                question,
                texts: texts.clone(),
                passage: p,
                runs: runs.clone(),
            };
            let r = shapley(&mut game, READER_VALUE, estimator, identity)?;
            Some(token_attribution(p, &runs, r))
        }
        _ => None,
    };
    Ok((scored, tokens))
}

/// A generated answer's attribution games: the model scores coalition prompts of the question and passages.
struct Generated<'a> {
    generator: &'a Arc<dyn Generator>,
    question: &'a str,
    /// (title, text) of each passage, in rank order.
    passages: &'a [(String, String)],
    /// The answer's tokens.
    answer: &'a [u32],
    value: ValueFunction,
    coalitions_per_call: usize,
}

impl<'a> Generated<'a> {
    fn new(
        generator: &'a Arc<dyn Generator>,
        question: &'a str,
        passages: &'a [(String, String)],
        answer: &'a [u32],
        value: ValueFunction,
        config: &QaConfig,
    ) -> Self {
        Self {
            generator,
            question,
            passages,
            answer,
            value,
            coalitions_per_call: config.coalitions_per_call,
        }
    }

    fn scorer(&self) -> EngineScorer {
        EngineScorer {
            generator: self.generator.clone(),
            coalitions_per_call: self.coalitions_per_call,
        }
    }

    /// The passages' values, their prompts computed as `encoding` says (resolved for the number of passages).
    async fn passages(
        &self,
        encoding: PassageEncoding,
        estimator: EstimatorChoice,
    ) -> Result<Scored, QaError> {
        let encoding = encoding.resolve(self.passages.len(), self.generator.device());
        let mut game = self.game(encoding)?;
        let value = self.value;
        tokio::task::spawn_blocking(move || model_shapley(&mut game, encoding, value, estimator))
            .await?
    }

    /// The passage game with prompts computed as `encoding` says (`Separate`, or joint for anything else).
    fn game(
        &self,
        encoding: PassageEncoding,
    ) -> Result<LogProbGame<'static, EngineScorer>, QaError> {
        let value = game_value(self.value);
        Ok(match encoding {
            PassageEncoding::Separate => {
                let prompt = separate_prompt(self.generator.as_ref(), self.question, self.passages)
                    .map_err(QaError::AttributionPrompt)?;
                LogProbGame::separate(self.scorer(), prompt, self.answer.to_vec(), value)
            }
            _ => {
                let (g, question) = (self.generator.clone(), self.question.to_string());
                let passages = self.passages.to_vec();
                LogProbGame::new(
                    self.scorer(),
                    passages.len(),
                    Box::new(move |c| prompt_ids(g.as_ref(), &question, &passages, c)),
                    self.answer.to_vec(),
                    value,
                )
            }
        })
    }

    /// The values of sentence `players`, their prompts computed as `encoding` says (resolved for their number).
    async fn sentences(
        &self,
        players: &[SentencePlayer],
        encoding: PassageEncoding,
        estimator: EstimatorChoice,
    ) -> Result<Scored, QaError> {
        let encoding = encoding.resolve(players.len(), self.generator.device());
        let value = game_value(self.value);
        let mut game = match encoding {
            PassageEncoding::Separate => {
                let g = self.generator.as_ref();
                let prompt = separate_prompt(g, self.question, self.passages)
                    .and_then(|p| {
                        sentence_segments(p, self.passages, players, |s| {
                            g.tokenizer().encode(s, false).map_err(|e| e.to_string())
                        })
                    })
                    .map_err(QaError::AttributionPrompt)?;
                LogProbGame::separate(self.scorer(), prompt, self.answer.to_vec(), value)
            }
            _ => {
                let (g, question) = (self.generator.clone(), self.question.to_string());
                let (passages, kept) = (self.passages.to_vec(), players.to_vec());
                LogProbGame::new(
                    self.scorer(),
                    kept.len(),
                    Box::new(move |c| {
                        let (reduced, with) = kept_passages(&passages, &kept, c);
                        prompt_ids(g.as_ref(), &question, &reduced, with)
                    }),
                    self.answer.to_vec(),
                    value,
                )
            }
        };
        let value = self.value;
        tokio::task::spawn_blocking(move || model_shapley(&mut game, encoding, value, estimator))
            .await?
    }

    /// Exact values of runs of words of passage `p`, every other passage kept whole, prompts computed jointly.
    async fn tokens(&self, p: usize) -> Result<TokenAttribution, QaError> {
        let all = self.passages.to_vec();
        let runs = word_runs(&all[p].1, SPAN_PLAYERS);
        let (g, question, kept) = (
            self.generator.clone(),
            self.question.to_string(),
            runs.clone(),
        );
        let mut game = LogProbGame::new(
            self.scorer(),
            runs.len(),
            Box::new(move |c| {
                let mut ps = all.clone();
                ps[p].1 = keep_runs(&all[p].1, &kept, c);
                prompt_ids(g.as_ref(), &question, &ps, all_players(ps.len()))
            }),
            self.answer.to_vec(),
            game_value(self.value),
        );
        let value = self.value;
        let estimator = EstimatorChoice {
            estimator: Estimator::Auto,
            ablations: 0,
        };
        let r = tokio::task::spawn_blocking(move || {
            model_shapley(&mut game, PassageEncoding::Joint, value, estimator)
        })
        .await??;
        Ok(token_attribution(p, &runs, r))
    }
}

/// An estimator and, for `contextcite`, its number of random ablations.
#[derive(Debug, Clone, Copy)]
struct EstimatorChoice {
    estimator: Estimator,
    ablations: usize,
}

/// A value as it is (ContextCite's fit target for values that are not log-probabilities).
fn identity(v: f64) -> f64 {
    v
}

/// The two passage games of a generated `answer` (its tokens) to `question` from `passages`, valued by the
/// answer's log-probability: prompts written out in full, then passages encoded once (`engram eval
/// --attribution` compares the estimators over both).
pub fn answer_games(
    generator: &Arc<dyn Generator>,
    question: &str,
    passages: &[ScoredPassage],
    answer: &[u32],
    config: &QaConfig,
) -> Result<[LogProbGame<'static, EngineScorer>; 2], QaError> {
    let pairs = titles_and_texts(passages);
    let game = Generated::new(
        generator,
        question,
        &pairs,
        answer,
        ValueFunction::LogProb,
        config,
    );
    Ok([
        game.game(PassageEncoding::Joint)?,
        game.game(PassageEncoding::Separate)?,
    ])
}

/// Values of `game`'s players by `estimator`; `value` names the game's value function, `target` is what
/// ContextCite fits in place of a coalition's value.
fn shapley<G: Game>(
    game: &mut G,
    value: &str,
    estimator: EstimatorChoice,
    target: fn(f64) -> f64,
) -> Result<Scored, QaError> {
    let n = game.players();
    let (method, result) = match estimator.estimator {
        Estimator::Auto if n <= MAX_EXACT_PLAYERS => ("exact_shapley", exact_shapley(game)),
        Estimator::Auto | Estimator::Permutation => (
            "permutation_shapley",
            permutation_shapley(game, PERMUTATION_PAIRS, 0),
        ),
        Estimator::Banzhaf => ("banzhaf", banzhaf(game, BANZHAF_SAMPLES, 0.5, 0)),
        Estimator::ContextCite => (
            "contextcite",
            contextcite(game, estimator.ablations, 0, target),
        ),
    };
    let a = result?;
    let info = AttributionInfo {
        method: method.into(),
        value: value.into(),
        evaluations: a.evaluations,
        full: a.full,
        empty: a.empty,
        passage_encoding: None,
        forward_passes: None,
        computed_tokens: None,
        prompt_tokens: None,
    };
    Ok(Scored {
        values: a.values,
        errors: a.std_errors,
        info,
    })
}

/// The game's value function for `value`.
fn game_value(value: ValueFunction) -> Value {
    match value {
        ValueFunction::LogProb => Value::AnswerLogProb,
        ValueFunction::AnswerKept => Value::AnswerKept {
            margin: ANSWER_KEPT_MARGIN,
        },
    }
}

/// Shapley values of a model-backed game, with what the model computed for them.
fn model_shapley<S: Scorer>(
    game: &mut LogProbGame<'_, S>,
    encoding: PassageEncoding,
    value: ValueFunction,
    estimator: EstimatorChoice,
) -> Result<Scored, QaError> {
    let (name, target): (_, fn(f64) -> f64) = match value {
        ValueFunction::LogProb => ("answer_log_prob", logit_of_log_prob),
        ValueFunction::AnswerKept => ("answer_kept", identity),
    };
    let mut scored = shapley(game, name, estimator, target)?;
    let info = &mut scored.info;
    info.passage_encoding = Some(encoding.name().into());
    info.forward_passes = Some(game.passes);
    info.computed_tokens = Some(game.computed_tokens);
    info.prompt_tokens = Some(game.total_tokens);
    Ok(scored)
}

/// The token-level attribution of passage `passage` from the values of its `runs`.
fn token_attribution(passage: usize, runs: &[(usize, usize)], scored: Scored) -> TokenAttribution {
    let spans = runs
        .iter()
        .zip(scored.values.iter().zip(&scored.errors))
        .map(
            |(&(start_byte, end_byte), (&value, &std_error))| SpanAttribution {
                start_byte,
                end_byte,
                value,
                std_error,
            },
        )
        .collect();
    TokenAttribution {
        passage,
        spans,
        attribution: scored.info,
    }
}
