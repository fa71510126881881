//! The kernel part: one layer's attention through [`Backend::attention`], dense and HiP, on random data (queries,
//! keys and values of `offset 0, std 1`, bf16 on CUDA) in a paged KV cache of one layer. Decode: `batch`
//! sequences, each with its own blocks, one query row at the end of a context of `T` keys. Prefill: one chunk of
//! query rows at the end of the first sequence's context, attending causally. Each is timed after warm-up, the
//! device synchronised around every repetition; the outputs of the last repetitions are compared (the last rows,
//! at most [`COMPARED_ROWS`]). A context whose cache or queries cannot be allocated is reported as not fitting.

use std::time::Instant;

use serde::Serialize;

use super::plan::keys_per_row;
use super::{median, peak_kind, read_peak, reset_peak, AttentionArgs, Phase};
use engram_engine::internals::backend::probe::DeviceProbe;
use engram_engine::internals::backend::{
    AttentionBatch, Backend, BackendError, KvLayout, SeqChunk,
};
use engram_engine::HipParams;

/// Output rows compared between dense and HiP (the last ones of the query).
pub const COMPARED_ROWS: usize = 1024;

/// Rows of K and V made and written at once while filling the cache.
const FILL_ROWS: usize = 16384;

/// What the kernel part runs.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Context lengths.
    pub contexts: Vec<usize>,
    /// Decoding sequences.
    pub batch: usize,
    /// Query rows of the prefill chunk (`None`: the whole context).
    pub prefill_rows: Option<usize>,
    /// Shapes timed.
    pub phases: Vec<Phase>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of a head.
    pub head_dim: usize,
    /// Tokens per cache block.
    pub kv_block_size: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Contexts above this time only HiP.
    pub skip_dense_above: Option<usize>,
    /// HiP's parameters.
    pub hip: HipParams,
    /// Seed of the random data.
    pub seed: u64,
}

impl KernelConfig {
    /// The configuration from the command line, with the device's defaults (`cpu`: short contexts, 3 reps).
    pub fn from_args(a: &AttentionArgs, hip: HipParams, cpu: bool) -> Self {
        let contexts = match (a.contexts.is_empty(), cpu) {
            (false, _) => a.contexts.clone(),
            (true, true) => vec![2048, 8192],
            (true, false) => vec![8192, 32768, 131072, 262144, 524288, 1 << 20],
        };
        Self {
            contexts,
            batch: a.batch.max(1),
            prefill_rows: a.prefill_rows,
            phases: a.phases.clone(),
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            kv_block_size: a.kv_block_size.max(1),
            reps: a.reps.unwrap_or(if cpu { 3 } else { 5 }).max(1),
            warmup: a.warmup,
            skip_dense_above: a.skip_dense_above,
            hip,
            seed: a.seed,
        }
    }
}

/// One attention's measurement.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timing {
    /// `ok`, `skipped`, `does not fit` or `failed`.
    pub status: String,
    /// Why, when not `ok`.
    pub error: Option<String>,
    /// Median milliseconds of the repetitions.
    pub ms_median: Option<f64>,
    /// Every repetition's milliseconds.
    pub ms_all: Vec<f64>,
    /// Peak memory during the runs (cache and queries included; see the report's `memory`).
    pub peak_bytes: Option<u64>,
}

impl Timing {
    fn not_run(status: &str, error: Option<String>) -> Self {
        Self {
            status: status.into(),
            error,
            ..Self::default()
        }
    }
}

/// One context and shape.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCase {
    /// The shape.
    pub phase: Phase,
    /// Keys in each sequence's context.
    pub context: usize,
    /// Sequences in the batch.
    pub sequences: usize,
    /// Query rows per sequence.
    pub rows: usize,
    /// Dense attention.
    pub dense: Timing,
    /// HiP attention.
    pub hip: Timing,
    /// Dense median / HiP median.
    pub speedup: Option<f64>,
    /// Largest absolute difference between the dense and HiP outputs over the compared rows.
    pub max_abs_diff: Option<f64>,
    /// Output rows compared (the last of the query).
    pub compared_rows: usize,
    /// Keys a query row attends on average, dense.
    pub keys_per_row_dense: f64,
    /// Keys a query row attends on average, HiP (sink, chosen blocks and window, causal).
    pub keys_per_row_hip: f64,
}

/// The kernel part's report.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// Device.
    pub device: String,
    /// What the peak bytes measure.
    pub memory: String,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of a head.
    pub head_dim: usize,
    /// Tokens per cache block.
    pub kv_block_size: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// HiP's parameters.
    pub hip: HipParams,
    /// The cases, by context then shape.
    pub cases: Vec<KernelCase>,
}

/// Runs the kernel part.
pub fn bench_kernel<B: Backend + DeviceProbe>(
    b: &B,
    cfg: &KernelConfig,
) -> Result<KernelReport, BackendError> {
    check_shape(cfg)?;
    let mut cases = Vec::new();
    for &t in &cfg.contexts {
        eprintln!("kernel: context {t}: filling the cache");
        let blocks_per_seq = t.div_ceil(cfg.kv_block_size);
        let layout = KvLayout {
            layers: 1,
            num_blocks: cfg.batch * blocks_per_seq,
            block_size: cfg.kv_block_size,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
        };
        let kv = fits_host(b, cfg, t, layout).and_then(|_| filled_cache(b, cfg, layout, t));
        let kv = match kv {
            Ok(kv) => kv,
            Err(e) => {
                let why = classify(&e);
                eprintln!("kernel: context {t}: {why}: {e}");
                for &phase in &cfg.phases {
                    let (sequences, rows) = shape(cfg, phase, t);
                    let timing = Timing::not_run(why, Some(e.to_string()));
                    cases.push(KernelCase {
                        phase,
                        context: t,
                        sequences,
                        rows,
                        dense: timing.clone(),
                        hip: timing,
                        speedup: None,
                        max_abs_diff: None,
                        compared_rows: 0,
                        keys_per_row_dense: 0.0,
                        keys_per_row_hip: 0.0,
                    });
                }
                continue;
            }
        };
        for &phase in &cfg.phases {
            let case = run_case(b, cfg, &kv, phase, t);
            eprintln!(
                "kernel: {phase:?} context {t}: dense {} ms, HiP {} ms, max |diff| {}",
                fmt_ms(&case.dense),
                fmt_ms(&case.hip),
                case.max_abs_diff.map_or("-".into(), |d| format!("{d:.3e}"))
            );
            cases.push(case);
        }
    }
    Ok(KernelReport {
        device: b.device(),
        memory: peak_kind(b).into(),
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        kv_block_size: cfg.kv_block_size,
        reps: cfg.reps,
        warmup: cfg.warmup,
        hip: cfg.hip,
        cases,
    })
}

fn fmt_ms(t: &Timing) -> String {
    t.ms_median
        .map_or_else(|| t.status.clone(), |m| format!("{m:.3}"))
}

/// Checks the head shape.
fn check_shape(cfg: &KernelConfig) -> Result<(), BackendError> {
    if cfg.kv_heads == 0 || cfg.head_dim == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
        return Err(BackendError::Shape {
            op: "bench attention",
            reason: format!(
                "{} query heads cannot share {} KV heads",
                cfg.heads, cfg.kv_heads
            ),
        });
    }
    Ok(())
}

/// Sequences and query rows per sequence of a shape at context `t`.
fn shape(cfg: &KernelConfig, phase: Phase, t: usize) -> (usize, usize) {
    match phase {
        Phase::Decode => (cfg.batch, 1),
        Phase::Prefill => (1, cfg.prefill_rows.unwrap_or(t).clamp(1, t)),
    }
}

/// On the CPU, refuses a context whose cache, queries and outputs would exceed the available memory (an
/// allocation failure there aborts the process instead of returning an error).
fn fits_host<B: Backend>(
    b: &B,
    cfg: &KernelConfig,
    t: usize,
    layout: KvLayout,
) -> Result<(), BackendError> {
    if b.name() != "cpu" {
        return Ok(());
    }
    let width = cfg.heads * cfg.head_dim;
    let rows = cfg
        .phases
        .iter()
        .map(|&p| {
            let (s, r) = shape(cfg, p, t);
            s * r
        })
        .max()
        .unwrap_or(0);
    let bytes = layout.bytes_f32() as u64
        + (3 * rows * width * 4) as u64
        + (2 * FILL_ROWS * width * 4) as u64;
    match super::host_available() {
        Some(free) if bytes > free / 10 * 9 => Err(BackendError::Op {
            backend: "cpu",
            op: "alloc",
            reason: format!(
                "out of memory: needs about {:.1} GB, {:.1} GB available",
                bytes as f64 / 1e9,
                free as f64 / 1e9
            ),
        }),
        _ => Ok(()),
    }
}

/// Whether an error is an allocation failure.
fn classify(e: &BackendError) -> &'static str {
    let text = e.to_string().to_lowercase();
    if text.contains("out of memory") || text.contains("out_of_memory") || text.contains("alloc") {
        "does not fit"
    } else {
        "failed"
    }
}

/// The block table of sequence `s` (blocks `s * n .. (s + 1) * n`).
fn table(s: usize, blocks_per_seq: usize) -> Vec<u32> {
    (s * blocks_per_seq..(s + 1) * blocks_per_seq)
        .map(|b| b as u32)
        .collect()
}

/// A one-layer cache holding `t` random keys and values for each of `cfg.batch` sequences.
fn filled_cache<B: Backend>(
    b: &B,
    cfg: &KernelConfig,
    layout: KvLayout,
    t: usize,
) -> Result<B::Kv, BackendError> {
    let mut kv = b.alloc_kv(layout)?;
    let width = cfg.kv_heads * cfg.head_dim;
    let bs = cfg.kv_block_size;
    let blocks_per_seq = t.div_ceil(bs);
    for s in 0..cfg.batch {
        let tab = table(s, blocks_per_seq);
        for start in (0..t).step_by(FILL_ROWS) {
            let n = FILL_ROWS.min(t - start);
            let seed = cfg.seed ^ ((s as u64) << 40) ^ ((start as u64) << 1);
            let k = b.random_weight(&[n, width], seed, 0.0, 1.0)?;
            let v = b.random_weight(&[n, width], seed ^ 1, 0.0, 1.0)?;
            let slots: Vec<u32> = (start..start + n)
                .map(|j| tab[j / bs] * bs as u32 + (j % bs) as u32)
                .collect();
            b.write_kv(&mut kv, 0, &k, &v, &slots)?;
        }
    }
    b.synchronize()?;
    Ok(kv)
}

/// The batch of a shape at context `t`, dense or with `hip`.
fn batch_of(cfg: &KernelConfig, phase: Phase, t: usize, hip: Option<HipParams>) -> AttentionBatch {
    let (sequences, rows) = shape(cfg, phase, t);
    let blocks_per_seq = t.div_ceil(cfg.kv_block_size);
    AttentionBatch {
        seqs: (0..sequences)
            .map(|s| SeqChunk {
                q_len: rows,
                context_len: t,
                block_table: table(s, blocks_per_seq),
                hip,
            })
            .collect(),
        block_size: cfg.kv_block_size,
    }
}

/// Times one shape at context `t`, dense then HiP, and compares their outputs.
fn run_case<B: Backend + DeviceProbe>(
    b: &B,
    cfg: &KernelConfig,
    kv: &B::Kv,
    phase: Phase,
    t: usize,
) -> KernelCase {
    let (sequences, rows) = shape(cfg, phase, t);
    let total = sequences * rows;
    let compared = total.min(COMPARED_ROWS);
    let mut case = KernelCase {
        phase,
        context: t,
        sequences,
        rows,
        dense: Timing::default(),
        hip: Timing::default(),
        speedup: None,
        max_abs_diff: None,
        compared_rows: 0,
        keys_per_row_dense: keys_per_row(None, t, rows),
        keys_per_row_hip: keys_per_row(Some(&cfg.hip), t, rows),
    };
    let q = match b.random_weight(
        &[total, cfg.heads * cfg.head_dim],
        cfg.seed ^ 0x5157,
        0.0,
        1.0,
    ) {
        Ok(q) => q,
        Err(e) => {
            case.dense = Timing::not_run(classify(&e), Some(e.to_string()));
            case.hip = case.dense.clone();
            return case;
        }
    };
    let last_rows: Vec<u32> = (total - compared..total).map(|r| r as u32).collect();
    let dense_skipped = cfg.skip_dense_above.is_some_and(|m| t > m);
    let mut dense_rows = None;
    case.dense = if dense_skipped {
        Timing::not_run("skipped", None)
    } else {
        let batch = batch_of(cfg, phase, t, None);
        let (timing, rows) = time(b, cfg, &last_rows, || {
            b.attention(&q, kv, 0, cfg.heads, &batch)
        });
        dense_rows = rows;
        timing
    };
    let batch = batch_of(cfg, phase, t, Some(cfg.hip));
    let (timing, hip_rows) = time(b, cfg, &last_rows, || {
        b.attention(&q, kv, 0, cfg.heads, &batch)
    });
    case.hip = timing;
    if let (Some(d), Some(h)) = (case.dense.ms_median, case.hip.ms_median) {
        case.speedup = Some(d / h.max(1e-9));
    }
    if let (Some(d), Some(h)) = (dense_rows, hip_rows) {
        case.max_abs_diff = Some(
            d.iter()
                .zip(&h)
                .map(|(x, y)| (x - y).abs() as f64)
                .fold(0.0, f64::max),
        );
        case.compared_rows = compared;
    }
    case
}

/// Runs `f` `cfg.warmup` times, then `cfg.reps` times timed (synchronised); the timing and the `rows` of the
/// last output, on the host.
fn time<B: Backend + DeviceProbe>(
    b: &B,
    cfg: &KernelConfig,
    rows: &[u32],
    mut f: impl FnMut() -> Result<B::Tensor, BackendError>,
) -> (Timing, Option<Vec<f32>>) {
    reset_peak(b);
    let mut run = || -> Result<(Vec<f64>, Vec<f32>), BackendError> {
        for _ in 0..cfg.warmup {
            drop(f()?);
        }
        b.synchronize()?;
        let mut ms = Vec::with_capacity(cfg.reps);
        let mut last = None;
        for _ in 0..cfg.reps {
            drop(last.take());
            b.synchronize()?;
            let start = Instant::now();
            let out = f()?;
            b.synchronize()?;
            ms.push(start.elapsed().as_secs_f64() * 1e3);
            last = Some(out);
        }
        let out = last.expect("at least one repetition");
        let picked = b.gather_rows(&out, rows)?;
        drop(out);
        Ok((ms, b.to_host(&picked)?.0))
    };
    match run() {
        Ok((ms, host)) => (
            Timing {
                status: "ok".into(),
                error: None,
                ms_median: Some(median(&ms)),
                ms_all: ms,
                peak_bytes: read_peak(b),
            },
            Some(host),
        ),
        Err(e) => (Timing::not_run(classify(&e), Some(e.to_string())), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::backend::cpu::CpuBackend;

    fn config(contexts: Vec<usize>, top_k: usize) -> KernelConfig {
        KernelConfig {
            contexts,
            batch: 2,
            prefill_rows: None,
            phases: vec![Phase::Decode, Phase::Prefill],
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            kv_block_size: 16,
            reps: 1,
            warmup: 0,
            skip_dense_above: None,
            hip: HipParams {
                block_q: 16,
                block_k: 16,
                top_k,
                sink_tokens: 16,
                recent_tokens: 32,
                min_context: 0,
            },
            seed: 1,
        }
    }

    #[test]
    fn hip_covering_every_block_matches_dense_and_a_small_top_k_attends_fewer_keys() {
        let r = bench_kernel(&CpuBackend, &config(vec![128, 200], 16)).unwrap();
        assert_eq!(r.cases.len(), 4);
        for c in &r.cases {
            assert_eq!(
                (c.dense.status.as_str(), c.hip.status.as_str()),
                ("ok", "ok")
            );
            assert!(c.max_abs_diff.unwrap() < 1e-6, "{c:?}");
            assert_eq!(c.keys_per_row_hip, c.keys_per_row_dense);
        }
        let r = bench_kernel(&CpuBackend, &config(vec![256], 2)).unwrap();
        for c in &r.cases {
            assert!(c.keys_per_row_hip < c.keys_per_row_dense, "{c:?}");
            assert!(c.max_abs_diff.unwrap() > 0.0);
        }
    }

    #[test]
    fn dense_is_skipped_above_the_limit() {
        let mut cfg = config(vec![64, 128], 2);
        cfg.skip_dense_above = Some(100);
        cfg.phases = vec![Phase::Decode];
        let r = bench_kernel(&CpuBackend, &cfg).unwrap();
        assert_eq!(r.cases[0].dense.status, "ok");
        assert_eq!(r.cases[1].dense.status, "skipped");
        assert_eq!(r.cases[1].hip.status, "ok");
        assert!(r.cases[1].max_abs_diff.is_none());
    }
}
