//! `engram bench attention`'s tables, printed on stdout (Markdown, as BENCHMARKS.md quotes them).

use super::accuracy::AccuracyReport;
use super::e2e::EngineReport;
use super::kernel::{KernelReport, Timing};

fn gb(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e9))
}

fn ms(t: &Timing) -> String {
    t.ms_median
        .map_or_else(|| t.status.clone(), |m| format!("{m:.3}"))
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The kernel part's table.
pub fn kernel(r: &KernelReport) {
    let p = &r.hip;
    println!(
        "device {} | {} query heads, {} KV heads, head_dim {}, cache blocks of {} | median of {} after {} warm-up",
        r.device, r.heads, r.kv_heads, r.head_dim, r.kv_block_size, r.reps, r.warmup
    );
    println!(
        "HiP: top_k {}, block_q {}, block_k {}, sink {}, recent {}, min_context {} | memory: {}",
        p.top_k, p.block_q, p.block_k, p.sink_tokens, p.recent_tokens, p.min_context, r.memory
    );
    println!("| phase | context | sequences × rows | dense ms | HiP ms | speed-up | keys/row dense | keys/row HiP | max abs diff | peak GB dense | peak GB HiP |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &r.cases {
        println!(
            "| {:?} | {} | {} × {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
            c.phase,
            c.context,
            c.sequences,
            c.rows,
            ms(&c.dense),
            ms(&c.hip),
            opt(c.speedup, 2),
            c.keys_per_row_dense,
            c.keys_per_row_hip,
            c.max_abs_diff.map_or("-".into(), |d| format!("{d:.2e}")),
            gb(c.dense.peak_bytes),
            gb(c.hip.peak_bytes),
        );
    }
}

/// The engine part's table.
pub fn engine(r: &EngineReport) {
    let p = &r.hip;
    println!(
        "device {} | model {} | steps of {} tokens | {} new tokens, greedy | memory: {}",
        r.device, r.model, r.token_budget, r.new_tokens, r.memory
    );
    println!(
        "HiP: top_k {}, block_q {}, block_k {}, sink {}, recent {}, min_context {}",
        p.top_k, p.block_q, p.block_k, p.sink_tokens, p.recent_tokens, p.min_context
    );
    println!("| context | attention | time to first token s | prefill tokens/s | decode tokens/s | tokens | peak GB | status |");
    println!("|---|---|---|---|---|---|---|---|");
    for x in &r.runs {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            x.context,
            x.attention,
            opt(x.ttft_s, 3),
            opt(x.prefill_tokens_per_s, 0),
            opt(x.decode_tokens_per_s, 1),
            x.completion_tokens,
            gb(x.peak_bytes),
            x.status
        );
    }
}

/// The accuracy part's tables: passkey accuracy, KL, and the time per length.
pub fn accuracy(r: &AccuracyReport) {
    let p = &r.hip;
    println!(
        "device {} | model {} (window {}) | chunks of {} | {} prompts per length and depth",
        r.device, r.model, r.max_context, r.chunk, r.trials_per_depth
    );
    println!(
        "HiP: block_q {}, block_k {}, sink {}, recent {}, min_context {}",
        p.block_q, p.block_k, p.sink_tokens, p.recent_tokens, p.min_context
    );
    if !r.passkey.is_empty() {
        println!("| length | attention | passkey accuracy | by depth | seconds |");
        println!("|---|---|---|---|---|");
        for s in &r.passkey {
            let by_depth: Vec<String> = s
                .by_depth
                .iter()
                .map(|d| format!("{:.0}%: {}/{}", d.depth * 100.0, d.correct, d.trials))
                .collect();
            println!(
                "| {} | {} | {}/{} ({:.2}) | {} | {:.1} |",
                s.length,
                s.attention,
                s.correct,
                s.trials,
                s.accuracy,
                by_depth.join(", "),
                s.seconds
            );
        }
    }
    if !r.kl.is_empty() {
        println!("| length | top_k | positions | KL(dense ‖ HiP) mean | KL max | top-1 agreement | seconds |");
        println!("|---|---|---|---|---|---|---|");
        for k in &r.kl {
            println!(
                "| {} | {} | {} | {:.5} | {:.5} | {:.3} | {:.1} |",
                k.length, k.top_k, k.positions, k.kl_mean, k.kl_max, k.top1_agreement, k.seconds
            );
        }
    }
    for t in &r.times {
        println!(
            "length {}: passkey {} s, KL {} s",
            t.length,
            opt(t.passkey_seconds, 1),
            opt(t.kl_seconds, 1)
        );
    }
    if !r.skipped_lengths.is_empty() {
        println!(
            "skipped (longer than the model's window): {:?}",
            r.skipped_lengths
        );
    }
}
