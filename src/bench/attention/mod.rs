//! `engram bench attention`: HiP sparse attention ([`engram_engine::HipParams`], arXiv 2406.09827) against dense
//! attention, in three parts, each selectable (`--part kernel,engine,accuracy` or `--kernel`, `--engine`,
//! `--accuracy`):
//! - [`kernel`]: one layer's attention through the [`Backend`] trait on random data in a paged KV cache, decode
//!   (one query row per sequence) and prefill (a chunk of rows at the end of the context), timed;
//! - [`e2e`]: prefill and decode through the engine ([`engram_engine::Generator`]), per request's `attention`;
//! - [`accuracy`]: passkey retrieval and the KL divergence of the next-token distributions on a real model.
//!
//! HiP's parameters come from the flags (`--min-context` defaults to 0 here, so sparse attention always engages).
//! The JSON report (`--out`) is rewritten after each part (and each accuracy length), so a long run that stops
//! keeps what it measured.

pub mod accuracy;
pub mod e2e;
pub mod kernel;
pub mod plan;
mod report;
pub mod runner;
pub mod text;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::Backend;
use engram_engine::{DeviceSpec, HipParams, StartError};

/// The real model the accuracy part defaults to (`bash scripts/fetch-model.sh` fetches it).
pub const DEFAULT_ACCURACY_MODEL: &str = "qwen2.5-coder-0.5b-instruct-awq.q4_k_m.gguf";

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// One layer's attention through the backend.
    Kernel,
    /// Prefill and decode through the engine.
    Engine,
    /// Passkey retrieval and KL divergence on a real model.
    Accuracy,
}

/// A shape of the kernel part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// One query row per sequence at the end of its context.
    Decode,
    /// One chunk of query rows attending causally to the context.
    Prefill,
}

/// HiP's parameters as flags (the defaults are [`HipParams::default`]'s, but `--min-context` 0).
#[derive(Args, Debug, Clone)]
pub struct HipFlags {
    /// Key blocks each query block keeps besides the sink and the recent window.
    #[arg(long, default_value_t = 32)]
    pub top_k: usize,
    /// Query rows sharing one search.
    #[arg(long, default_value_t = 64)]
    pub block_q: usize,
    /// Keys per key block.
    #[arg(long, default_value_t = 64)]
    pub block_k: usize,
    /// Tokens at the start always attended.
    #[arg(long = "sink", default_value_t = 64)]
    pub sink_tokens: usize,
    /// Latest tokens always attended.
    #[arg(long = "recent", default_value_t = 512)]
    pub recent_tokens: usize,
    /// HiP engages for contexts longer than this (0: always).
    #[arg(long, default_value_t = 0)]
    pub min_context: usize,
}

impl HipFlags {
    /// The parameters, checked.
    pub fn params(&self) -> Result<HipParams> {
        let p = HipParams {
            block_q: self.block_q,
            block_k: self.block_k,
            top_k: self.top_k,
            sink_tokens: self.sink_tokens,
            recent_tokens: self.recent_tokens,
            min_context: self.min_context,
        };
        p.validate()?;
        Ok(p)
    }
}

/// `engram bench attention`.
#[derive(Args, Debug, Clone)]
pub struct AttentionArgs {
    /// Parts to run, comma-separated: kernel, engine, accuracy (the flags --kernel, --engine, --accuracy add to it).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub part: Vec<Part>,
    /// Run the kernel part.
    #[arg(long)]
    pub kernel: bool,
    /// Run the engine part.
    #[arg(long)]
    pub engine: bool,
    /// Run the accuracy part.
    #[arg(long)]
    pub accuracy: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Also write the report as JSON to this file (rewritten as parts finish).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Model of the engine and accuracy parts: `synthetic:NAME[@SEED]`, a model directory or a GGUF file (default:
    /// synthetic:llama-3-8b on CUDA and synthetic:qwen2.5-0.5b on the CPU for the engine part;
    /// ~/.cache/engram/models/qwen2.5-coder-0.5b-instruct-awq.q4_k_m.gguf for the accuracy part).
    #[arg(long)]
    pub model: Option<String>,
    /// HiP's parameters.
    #[command(flatten)]
    pub hip: HipFlags,
    /// Seed of the random data, keys and filler.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Kernel and engine parts: context lengths in tokens, comma-separated, `k` and `M` suffixes allowed (default:
    /// 8k,32k,128k,256k,512k,1M on CUDA, 2k,8k on the CPU for the kernel part; 8k,32k,128k on CUDA, 1k,2k on the
    /// CPU for the engine part).
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    pub contexts: Vec<usize>,
    /// Kernel part: sequences decoding together (one query row each).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Kernel part: query rows of the prefill chunk, at the end of the context (default: the whole context).
    #[arg(long, value_parser = parse_count)]
    pub prefill_rows: Option<usize>,
    /// Kernel part: which shapes to time, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "decode,prefill"
    )]
    pub phases: Vec<Phase>,
    /// Kernel part: query heads.
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    /// Kernel part: key/value heads.
    #[arg(long, default_value_t = 8)]
    pub kv_heads: usize,
    /// Kernel part: dimension of a head.
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// Kernel part: tokens per KV cache block (the engine's default).
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
    /// Kernel part: timed repetitions (median reported; default 5 on CUDA, 3 on the CPU).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Kernel part: untimed runs before the repetitions.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Kernel part: contexts longer than this time only HiP.
    #[arg(long, value_parser = parse_count)]
    pub skip_dense_above: Option<usize>,
    /// Engine part: new tokens per request (greedy).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Engine part: tokens per engine step (the prefill chunk).
    #[arg(long, default_value_t = 512)]
    pub token_budget: usize,
    /// Engine part: timed requests per context and attention (median reported).
    #[arg(long, default_value_t = 1)]
    pub engine_reps: usize,
    /// Accuracy part: prompt lengths in tokens, comma-separated (`k` suffix allowed).
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "2048,4096,8192,16384,32000")]
    pub lengths: Vec<usize>,
    /// Accuracy part: HiP's top_k values compared with dense attention, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub top_k_list: Vec<usize>,
    /// Accuracy part: depths of the key sentence in the filler (0 to 1), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    pub depths: Vec<f64>,
    /// Accuracy part: passkey prompts per length and depth.
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Accuracy part: greedy tokens of each passkey answer.
    #[arg(long, default_value_t = 12)]
    pub answer_tokens: usize,
    /// Accuracy part: positions (the last ones of each prompt) whose next-token distributions are compared.
    #[arg(long, default_value_t = 128)]
    pub kl_positions: usize,
    /// Accuracy part: the KL document's text (plain text, or a JSON corpus `[{"title", "text"}]` whose texts are
    /// joined), repeated to length; default: varied filler sentences.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Accuracy part: prompt tokens per forward pass (the engine's token budget).
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Accuracy part: skip passkey retrieval.
    #[arg(long)]
    pub no_passkey: bool,
    /// Accuracy part: skip the KL divergence.
    #[arg(long)]
    pub no_kl: bool,
}

/// A count of tokens: digits, optionally with a `k` (×1024) or `M` (×1024²) suffix (`8k`, `128k`, `1M`).
pub fn parse_count(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1024),
        Some((i, 'm' | 'M')) => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    digits
        .parse::<usize>()
        .map(|n| n * unit)
        .map_err(|_| format!("{s:?} is not a token count (digits, optionally followed by k or M)"))
}

impl AttentionArgs {
    /// The parts asked for, in the order they run.
    pub fn parts(&self) -> Result<Vec<Part>> {
        let asked = |p: Part| self.part.contains(&p);
        let parts: Vec<Part> = [
            (Part::Kernel, self.kernel || asked(Part::Kernel)),
            (Part::Engine, self.engine || asked(Part::Engine)),
            (Part::Accuracy, self.accuracy || asked(Part::Accuracy)),
        ]
        .into_iter()
        .filter_map(|(p, on)| on.then_some(p))
        .collect();
        anyhow::ensure!(
            !parts.is_empty(),
            "choose a part: --kernel, --engine, --accuracy or --part kernel,engine,accuracy"
        );
        Ok(parts)
    }

    /// The device the benchmark runs on.
    pub fn device(&self) -> DeviceSpec {
        self.device
    }
}

/// The report: each part that ran.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AttentionReport {
    /// The kernel part.
    pub kernel: Option<kernel::KernelReport>,
    /// The engine part.
    pub engine: Option<e2e::EngineReport>,
    /// The accuracy part.
    pub accuracy: Option<accuracy::AccuracyReport>,
    /// Wall seconds of each part that finished.
    pub part_seconds: Vec<(Part, f64)>,
}

/// Runs the parts asked for on the device of `backend`.
pub fn run<B: Backend + DeviceProbe>(
    backend: &dyn Fn() -> Result<B, StartError>,
    a: &AttentionArgs,
) -> Result<()> {
    let parts = a.parts()?;
    let hip = a.hip.params()?;
    let mut r = AttentionReport::default();
    for part in parts {
        let t = Instant::now();
        match part {
            Part::Kernel => {
                let b = backend()?;
                let cfg = kernel::KernelConfig::from_args(a, hip, b.name() == "cpu");
                let k = kernel::bench_kernel(&b, &cfg)?;
                report::kernel(&k);
                r.kernel = Some(k);
            }
            Part::Engine => {
                let probe = backend()?;
                let cfg = e2e::EngineBenchConfig::from_args(a, hip, probe.name() == "cpu");
                let e = e2e::bench_engine(&probe, backend, &cfg)?;
                report::engine(&e);
                r.engine = Some(e);
            }
            Part::Accuracy => {
                let cfg = accuracy::AccuracyConfig::from_args(a, hip)?;
                let out = a.out.clone();
                let so_far = r.clone();
                let acc = accuracy::bench_accuracy(
                    backend,
                    &cfg,
                    &mut |partial: &accuracy::AccuracyReport| {
                        let mut snapshot = so_far.clone();
                        snapshot.accuracy = Some(partial.clone());
                        write_json(out.as_ref(), &snapshot)
                    },
                )?;
                report::accuracy(&acc);
                r.accuracy = Some(acc);
            }
        }
        let seconds = t.elapsed().as_secs_f64();
        eprintln!("attention bench: {part:?} part took {seconds:.1} s");
        r.part_seconds.push((part, seconds));
        write_json(a.out.as_ref(), &r)?;
    }
    Ok(())
}

/// Writes the report as JSON to `out`, when given.
fn write_json(out: Option<&PathBuf>, report: &impl Serialize) -> Result<()> {
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Restarts peak-memory tracking: the device's where it tracks it, else the process's peak resident set (Linux:
/// `/proc/self/clear_refs`).
pub fn reset_peak<B: DeviceProbe>(b: &B) {
    b.reset_peak();
    if b.peak_bytes().is_none() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

/// Peak bytes since [`reset_peak`]: the device's, else the process's peak resident set (`VmHWM`).
pub fn read_peak<B: DeviceProbe>(b: &B) -> Option<u64> {
    b.peak_bytes().or_else(peak_rss)
}

/// What [`read_peak`] measures on this backend.
pub fn peak_kind<B: DeviceProbe>(b: &B) -> &'static str {
    if b.peak_bytes().is_some() {
        "device memory (pool high-water mark)"
    } else {
        "process peak resident set (VmHWM)"
    }
}

/// The process's peak resident set in bytes (`VmHWM` of `/proc/self/status`).
fn peak_rss() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Bytes of host memory available (`MemAvailable` of `/proc/meminfo`).
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemAvailable:").map(|k| k * 1024)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The median of `x` (the upper one of an even count); 0 when empty.
pub fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: AttentionArgs,
    }

    fn parse(args: &[&str]) -> Result<AttentionArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("attention").chain(args.iter().copied())).map(|c| c.a)
    }

    #[test]
    fn token_counts_take_k_and_m_suffixes() {
        assert_eq!(parse_count("8192"), Ok(8192));
        assert_eq!(parse_count("8k"), Ok(8192));
        assert_eq!(parse_count("128K"), Ok(131072));
        assert_eq!(parse_count("1M"), Ok(1 << 20));
        assert_eq!(parse_count(" 32000 "), Ok(32000));
        assert!(parse_count("8x").is_err());
        assert!(parse_count("k").is_err());
        assert!(parse_count("").is_err());
    }

    #[test]
    fn lists_and_parts_parse() {
        let a = parse(&[
            "--kernel",
            "--part",
            "accuracy",
            "--contexts",
            "2k,8192,1M",
            "--top-k-list",
            "8,32",
            "--depths",
            "0.1,0.9",
            "--phases",
            "decode",
            "--skip-dense-above",
            "256k",
        ])
        .unwrap();
        assert_eq!(a.parts().unwrap(), vec![Part::Kernel, Part::Accuracy]);
        assert_eq!(a.contexts, vec![2048, 8192, 1 << 20]);
        assert_eq!(a.top_k_list, vec![8, 32]);
        assert_eq!(a.depths, vec![0.1, 0.9]);
        assert_eq!(a.phases, vec![Phase::Decode]);
        assert_eq!(a.skip_dense_above, Some(256 * 1024));
        assert_eq!(a.lengths, vec![2048, 4096, 8192, 16384, 32000]);
        assert!(parse(&[]).unwrap().parts().is_err());
        assert!(parse(&["--kernel", "--contexts", "8q"]).is_err());
    }

    #[test]
    fn hip_flags_default_to_the_engine_defaults_but_always_engage() {
        let p = parse(&["--kernel"]).unwrap().hip.params().unwrap();
        assert_eq!(
            p,
            HipParams {
                min_context: 0,
                ..HipParams::default()
            }
        );
        let bad = parse(&["--kernel", "--top-k", "0"]).unwrap();
        assert!(bad.hip.params().is_err());
    }

    #[test]
    fn meminfo_fields_are_read_in_kib() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   1234 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(1234));
        assert_eq!(kib_field(text, "VmHWM:"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
