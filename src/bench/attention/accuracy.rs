//! The accuracy part, on a real model, through the engine's internals (the model, a KV cache and prefill chunks
//! of `chunk` tokens, as the engine steps them, with HiP set on every chunk, decode rows included):
//! - passkey retrieval: for each length, depth and trial, a prompt of filler sentences hiding a seeded five-digit
//!   key at that depth, asked back through the chat template; greedy answers of `answer_tokens` tokens, dense and
//!   with HiP at each `top_k`; correct when the key's digits appear in the answer;
//! - KL: a document of each length (varied filler, or `--text`), teacher-forced; the mean KL(dense ‖ HiP) of the
//!   next-token distributions at its last `kl_positions` positions, for each `top_k`, and how often the argmax
//!   agrees.
//!
//! Progress lines go to stderr; the report is offered to `checkpoint` after each length.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::runner::Runner;
use super::text::{answer_is_correct, argmax, document_tokens, kl, log_softmax, PasskeyParts, Rng};
use super::{AttentionArgs, DEFAULT_ACCURACY_MODEL};
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::kv_cache::KvCacheConfig;
use engram_engine::internals::start::load_model;
use engram_engine::{HipParams, ModelTokenizer, StartError};

/// What the accuracy part runs.
#[derive(Debug, Clone)]
pub struct AccuracyConfig {
    /// Model spec.
    pub model: String,
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// HiP's `top_k` values compared with dense attention.
    pub top_ks: Vec<usize>,
    /// Depths of the key in the filler.
    pub depths: Vec<f64>,
    /// Prompts per length and depth.
    pub trials: usize,
    /// Greedy tokens per answer.
    pub answer_tokens: usize,
    /// Last positions compared by the KL measure.
    pub kl_positions: usize,
    /// The KL document's text (`None`: varied filler).
    pub text: Option<String>,
    /// Prompt tokens per forward pass.
    pub chunk: usize,
    /// HiP's parameters (`top_k` replaced by each of `top_ks`).
    pub hip: HipParams,
    /// Seed of the keys and the filler.
    pub seed: u64,
    /// Run passkey retrieval.
    pub passkey: bool,
    /// Run the KL measure.
    pub kl: bool,
}

impl AccuracyConfig {
    /// The configuration from the command line.
    pub fn from_args(a: &AttentionArgs, hip: HipParams) -> anyhow::Result<Self> {
        for &k in &a.top_k_list {
            HipParams { top_k: k, ..hip }.validate()?;
        }
        anyhow::ensure!(
            a.depths.iter().all(|d| (0.0..=1.0).contains(d)),
            "--depths are shares of the filler, between 0 and 1"
        );
        let text = a.text.as_deref().map(read_text).transpose()?;
        Ok(Self {
            model: a.model.clone().unwrap_or_else(default_model),
            lengths: a.lengths.clone(),
            top_ks: a.top_k_list.clone(),
            depths: a.depths.clone(),
            trials: a.trials,
            answer_tokens: a.answer_tokens.max(1),
            kl_positions: a.kl_positions.max(1),
            text,
            chunk: a.chunk.max(1),
            hip,
            seed: a.seed,
            passkey: !a.no_passkey,
            kl: !a.no_kl,
        })
    }

    /// `dense`, then HiP at each `top_k`.
    fn modes(&self) -> Vec<(String, Option<HipParams>)> {
        std::iter::once(("dense".to_string(), None))
            .chain(self.top_ks.iter().map(|&k| {
                (
                    format!("hip k={k}"),
                    Some(HipParams {
                        top_k: k,
                        ..self.hip
                    }),
                )
            }))
            .collect()
    }
}

/// `~/.cache/engram/models/` + [`DEFAULT_ACCURACY_MODEL`].
fn default_model() -> String {
    let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/engram/models")
        .join(DEFAULT_ACCURACY_MODEL)
        .display()
        .to_string()
}

/// A text file, or the texts of a JSON corpus (`[{"title", "text"}]`) joined by blank lines.
fn read_text(path: &Path) -> anyhow::Result<String> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    #[derive(serde::Deserialize)]
    struct Passage {
        text: String,
    }
    Ok(match serde_json::from_str::<Vec<Passage>>(&raw) {
        Ok(passages) => passages
            .into_iter()
            .map(|p| p.text)
            .collect::<Vec<_>>()
            .join("\n\n"),
        Err(_) => raw,
    })
}

/// One passkey prompt answered by one attention.
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyTrial {
    /// Asked length.
    pub length: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Asked depth.
    pub depth: f64,
    /// Where the key sentence starts, as a share of the filler.
    pub key_depth: f64,
    /// The key.
    pub key: u32,
    /// `dense` or `hip k=K`.
    pub attention: String,
    /// The greedy answer.
    pub answer: String,
    /// Whether it names the key.
    pub correct: bool,
    /// Seconds (prefill and answer).
    pub seconds: f64,
}

/// Correct answers at one depth.
#[derive(Debug, Clone, Serialize)]
pub struct DepthScore {
    /// The depth.
    pub depth: f64,
    /// Correct answers.
    pub correct: usize,
    /// Prompts.
    pub trials: usize,
}

/// Passkey accuracy of one attention at one length.
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyScore {
    /// Asked length.
    pub length: usize,
    /// `dense` or `hip k=K`.
    pub attention: String,
    /// Correct answers.
    pub correct: usize,
    /// Prompts.
    pub trials: usize,
    /// correct / trials.
    pub accuracy: f64,
    /// By depth.
    pub by_depth: Vec<DepthScore>,
    /// Seconds of all its prompts.
    pub seconds: f64,
}

/// KL(dense ‖ HiP) at one length and `top_k`.
#[derive(Debug, Clone, Serialize)]
pub struct KlScore {
    /// Document tokens.
    pub length: usize,
    /// HiP's `top_k`.
    pub top_k: usize,
    /// Positions compared (the last of the document).
    pub positions: usize,
    /// Mean KL over the positions, nats.
    pub kl_mean: f64,
    /// Largest KL.
    pub kl_max: f64,
    /// Share of positions whose argmax equals dense attention's.
    pub top1_agreement: f64,
    /// Seconds of the HiP pass.
    pub seconds: f64,
}

/// Wall time spent at one length.
#[derive(Debug, Clone, Serialize)]
pub struct LengthTime {
    /// The length.
    pub length: usize,
    /// Seconds of passkey retrieval (every prompt and attention).
    pub passkey_seconds: Option<f64>,
    /// Seconds of the KL measure (the dense pass and every HiP pass).
    pub kl_seconds: Option<f64>,
}

/// The accuracy part's report.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    /// Device.
    pub device: String,
    /// Model spec.
    pub model: String,
    /// The model's context window.
    pub max_context: usize,
    /// HiP's parameters (`top_k` varies).
    pub hip: HipParams,
    /// Prompt tokens per forward pass.
    pub chunk: usize,
    /// Prompts per length and depth.
    pub trials_per_depth: usize,
    /// Lengths left out: longer than the model's window.
    pub skipped_lengths: Vec<usize>,
    /// Passkey accuracy by length and attention.
    pub passkey: Vec<PasskeyScore>,
    /// Every passkey answer.
    pub passkey_trials: Vec<PasskeyTrial>,
    /// KL by length and `top_k`.
    pub kl: Vec<KlScore>,
    /// Wall time by length.
    pub times: Vec<LengthTime>,
}

/// Runs the accuracy part; `checkpoint` gets the report so far after each length.
pub fn bench_accuracy<B: Backend + DeviceProbe>(
    backend: &dyn Fn() -> Result<B, StartError>,
    cfg: &AccuracyConfig,
    checkpoint: &mut dyn FnMut(&AccuracyReport) -> anyhow::Result<()>,
) -> anyhow::Result<AccuracyReport> {
    let t = Instant::now();
    let (model, tokenizer, _) =
        load_model(backend()?, &cfg.model).with_context(|| format!("loading {}", cfg.model))?;
    eprintln!(
        "accuracy: {} loaded in {:.1} s on {}",
        cfg.model,
        t.elapsed().as_secs_f64(),
        model.backend().device()
    );
    let max_context = model.config().max_position_embeddings;
    let (lengths, skipped): (Vec<usize>, Vec<usize>) = cfg
        .lengths
        .iter()
        .copied()
        .partition(|&l| l + cfg.answer_tokens <= max_context);
    if !skipped.is_empty() {
        eprintln!(
            "accuracy: lengths {skipped:?} skipped: the model's window is {max_context} tokens"
        );
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let cache = KvCacheConfig {
        block_size: 16,
        num_blocks: (longest + cfg.answer_tokens + 1).div_ceil(16) + 1,
    };
    let mut eos = tokenizer.eos_token_ids();
    eos.extend(&model.config().eos_token_ids);
    let mut runner = Runner::new(&model, cache, cfg.chunk)?;
    let mut report = AccuracyReport {
        device: model.backend().device(),
        model: cfg.model.clone(),
        max_context,
        hip: cfg.hip,
        chunk: cfg.chunk,
        trials_per_depth: cfg.trials,
        skipped_lengths: skipped,
        passkey: Vec::new(),
        passkey_trials: Vec::new(),
        kl: Vec::new(),
        times: Vec::new(),
    };
    let parts = PasskeyParts::new(&tokenizer).map_err(anyhow::Error::msg)?;
    for &length in &lengths {
        let mut time = LengthTime {
            length,
            passkey_seconds: None,
            kl_seconds: None,
        };
        if cfg.passkey {
            let t = Instant::now();
            passkey_length(
                &mut runner,
                &tokenizer,
                &parts,
                &eos,
                cfg,
                length,
                &mut report,
            )?;
            time.passkey_seconds = Some(t.elapsed().as_secs_f64());
            eprintln!(
                "accuracy: passkey at {length} tokens took {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        if cfg.kl {
            let t = Instant::now();
            let doc = document_tokens(
                &tokenizer,
                cfg.text.as_deref().unwrap_or(""),
                length,
                cfg.seed ^ length as u64,
            )
            .map_err(anyhow::Error::msg)?;
            report.kl.extend(kl_length(&mut runner, cfg, &doc)?);
            time.kl_seconds = Some(t.elapsed().as_secs_f64());
            eprintln!(
                "accuracy: KL at {length} tokens took {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        report.times.push(time);
        checkpoint(&report)?;
    }
    Ok(report)
}

/// Every passkey prompt of one length, answered by every attention; adds the trials and scores to `report`.
fn passkey_length<B: Backend>(
    runner: &mut Runner<'_, B>,
    tokenizer: &ModelTokenizer,
    parts: &PasskeyParts,
    eos: &[u32],
    cfg: &AccuracyConfig,
    length: usize,
    report: &mut AccuracyReport,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(cfg.seed ^ (length as u64).wrapping_mul(0x9E37_79B9));
    let modes = cfg.modes();
    let first = report.passkey_trials.len();
    for &depth in &cfg.depths {
        for trial in 0..cfg.trials {
            let key = rng.pass_key();
            let prompt = parts
                .prompt(tokenizer, key, length, depth)
                .map_err(anyhow::Error::msg)?;
            for (label, hip) in &modes {
                let t = Instant::now();
                let ids = runner.answer(&prompt.tokens, *hip, cfg.answer_tokens, eos)?;
                let answer = tokenizer.decode(&ids, true)?;
                let correct = answer_is_correct(&answer, key);
                let seconds = t.elapsed().as_secs_f64();
                eprintln!(
                    "passkey: length {length} depth {depth:.2} trial {}/{} key {key} {label}: {} in {seconds:.1} s: {answer:?}",
                    trial + 1,
                    cfg.trials,
                    if correct { "correct" } else { "wrong" },
                );
                report.passkey_trials.push(PasskeyTrial {
                    length,
                    prompt_tokens: prompt.tokens.len(),
                    depth,
                    key_depth: prompt.depth(),
                    key,
                    attention: label.clone(),
                    answer,
                    correct,
                    seconds,
                });
            }
        }
    }
    let trials = &report.passkey_trials[first..];
    for (label, _) in &modes {
        let mine: Vec<&PasskeyTrial> = trials.iter().filter(|t| &t.attention == label).collect();
        let correct = mine.iter().filter(|t| t.correct).count();
        let by_depth = cfg
            .depths
            .iter()
            .map(|&depth| {
                let at: Vec<_> = mine.iter().filter(|t| t.depth == depth).collect();
                DepthScore {
                    depth,
                    correct: at.iter().filter(|t| t.correct).count(),
                    trials: at.len(),
                }
            })
            .collect();
        report.passkey.push(PasskeyScore {
            length,
            attention: label.clone(),
            correct,
            trials: mine.len(),
            accuracy: correct as f64 / mine.len().max(1) as f64,
            by_depth,
            seconds: mine.iter().map(|t| t.seconds).sum(),
        });
    }
    Ok(())
}

/// KL(dense ‖ HiP) over the last positions of `doc`, for each `top_k`.
fn kl_length<B: Backend>(
    runner: &mut Runner<'_, B>,
    cfg: &AccuracyConfig,
    doc: &[u32],
) -> anyhow::Result<Vec<KlScore>> {
    let length = doc.len();
    let keep = length.saturating_sub(cfg.kl_positions)..length;
    let t = Instant::now();
    let dense: Vec<Vec<f32>> = runner
        .prefill(doc, None, keep.clone())?
        .1
        .iter()
        .map(|row| log_softmax(row))
        .collect();
    eprintln!(
        "kl: length {length}: dense pass {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();
    for (_, hip) in cfg.modes().into_iter().skip(1) {
        let hip = hip.expect("every mode after the first is HiP");
        let t = Instant::now();
        let (_, rows) = runner.prefill(doc, Some(hip), keep.clone())?;
        let (mut sum, mut max, mut agree) = (0.0f64, 0.0f64, 0usize);
        for (p, row) in dense.iter().zip(&rows) {
            let q = log_softmax(row);
            let d = kl(p, &q);
            sum += d;
            max = max.max(d);
            agree += usize::from(argmax(p) == argmax(&q));
        }
        let n = rows.len().max(1) as f64;
        let score = KlScore {
            length,
            top_k: hip.top_k,
            positions: rows.len(),
            kl_mean: sum / n,
            kl_max: max,
            top1_agreement: agree as f64 / n,
            seconds: t.elapsed().as_secs_f64(),
        };
        eprintln!(
            "kl: length {length} top_k {}: mean {:.5} max {:.5} top-1 agreement {:.3} ({:.1} s)",
            score.top_k, score.kl_mean, score.kl_max, score.top1_agreement, score.seconds
        );
        out.push(score);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::backend::cpu::CpuBackend;

    fn config(top_ks: Vec<usize>) -> AccuracyConfig {
        AccuracyConfig {
            model: "synthetic:tiny".into(),
            lengths: vec![600, 5000],
            top_ks,
            depths: vec![0.5],
            trials: 1,
            answer_tokens: 3,
            kl_positions: 8,
            text: None,
            chunk: 128,
            hip: HipParams {
                block_q: 16,
                block_k: 16,
                top_k: 2,
                sink_tokens: 16,
                recent_tokens: 32,
                min_context: 0,
            },
            seed: 5,
            passkey: true,
            kl: true,
        }
    }

    #[test]
    fn the_accuracy_part_runs_on_the_tiny_model_and_covering_hip_is_dense() {
        let mut checkpoints = 0;
        let r = bench_accuracy(
            &|| Ok(CpuBackend),
            &config(vec![2, 64]),
            &mut |_: &AccuracyReport| {
                checkpoints += 1;
                Ok(())
            },
        )
        .unwrap();
        // 5,000 tokens do not fit the tiny model's 2,048-token window.
        assert_eq!(r.skipped_lengths, vec![5000]);
        assert_eq!(checkpoints, 1);
        assert_eq!(r.passkey.len(), 3);
        assert_eq!(r.passkey_trials.len(), 3);
        assert!(r.passkey_trials.iter().all(|t| t.prompt_tokens <= 600));
        assert_eq!(r.kl.len(), 2);
        // top_k 64 covers every block of 600 tokens: the same distributions.
        let covering = &r.kl[1];
        assert!(covering.kl_max < 1e-9, "{covering:?}");
        assert_eq!(covering.top1_agreement, 1.0);
        assert_eq!(covering.positions, 8);
        assert!(r.kl[0].kl_mean > 0.0);
        let dense = &r.passkey_trials[0];
        assert_eq!(r.passkey_trials[2].answer, dense.answer);
    }

    #[test]
    fn modes_are_dense_then_each_top_k() {
        let modes = config(vec![8, 32]).modes();
        let labels: Vec<&str> = modes.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(labels, vec!["dense", "hip k=8", "hip k=32"]);
        assert_eq!(modes[2].1.unwrap().top_k, 32);
    }
}
