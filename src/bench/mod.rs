//! `engram bench ...`: the engine's benchmarks, compiled into the CLI only (the library serves, the binary
//! measures). Each subcommand has its own arguments; the device is chosen once, by the engine's
//! [`on_device`](engram_engine::internals::start::on_device).

pub mod attention;
pub mod attribution;
pub mod engine;
pub mod h2o;
mod report;
pub mod speculative;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::start::{on_device, BackendTask};
use engram_engine::{BudgetPart, CudaConfig, DeviceSpec, KvBudget, StartError};
use serde::Serialize;
use std::path::PathBuf;

/// The benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill: the 64 long-tailed benchmark prompts (16-2,048 tokens, seed 42) prepacked, and long prompts.
    Prefill(PrefillArgs),
    /// Greedy decode at the given batch sizes after a prefill of 128-token prompts.
    Decode(DecodeArgs),
    /// Speculative decoding through the engine, greedy, against plain decoding: an oracle that always agrees
    /// (replay), a copy of the target as draft, a disagreeing draft (adaptive switch on and off), prompt lookup.
    Speculative(SpeculativeArgs),
    /// H2O heavy-hitter KV eviction against the full cache: KV memory, decode speed, and the KL divergence of the
    /// next-token distributions over the same (teacher-forced) tokens.
    H2o(H2oArgs),
    /// TextGenSHAP passage attribution (permutation Shapley): passages encoded once, against every coalition
    /// prompt scored alone (timed on a sample, scaled), and optionally the joint prepacked mode.
    Attribution(AttributionArgs),
    /// HiP sparse attention against dense attention: one layer's attention through the backend (decode and
    /// prefill, by context), prefill and decode through the engine, and passkey retrieval and KL divergence on a
    /// real model.
    Attention(attention::AttentionArgs),
}

/// Flags every benchmark takes.
#[derive(Args, Debug, Clone)]
pub struct BenchFlags {
    /// Model: a Hugging Face directory or `synthetic:NAME`.
    #[arg(long, default_value = "synthetic:llama-3-8b")]
    model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `engram bench prefill`.
#[derive(Args, Debug)]
pub struct PrefillArgs {
    #[command(flatten)]
    common: BenchFlags,
    /// Timed repetitions per configuration (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// `engram bench decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    common: BenchFlags,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    steps: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Also time every operation of 16 profiled steps (device events) and print the breakdown.
    #[arg(long)]
    profile: bool,
}

/// `engram bench speculative`.
#[derive(Args, Debug)]
pub struct SpeculativeArgs {
    #[command(flatten)]
    common: BenchFlags,
    /// A draft that disagrees with the target (same vocabulary).
    #[arg(long, default_value = "synthetic:llama-3.2-1b@7")]
    reject_draft: String,
    /// Sequences decoding together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Proposal lengths for the replay and copy-draft runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    k: Vec<usize>,
    /// Skip the copy-draft runs (they hold two copies of the target).
    #[arg(long)]
    no_copy_draft: bool,
    /// Timed repetitions per run, after the warm-up (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Real prompts instead of the synthetic ones: `/v1/qa`'s prompt over each question's passages in an
    /// `engram eval --predictions` file (the first `--qa-prompts-limit` lines); `--prompt-len` is then unused.
    #[arg(long)]
    qa_prompts: Option<PathBuf>,
    /// Most questions taken from `--qa-prompts`.
    #[arg(long, default_value_t = 20)]
    qa_prompts_limit: usize,
    /// Real draft models (same tokenizer as the target; repeat the flag for several), each run adaptive and with
    /// k = 4 fixed; on the CPU their dense weights are read as Q8_0 (`engine.speculative.draft_weights = auto`).
    #[arg(long)]
    draft: Vec<String>,
    /// Free-text prompts instead of the synthetic ones: the first `--text-prefix-tokens` tokens of each passage
    /// of a JSON corpus (`[{"title", "text"}]`, the first `--text-prompts-limit`), continued by the target.
    #[arg(long, conflicts_with = "qa_prompts")]
    text_prompts: Option<PathBuf>,
    /// Most passages taken from `--text-prompts`.
    #[arg(long, default_value_t = 20)]
    text_prompts_limit: usize,
    /// Tokens of each passage given as a free-text prompt.
    #[arg(long, default_value_t = 32)]
    text_prefix_tokens: usize,
    /// Only these runs besides `plain`, comma-separated: forced, replay, copy-draft, reject-draft, draft,
    /// prompt-lookup (default: all that apply).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// `engram bench h2o`.
#[derive(Args, Debug)]
pub struct H2oArgs {
    #[command(flatten)]
    common: BenchFlags,
    /// Sequences decoding together.
    #[arg(long, default_value_t = 32)]
    sequences: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 8192)]
    prompt_len: usize,
    /// Decode steps.
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// Heavy-hitter shares of the prompt, comma-separated (one budget per value, paired with --recent).
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    heavy: Vec<f64>,
    /// Recent-window shares of the prompt, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    recent: Vec<f64>,
    /// Tokens over the budget tolerated before evicting (default: what serving uses).
    #[arg(long, default_value_t = engram_engine::internals::runner::H2O_SLACK)]
    slack: usize,
    /// Prompt tokens per prefill pass.
    #[arg(long, default_value_t = 8192)]
    chunk: usize,
    /// Real prompts instead of random ones: `/v1/qa`'s prompt over each question's passages, from the JSON lines
    /// of `engram eval --predictions` (or `scripts/musique_subset.py --prompts`: every paragraph of a question).
    #[arg(long)]
    qa_prompts: Option<PathBuf>,
    /// Questions read from --qa-prompts (one sequence each; replaces --sequences and --prompt-len).
    #[arg(long, default_value_t = 8)]
    qa_prompts_limit: usize,
}

/// `engram bench attribution`.
#[derive(Args, Debug)]
pub struct AttributionArgs {
    #[command(flatten)]
    common: BenchFlags,
    /// Passage counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    passages: Vec<usize>,
    /// Tokens per passage.
    #[arg(long, default_value_t = 150)]
    passage_tokens: usize,
    /// Tokens before the passages (instruction and question).
    #[arg(long, default_value_t = 48)]
    prefix_tokens: usize,
    /// Tokens between the passages and the answer.
    #[arg(long, default_value_t = 8)]
    suffix_tokens: usize,
    /// Answer lengths in tokens, comma-separated (each measured with each passage count).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    answer_tokens: Vec<usize>,
    /// Permutations (sampled in antithetic pairs).
    #[arg(long, default_value_t = 128)]
    permutations: usize,
    /// Coalition prompts timed one by one for the baseline (scaled to all coalitions).
    #[arg(long, default_value_t = 64)]
    baseline_sample: usize,
    /// Also time the joint mode (every coalition prompt, prepacked, shared prefix computed once).
    #[arg(long)]
    joint: bool,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 16384)]
    capacity: usize,
    /// KV cache size in MiB.
    #[arg(long, default_value_t = 16384)]
    kv_cache_mib: usize,
}

/// Runs one benchmark: logging to stderr, the device resolved once (CUDA with `cuda`'s knobs), the table on
/// stdout, the JSON to `--out`.
pub fn run(what: BenchCommand, cuda: &CudaConfig) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let device = match &what {
        BenchCommand::Prefill(a) => a.common.device,
        BenchCommand::Decode(a) => a.common.device,
        BenchCommand::Speculative(a) => a.common.device,
        BenchCommand::H2o(a) => a.common.device,
        BenchCommand::Attribution(a) => a.common.device,
        BenchCommand::Attention(a) => a.device(),
    };
    on_device(device, cuda, what)?
}

impl BackendTask for BenchCommand {
    type Output = Result<()>;

    fn run<B: Backend + DeviceProbe>(
        self,
        backend: &dyn Fn() -> Result<B, StartError>,
    ) -> Result<()> {
        match self {
            BenchCommand::Prefill(a) => prefill(backend()?, &a),
            BenchCommand::Decode(a) => decode(backend()?, &a),
            BenchCommand::Speculative(a) => speculative(backend, &a),
            BenchCommand::H2o(a) => h2o(backend()?, &a),
            BenchCommand::Attribution(a) => attribution(backend()?, &a),
            BenchCommand::Attention(a) => attention::run(backend, &a),
        }
    }
}

/// Loads the benchmark's model, timed, and says where it runs.
fn load<B: Backend + DeviceProbe>(
    backend: B,
    spec: &str,
) -> Result<engram_engine::internals::llama::LlamaModel<B>> {
    let t = std::time::Instant::now();
    let (model, _, _) = engram_engine::internals::start::load_model(backend, spec)
        .with_context(|| format!("loading {spec}"))?;
    model.backend().synchronize()?;
    eprintln!(
        "model {spec} loaded in {:.1} s on {}",
        t.elapsed().as_secs_f64(),
        model.backend().device()
    );
    Ok(model)
}

fn prefill<B: Backend + DeviceProbe>(backend: B, a: &PrefillArgs) -> Result<()> {
    let model = load(backend, &a.common.model)?;
    let r = engine::bench_prefill(&model, &a.common.model, a.reps)?;
    report::prefill(&r);
    write_json(&a.common, &r)
}

fn decode<B: Backend + DeviceProbe>(backend: B, a: &DecodeArgs) -> Result<()> {
    let model = load(backend, &a.common.model)?;
    let r = engine::bench_decode(
        &model,
        &a.common.model,
        &a.batch,
        a.prompt_len,
        a.steps,
        a.profile,
    )?;
    report::decode(&r);
    write_json(&a.common, &r)
}

fn speculative<B: Backend + DeviceProbe>(
    backend: &dyn Fn() -> Result<B, StartError>,
    a: &SpeculativeArgs,
) -> Result<()> {
    let cfg = speculative::SpecBenchConfig {
        model: a.common.model.clone(),
        reject_draft: a.reject_draft.clone(),
        batch: a.batch,
        prompt_len: a.prompt_len,
        tokens: a.tokens,
        ks: a.k.clone(),
        copy_draft: !a.no_copy_draft,
        reps: a.reps,
        qa_prompts: a
            .qa_prompts
            .as_deref()
            .map(|path| speculative::read_qa_prompts(path, a.qa_prompts_limit))
            .transpose()?,
        drafts: a.draft.clone(),
        text_prompts: a
            .text_prompts
            .as_deref()
            .map(|path| speculative::read_text_prompts(path, a.text_prompts_limit))
            .transpose()?,
        text_prefix_tokens: a.text_prefix_tokens,
        only: a.only.clone(),
    };
    let r = speculative::bench_speculative(backend, &cfg)?;
    report::speculative(&r);
    write_json(&a.common, &r)
}

fn h2o<B: Backend + DeviceProbe>(backend: B, a: &H2oArgs) -> Result<()> {
    anyhow::ensure!(
        a.heavy.len() == a.recent.len(),
        "--heavy and --recent need as many values"
    );
    let budgets: Vec<KvBudget> = a
        .heavy
        .iter()
        .zip(&a.recent)
        .map(|(&h, &r)| KvBudget {
            heavy: BudgetPart::Ratio(h),
            recent: BudgetPart::Ratio(r),
        })
        .collect();
    for b in &budgets {
        b.validate().map_err(anyhow::Error::msg)?;
    }
    let cfg = h2o::H2oBenchConfig {
        model: a.common.model.clone(),
        sequences: a.sequences,
        prompt_len: a.prompt_len,
        steps: a.steps,
        budgets,
        slack: a.slack,
        chunk: a.chunk,
        qa_prompts: a
            .qa_prompts
            .as_deref()
            .map(|path| speculative::read_qa_prompts(path, a.qa_prompts_limit))
            .transpose()?,
    };
    let r = h2o::bench_h2o(backend, &cfg)?;
    report::h2o(&r);
    write_json(&a.common, &r)
}

fn attribution<B: Backend + DeviceProbe>(backend: B, a: &AttributionArgs) -> Result<()> {
    let cfg = attribution::AttributionBenchConfig {
        model: a.common.model.clone(),
        passages: a.passages.clone(),
        passage_tokens: a.passage_tokens,
        prefix_tokens: a.prefix_tokens,
        suffix_tokens: a.suffix_tokens,
        answer_tokens: a.answer_tokens.clone(),
        permutations: a.permutations,
        baseline_sample: a.baseline_sample,
        joint: a.joint,
        capacity: a.capacity,
        kv_cache_mib: a.kv_cache_mib,
    };
    let r = attribution::bench_attribution(backend, &cfg)?;
    report::attribution(&r);
    write_json(&a.common, &r)
}

/// Writes the report as JSON to `--out`, when given.
fn write_json(common: &BenchFlags, report: &impl Serialize) -> Result<()> {
    if let Some(out) = &common.out {
        std::fs::write(out, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
