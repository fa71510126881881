//! CPU engine benchmark (synthetic random-weight models of real shapes): prepacked against padded batch prefill
//! on a batch with high length variance (the Prepacking paper's setting), time and peak memory, and decode
//! throughput.
//!
//! Run: `cargo bench --bench engine [-- MODEL...]` (default `tiny qwen2.5-0.5b`).

use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::model::ModelFiles;
use engram_engine::internals::prefill::{decode_step, prefill_padded, prefill_prepacked};
use std::time::Instant;

/// Peak resident memory since the last reset, MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn reset_peak() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Long-tailed lengths in [lo, hi] (fixed seed): the generator `engram bench` and the transformers baseline use.
fn lengths(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    engram_engine::internals::workload::prompt_lengths(n, lo, hi, seed)
}

fn prompts(lens: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    engram_engine::internals::workload::prompt_tokens(lens, vocab)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: they only need to build there.
        println!("not run: benchmarks run under `cargo bench`");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let models = if args.is_empty() {
        vec!["tiny".to_string(), "qwen2.5-0.5b".to_string()]
    } else {
        args
    };
    for name in models {
        let started = Instant::now();
        let files = ModelFiles::load(&format!("synthetic:{name}")).expect("synthetic model");
        let model = LlamaModel::new(CpuBackend, &files).expect("model");
        let c = model.config().clone();
        println!(
            "model     synthetic:{name}: {:.0}M parameters, {} layers, hidden {}, loaded in {:.1} s",
            c.param_count() as f64 / 1e6,
            c.num_layers,
            c.hidden_size,
            started.elapsed().as_secs_f64()
        );
        let (n, hi) = if name == "tiny" {
            (64, 1024)
        } else {
            (16, 256)
        };
        let lens = lengths(n, 8, hi, 42);
        let batch = prompts(&lens, c.vocab_size);
        let real: usize = lens.iter().sum();
        let longest = *lens.iter().max().unwrap();
        println!(
            "batch     {n} prompts, lengths {}..{longest} (mean {:.0}, median {}), {real} real tokens, {} when padded",
            lens.iter().min().unwrap(),
            real as f64 / n as f64,
            { let mut s = lens.clone(); s.sort(); s[n / 2] },
            n * longest
        );
        let block = 16;
        let blocks = (n * longest).div_ceil(block) + n * 2 + 64;
        let cfg = KvCacheConfig {
            block_size: block,
            num_blocks: blocks,
        };

        let mut results = Vec::new();
        for mode in ["prepacked", "padded"] {
            let mut cache = KvCache::new(cfg);
            let mut kv = model.backend_kv(&cfg).expect("kv");
            reset_peak();
            let base = peak_rss_mib();
            let t = Instant::now();
            let out = match mode {
                "prepacked" => prefill_prepacked(&model, &mut kv, &mut cache, &batch, None, 0),
                _ => prefill_padded(&model, &mut kv, &mut cache, &batch, 0, 0),
            }
            .expect("prefill");
            let secs = t.elapsed().as_secs_f64();
            let peak = peak_rss_mib() - base;
            std::hint::black_box(&out);
            println!(
                "prefill   {mode:<9} {secs:>8.2} s  {:>8.0} real tokens/s  peak memory +{peak:.0} MiB above the loaded model and cache",
                real as f64 / secs
            );
            results.push((secs, peak, out));
        }
        let worst = results[0]
            .2
            .iter()
            .zip(&results[1].2)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max);
        println!(
            "ratio     prepacked is {:.2}x faster than padded, peak memory {:.2}x; max |Δlogit| between them {worst:.2e}",
            results[1].0 / results[0].0,
            results[1].1 / results[0].1.max(1.0)
        );

        for seqs in [1usize, 8] {
            let steps = if name == "tiny" { 64 } else { 16 };
            let mut cache = KvCache::new(cfg);
            let mut kv = model.backend_kv(&cfg).expect("kv");
            let ps: Vec<Vec<u32>> = batch.iter().take(seqs).cloned().collect();
            prefill_prepacked(&model, &mut kv, &mut cache, &ps, None, 0).expect("prefill");
            let t = Instant::now();
            for step in 0..steps {
                let feed: Vec<(u64, u32)> = (0..seqs as u64)
                    .map(|s| (s, 5 + (step as u32 % 50)))
                    .collect();
                std::hint::black_box(
                    decode_step(&model, &mut kv, &mut cache, &feed).expect("decode"),
                );
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "decode    {seqs} sequence(s) x {steps} steps: {:.1} tokens/s ({:.1} ms per step)",
                (seqs * steps) as f64 / secs,
                secs * 1e3 / steps as f64
            );
        }
    }
}
