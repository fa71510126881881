//! The benchmarks' tables, printed on stdout (Markdown, as BENCHMARKS.md quotes them).

use super::attribution::AttributionReport;
use super::engine::{DecodeReport, PrefillReport};
use super::h2o::H2oReport;
use super::speculative::SpecReport;

/// `engram bench prefill`'s table.
pub fn prefill(r: &PrefillReport) {
    println!(
        "device {} | model {} ({} params)",
        r.device, r.model, r.params
    );
    if let (Some(g), Some(bw)) = (r.gemm_flops, r.copy_bytes_per_s) {
        println!(
            "measured ceilings: bf16 GEMM {:.0} TFLOP/s, copy {:.0} GB/s",
            g / 1e12,
            bw / 1e9
        );
    }
    println!("| run | tokens | passes | median s | tokens/s | TFLOP/s | MFU (measured) | MFU (790) | peak GB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for x in &r.runs {
        println!(
            "| {} | {} | {} | {:.4} | {:.0} | {:.1} | {} | {:.3} | {} |",
            x.label,
            x.tokens,
            x.passes,
            x.seconds,
            x.tokens_per_s,
            x.tflops,
            x.mfu_measured.map_or("-".into(), |m| format!("{m:.3}")),
            x.mfu_reference,
            x.peak_bytes
                .map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e9)),
        );
    }
}

/// `engram bench decode`'s table, and the profile when asked for.
pub fn decode(r: &DecodeReport) {
    println!("device {} | model {}", r.device, r.model);
    println!("| batch | decode tokens/s | step ms (median) | enqueue ms | end-to-end tokens/s | roofline tokens/s | fraction |");
    println!("|---|---|---|---|---|---|---|");
    for x in &r.runs {
        println!(
            "| {} | {:.1} | {:.3} | {:.3} | {:.1} | {} | {} |",
            x.batch,
            x.tokens_per_s,
            x.step_ms_median,
            x.enqueue_ms_median,
            x.end_to_end_tokens_per_s,
            x.roofline_tokens_per_s
                .map_or("-".into(), |v| format!("{v:.1}")),
            x.roofline_fraction
                .map_or("-".into(), |v| format!("{v:.3}")),
        );
    }
    for x in r.runs.iter().filter(|x| !x.profile.is_empty()) {
        println!(
            "profile, batch {} (device ms per step, calls per step):",
            x.batch
        );
        for p in &x.profile {
            println!(
                "  {:>8.3} ms {:>6.1}x  {}",
                p.ms_per_step, p.calls_per_step, p.op
            );
        }
    }
}

/// `engram bench speculative`'s table.
pub fn speculative(report: &SpecReport) {
    let (sequences, longest) = report
        .runs
        .first()
        .map_or((report.batch, report.prompt_len), |r| {
            (r.sequences, r.longest_prompt)
        });
    println!(
        "device {} | model {} | batch {} | {sequences} sequences, prompts up to {longest} tokens | {} new tokens | greedy",
        report.device, report.model, report.batch, report.tokens
    );
    println!("| run | s | tokens/s | vs plain | decode tokens/s | decode vs plain | tokens per target step | acceptance | identical outputs | agreeing prefix |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.runs {
        println!(
            "| {} | {:.3} | {:.1} | {:.3} | {:.1} | {:.3} | {:.2} | {:.3} | {}/{} | {:.1} |",
            r.label,
            r.seconds,
            r.tokens_per_s,
            r.speedup,
            r.decode_tokens_per_s,
            r.decode_speedup,
            r.tokens_per_target_step,
            r.acceptance_rate,
            r.identical_outputs,
            r.sequences,
            r.agreeing_prefix
        );
    }
}

/// `engram bench h2o`'s table and eviction times.
pub fn h2o(report: &H2oReport) {
    let prompts = if report.real_prompts {
        "QA prompts of up to"
    } else {
        "random prompts of"
    };
    println!(
        "device {} | model {} | {} sequences | {prompts} {} tokens | {} steps (teacher-forced on the full cache's tokens)",
        report.device, report.model, report.sequences, report.prompt_len, report.steps
    );
    println!("| run | KV after prefill (GB) | KV peak (GB) | tokens/s | step ms | KL mean | KL max | top-1 agreement | same answer |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &report.runs {
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.4} | {:.4} | {:.3} | {:.3} |",
            r.label,
            r.kv_bytes_after_prefill as f64 / 1e9,
            r.kv_bytes_peak as f64 / 1e9,
            r.tokens_per_s,
            r.step_ms_median,
            r.kl_mean,
            r.kl_max,
            r.top1_agreement,
            r.sequence_agreement
        );
    }
    for r in report.runs.iter().filter(|r| r.eviction.rounds > 0) {
        let e = &r.eviction;
        println!(
            "{}: {} eviction rounds ({} sequences): read {:.3} s, select {:.3} s, compact {:.3} s",
            r.label, e.rounds, e.sequences, e.read_s, e.select_s, e.compact_s
        );
    }
}

/// `engram bench attribution`'s table.
pub fn attribution(report: &AttributionReport) {
    println!(
        "device {} | model {} | passages of {} tokens | {} permutations",
        report.device, report.model, report.passage_tokens, report.permutations
    );
    println!("| passages | answer tokens | coalitions | run | s | forward passes | tokens computed | timed coalitions | measured s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for case in &report.cases {
        for r in &case.runs {
            println!(
                "| {} | {} | {} | {} | {:.3} | {} | {} | {} | {:.3} |",
                case.passages,
                case.answer_tokens,
                case.coalitions,
                r.label,
                r.seconds,
                r.forward_passes,
                r.computed_tokens,
                r.timed_coalitions,
                r.measured_seconds
            );
        }
        println!(
            "{} passages, {}-token answer: separate is {:.1}x faster than one by one",
            case.passages, case.answer_tokens, case.speedup_vs_one_by_one
        );
    }
}
