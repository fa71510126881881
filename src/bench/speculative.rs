//! `engram bench speculative`: speculative decoding through the real engine (scheduler, verification, switch),
//! greedy, against plain decoding in the same process.
//!
//! Runs, each on a fresh engine after a warm-up pass with the same requests (so kernel compilation and GEMM
//! tuning are not timed), timed `reps` times (median reported):
//! - `plain`: no speculation (the baseline; its outputs are the reference).
//! - `forced k=K`: guesses (the baseline's continuation) kept without checking, guessing free: what a step costs
//!   with a proposer that always agrees and costs nothing, the upper bound of the mechanism (K + 1 tokens per
//!   target step, against the cost of K more rows in the pass).
//! - `replay k=K`: the same guesses, verified: a proposer that agrees as long as the speculative passes compute
//!   the same argmax as plain decoding (on random bf16 weights, whose top logits are nearly tied, the different
//!   kernels of a k + 1-row pass soon pick another token, and from there the replayed guesses miss).
//! - `copy-draft k=K`: the draft is a second copy of the target, so it always agrees but costs a full model.
//! - `reject-draft`: a draft that disagrees (other random weights), with the adaptive switch (and once with `k`
//!   fixed, without it): what speculation costs when nothing is accepted.
//! - `prompt-lookup`: n-gram guesses from the prompt and output.
//! - `plain (again)`: the baseline once more, last, as a measure of run-to-run noise.
//!
//! Random weights say nothing about the acceptance rates of real models; the same command on a real target and
//! draft (`--model DIR --reject-draft DIR`) measures them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::engine::BenchError;
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::generator::{GenerationEvent, GenerationRequest, Generator, Usage};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::runner::{Engine, EngineConfig};
use engram_engine::internals::sampling::SamplingParams;
use engram_engine::internals::speculative::draft::DraftModel;
use engram_engine::internals::speculative::speculator::{Proposer, Speculator};
use engram_engine::internals::speculative::{SpeculationMethod, SpeculativeConfig};
use engram_engine::internals::start::{load_draft, load_model};
use engram_engine::internals::workload::{prompt_lengths, prompt_tokens};
use engram_engine::DraftWeights;
use engram_engine::StartError;

/// What to run.
#[derive(Debug, Clone)]
pub struct SpecBenchConfig {
    /// Target model spec.
    pub model: String,
    /// A draft that disagrees with the target (same vocabulary).
    pub reject_draft: String,
    /// Sequences decoding together.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// New tokens per sequence.
    pub tokens: usize,
    /// Proposal lengths for the replay and copy-draft runs.
    pub ks: Vec<usize>,
    /// Whether to run the copy-draft runs (two copies of the target in memory).
    pub copy_draft: bool,
    /// Timed repetitions per run (the median is reported).
    pub reps: usize,
    /// Real QA prompts (the target's `/v1/qa` prompt over each one's passages) instead of synthetic ones.
    pub qa_prompts: Option<Vec<QaPrompt>>,
    /// Real draft models, each run adaptive and with k = 4 fixed.
    pub drafts: Vec<String>,
    /// Free-text passages whose first `text_prefix_tokens` tokens are the prompts.
    pub text_prompts: Option<Vec<String>>,
    /// Tokens of each free-text prompt.
    pub text_prefix_tokens: usize,
    /// Only these kinds of run besides `plain` (empty: all).
    pub only: Vec<String>,
}

/// A question and its retrieved passages (title, text), as `engram eval --predictions` records them.
#[derive(Debug, Clone)]
pub struct QaPrompt {
    /// The question.
    pub question: String,
    /// The passages, in rank order.
    pub passages: Vec<(String, String)>,
}

/// What the benchmark reads of a line of `engram eval --predictions`.
#[derive(serde::Deserialize)]
struct PredictionLine {
    question: String,
    passages: Vec<engram::eval::EvalPassage>,
}

/// The first `limit` questions of an `engram eval --predictions` file.
pub fn read_qa_prompts(path: &std::path::Path, limit: usize) -> Result<Vec<QaPrompt>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .enumerate()
        .map(|(i, line)| {
            let o: PredictionLine = serde_json::from_str(line).map_err(|e| {
                BenchError::Setup(format!("{} line {}: {e}", path.display(), i + 1))
            })?;
            Ok(QaPrompt {
                question: o.question,
                passages: o.passages.into_iter().map(|p| (p.title, p.text)).collect(),
            })
        })
        .collect()
}

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct SpecRun {
    /// What ran.
    pub label: String,
    /// Seconds from submitting the batch to the last token (prefill included), median of the repetitions.
    pub seconds: f64,
    /// Completion tokens of all sequences.
    pub tokens: usize,
    /// tokens / seconds.
    pub tokens_per_s: f64,
    /// Against `plain` (above 1: faster).
    pub speedup: f64,
    /// Tokens after each sequence's first, per second of decoding (from its first token to its last, summed
    /// over sequences; with one sequence at a time this leaves the prompt's prefill out), median of the reps.
    pub decode_tokens_per_s: f64,
    /// `decode_tokens_per_s` against `plain`'s.
    pub decode_speedup: f64,
    /// Completion tokens per target pass, per sequence.
    pub tokens_per_target_step: f64,
    /// Accepted / proposed guesses (0 when none were proposed).
    pub acceptance_rate: f64,
    /// Guesses proposed.
    pub proposed: usize,
    /// Sequences whose output equals the plain run's, token for token.
    pub identical_outputs: usize,
    /// Mean number of leading tokens each sequence shares with the plain run's output.
    pub agreeing_prefix: f64,
    /// Sequences generated (the batch, or the number of QA prompts).
    pub sequences: usize,
    /// Tokens of the longest prompt.
    pub longest_prompt: usize,
}

/// `engram bench speculative`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct SpecReport {
    /// Device.
    pub device: String,
    /// Target model.
    pub model: String,
    /// The disagreeing draft.
    pub reject_draft: String,
    /// Sequences.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// New tokens per sequence asked for.
    pub tokens: usize,
    /// The runs, `plain` first.
    pub runs: Vec<SpecRun>,
}

/// How a run proposes.
enum Mode<'a> {
    Plain,
    Replay(usize, &'a [Vec<u32>]),
    Forced(usize, &'a [Vec<u32>]),
    Draft {
        spec: &'a str,
        k: usize,
        adaptive: bool,
    },
    Lookup,
}

/// Runs the benchmark; `backend()` makes a backend instance per model (on one device).
pub fn bench_speculative<B: Backend + DeviceProbe>(
    backend: &dyn Fn() -> Result<B, StartError>,
    cfg: &SpecBenchConfig,
) -> Result<SpecReport, BenchError> {
    let device = backend()?.device();
    let (plain, reference) = run(backend, cfg, Mode::Plain, None)?;
    eprintln!("plain: {:.1} tokens/s", plain.tokens_per_s);
    let base_rate = plain.tokens_per_s;
    let base_decode = plain.decode_tokens_per_s;
    let mut runs = vec![plain];
    let wanted = |kind: &str| cfg.only.is_empty() || cfg.only.iter().any(|o| o == kind);
    let mut modes: Vec<(String, Mode<'_>)> = Vec::new();
    for &k in cfg.ks.iter().filter(|_| wanted("forced")) {
        modes.push((format!("forced k={k}"), Mode::Forced(k, &reference)));
    }
    for &k in cfg.ks.iter().filter(|_| wanted("replay")) {
        modes.push((format!("replay k={k}"), Mode::Replay(k, &reference)));
    }
    if cfg.copy_draft && wanted("copy-draft") {
        for &k in &cfg.ks {
            modes.push((
                format!("copy-draft k={k}"),
                Mode::Draft {
                    spec: &cfg.model,
                    k,
                    adaptive: false,
                },
            ));
        }
    }
    let mut drafts = Vec::new();
    if wanted("reject-draft") {
        drafts.push(("reject-draft", cfg.reject_draft.as_str()));
    }
    let named: Vec<(String, &str)> = cfg
        .drafts
        .iter()
        .filter(|_| wanted("draft"))
        .map(|d| (format!("draft {}", draft_name(d)), d.as_str()))
        .collect();
    drafts.extend(named.iter().map(|(n, d)| (n.as_str(), *d)));
    for (name, spec) in drafts {
        for adaptive in [true, false] {
            let label = if adaptive { "adaptive" } else { "k=4 fixed" };
            modes.push((
                format!("{name} {label}"),
                Mode::Draft {
                    spec,
                    k: 4,
                    adaptive,
                },
            ));
        }
    }
    if wanted("prompt-lookup") {
        modes.push(("prompt-lookup adaptive".into(), Mode::Lookup));
    }
    // Plain decoding once more, last: how much the same run varies within the process.
    modes.push(("plain (again)".into(), Mode::Plain));
    for (label, mode) in modes {
        let (mut r, _) = run(backend, cfg, mode, Some(&reference))?;
        r.label = label;
        r.speedup = r.tokens_per_s / base_rate;
        r.decode_speedup = r.decode_tokens_per_s / base_decode;
        eprintln!(
            "{}: {:.1} tokens/s ({:.3}x), decode {:.1} tokens/s ({:.3}x), {:.2} tokens per target step, \
             acceptance {:.3}, identical {}, agreeing prefix {:.1}",
            r.label,
            r.tokens_per_s,
            r.speedup,
            r.decode_tokens_per_s,
            r.decode_speedup,
            r.tokens_per_target_step,
            r.acceptance_rate,
            r.identical_outputs,
            r.agreeing_prefix
        );
        runs.push(r);
    }
    Ok(SpecReport {
        device,
        model: cfg.model.clone(),
        reject_draft: cfg.reject_draft.clone(),
        batch: cfg.batch,
        prompt_len: cfg.prompt_len,
        tokens: cfg.tokens,
        runs,
    })
}

/// A short name for a draft spec: its last two path components (`out/stage1` → `out/stage1`).
fn draft_name(spec: &str) -> String {
    let parts: Vec<&str> = spec.trim_end_matches('/').rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// The passages' texts of a JSON corpus (`[{"title", "text"}]`), the first `limit`.
pub fn read_text_prompts(path: &std::path::Path, limit: usize) -> Result<Vec<String>, BenchError> {
    #[derive(serde::Deserialize)]
    struct Passage {
        #[serde(default)]
        title: String,
        text: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    let passages: Vec<Passage> = serde_json::from_str(&text)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    Ok(passages
        .into_iter()
        .take(limit)
        .map(|p| format!("{}\n{}", p.title, p.text))
        .collect())
}

/// Each text's first `prefix` tokens in the target's tokenizer.
fn text_prompt_tokens(
    texts: &[String],
    prefix: usize,
    tokenizer: &engram_engine::ModelTokenizer,
) -> Result<Vec<Vec<u32>>, BenchError> {
    texts
        .iter()
        .map(|t| {
            let mut ids = tokenizer
                .encode(t, false)
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            ids.truncate(prefix.max(1));
            Ok(ids)
        })
        .collect()
}

/// The decode benchmark's prompts, cut or padded to `prompt_len`, for a vocabulary of `vocab`.
fn bench_prompts(cfg: &SpecBenchConfig, vocab: usize) -> Vec<Vec<u32>> {
    let base = prompt_tokens(&prompt_lengths(64, 16, 2048, 42), vocab);
    (0..cfg.batch)
        .map(|i| {
            let mut p: Vec<u32> = base[i % base.len()]
                .iter()
                .copied()
                .take(cfg.prompt_len)
                .collect();
            p.resize(cfg.prompt_len, 5);
            p
        })
        .collect()
}

/// `/v1/qa`'s prompt (every passage) for each question, in the target's tokenizer.
pub fn qa_prompt_tokens(
    qa: &[QaPrompt],
    tokenizer: &engram_engine::ModelTokenizer,
) -> Result<Vec<Vec<u32>>, BenchError> {
    qa.iter()
        .map(|q| {
            let all = engram::attribution::all_players(q.passages.len());
            engram::qa::generated::prompt_ids_with(tokenizer, &q.question, &q.passages, all)
                .map_err(BenchError::Setup)
        })
        .collect()
}

/// MiB of KV cache `model` needs for the benchmark's sequences of prompts up to `longest` tokens (with room for
/// guesses), with a margin.
fn kv_mib<B: Backend>(
    model: &LlamaModel<B>,
    cfg: &SpecBenchConfig,
    longest: usize,
    block_size: usize,
) -> usize {
    let per_seq = (longest + cfg.tokens + 40).div_ceil(block_size) + 1;
    let bytes = model.kv_layout(cfg.batch * per_seq, block_size).bytes_f32();
    (bytes * 5 / 4).div_ceil(1 << 20).max(1)
}

/// One engine run (warm-up, then timed): its result and each sequence's output.
fn run<B: Backend + DeviceProbe>(
    backend: &dyn Fn() -> Result<B, StartError>,
    cfg: &SpecBenchConfig,
    mode: Mode<'_>,
    reference: Option<&[Vec<u32>]>,
) -> Result<(SpecRun, Vec<Vec<u32>>), BenchError> {
    let (model, tokenizer, name) = load_model(backend()?, &cfg.model)?;
    let prompts = &match (&cfg.qa_prompts, &cfg.text_prompts) {
        (Some(qa), _) => qa_prompt_tokens(qa, &tokenizer)?,
        (None, Some(texts)) => text_prompt_tokens(texts, cfg.text_prefix_tokens, &tokenizer)?,
        (None, None) => bench_prompts(cfg, model.config().vocab_size),
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(cfg.prompt_len);
    let mut engine_config = EngineConfig {
        max_sequences: cfg.batch.max(1),
        token_budget: (cfg.batch * 16).max(longest + 64).max(512),
        ..EngineConfig::default()
    };
    engine_config.kv_cache_mib = kv_mib(&model, cfg, longest, engine_config.block_size);
    let spec_config = |k: usize, adaptive: bool, method| SpeculativeConfig {
        method,
        k,
        max_k: k.max(8),
        adaptive,
        ..SpeculativeConfig::default()
    };
    let forced = matches!(mode, Mode::Forced(..));
    let spec: Option<Speculator<B>> = match mode {
        Mode::Plain => None,
        Mode::Replay(k, outputs) | Mode::Forced(k, outputs) => {
            let known: HashMap<Vec<u32>, Vec<u32>> = prompts
                .iter()
                .cloned()
                .zip(outputs.iter().cloned())
                .collect();
            // The method field is not consulted with an explicit proposer.
            let s = Speculator::new(
                SpeculativeConfig {
                    max_k: k,
                    ..spec_config(k, false, SpeculationMethod::Draft)
                },
                Proposer::Replay(known),
            );
            Some(if forced { s.forcing_acceptance() } else { s })
        }
        Mode::Draft { spec, k, adaptive } => {
            let (draft, _, _) = load_draft(backend()?, spec, DraftWeights::Auto)?;
            let config = SpeculativeConfig {
                max_k: if adaptive { 8 } else { k },
                draft_model: Some(spec.to_string()),
                ..spec_config(k, adaptive, SpeculationMethod::Draft)
            };
            let mib = kv_mib(&draft, cfg, longest, engine_config.block_size);
            let mut draft = DraftModel::new(draft, mib, engine_config.block_size)?;
            draft.warm_up(engine_config.token_budget.max(2048))?;
            Speculator::from_config(&config, Some(draft)).map_err(BenchError::Setup)?
        }
        Mode::Lookup => Some(Speculator::new(
            spec_config(4, true, SpeculationMethod::PromptLookup),
            Proposer::Lookup,
        )),
    };
    let engine = Engine::start_with(model, spec, Arc::new(tokenizer), name, &engine_config)?;
    // Warm-up: the same requests, so that the timed run meets no new product shape (cuBLASLt tunes each row
    // count up to 128 at its first call, on each backend instance).
    generate(&engine, prompts, cfg.tokens)?;
    // Timed repetitions on the same engine; the median time, the last repetition's outputs and counts.
    let mut times = Vec::with_capacity(cfg.reps.max(1));
    let mut decode_times = Vec::with_capacity(cfg.reps.max(1));
    let mut results = Vec::new();
    for _ in 0..cfg.reps.max(1) {
        let t = Instant::now();
        let timed = generate(&engine, prompts, cfg.tokens)?;
        times.push(t.elapsed().as_secs_f64());
        decode_times.push(timed.iter().map(|r| r.2).sum::<f64>());
        results = timed.into_iter().map(|r| (r.0, r.1)).collect();
    }
    times.sort_by(f64::total_cmp);
    decode_times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let decode_seconds = decode_times[decode_times.len() / 2];
    let tokens: usize = results.iter().map(|r| r.1.completion_tokens).sum();
    let decode_tokens: usize = results
        .iter()
        .map(|r| r.1.completion_tokens.saturating_sub(1))
        .sum();
    let steps: usize = results.iter().map(|r| r.1.target_steps).sum();
    let proposed: usize = results.iter().map(|r| r.1.proposed_tokens).sum();
    let accepted: usize = results.iter().map(|r| r.1.accepted_tokens).sum();
    let outputs: Vec<Vec<u32>> = results.into_iter().map(|r| r.0).collect();
    let identical = reference.map_or(outputs.len(), |reference| {
        outputs
            .iter()
            .zip(reference)
            .filter(|(a, b)| a == b)
            .count()
    });
    let agreeing = reference.map_or(tokens, |reference| {
        outputs
            .iter()
            .zip(reference)
            .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
            .sum()
    });
    Ok((
        SpecRun {
            label: "plain".into(),
            seconds,
            tokens,
            tokens_per_s: tokens as f64 / seconds,
            speedup: 1.0,
            decode_tokens_per_s: decode_tokens as f64 / decode_seconds.max(1e-9),
            decode_speedup: 1.0,
            tokens_per_target_step: tokens as f64 / steps.max(1) as f64,
            acceptance_rate: if proposed > 0 {
                accepted as f64 / proposed as f64
            } else {
                0.0
            },
            proposed,
            identical_outputs: identical,
            agreeing_prefix: agreeing as f64 / outputs.len().max(1) as f64,
            sequences: outputs.len(),
            longest_prompt: longest,
        },
        outputs,
    ))
}

/// One request's output, usage and seconds from its first token to its end.
type Timed = (Vec<u32>, Usage, f64);

/// Submits every prompt greedily for `max_tokens` and waits for all: each output, usage and decode time, in
/// order.
fn generate(
    engine: &Engine,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> Result<Vec<Timed>, BenchError> {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    };
    let receivers = prompts
        .iter()
        .map(|p| engine.submit(GenerationRequest::new(p.clone(), params.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    // Wait on a thread of our own: the caller may be inside an async runtime, where blocking is not allowed.
    std::thread::scope(|scope| {
        scope
            .spawn(move || collect(receivers))
            .join()
            .map_err(|_| BenchError::Setup("the collecting thread panicked".into()))?
    })
}

/// Each request's tokens, usage and decode seconds, in order.
fn collect(
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>>,
) -> Result<Vec<Timed>, BenchError> {
    let mut out = Vec::with_capacity(receivers.len());
    for mut rx in receivers {
        let mut tokens = Vec::new();
        let mut first: Option<Instant> = None;
        loop {
            match rx.blocking_recv() {
                Some(GenerationEvent::Token(t)) => {
                    first.get_or_insert_with(Instant::now);
                    tokens.push(t.token);
                }
                Some(GenerationEvent::Done { usage, .. }) => {
                    let decode = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                    out.push((tokens, usage, decode));
                    break;
                }
                Some(GenerationEvent::Failed(e)) => return Err(BenchError::Setup(e)),
                None => return Err(BenchError::Setup("the engine stopped".into())),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qa_prompts_come_from_prediction_lines_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.jsonl");
        let line = |q: &str| {
            format!(
                r#"{{"question":"{q}","answers":["x"],"recall@5":1.0,"prediction":null,"exact_match":0.0,"f1":0.0,"passages":[{{"title":"T","text":"Body of {q}."}}],"retriever":"bm25"}}"#
            )
        };
        std::fs::write(
            &path,
            format!("{}\n\n{}\n", line("first?"), line("second?")),
        )
        .unwrap();
        let all = read_qa_prompts(&path, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].question, "second?");
        assert_eq!(
            all[0].passages,
            vec![("T".to_string(), "Body of first?.".to_string())]
        );
        assert_eq!(read_qa_prompts(&path, 1).unwrap().len(), 1);
        std::fs::write(&path, format!("{}\nnot json\n", line("q"))).unwrap();
        let err = read_qa_prompts(&path, 10).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
