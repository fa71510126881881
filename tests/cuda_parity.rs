//! The CUDA backend against the CPU backend: every kernel on fresh random inputs (bf16-rounded, so both sides
//! see the same values), and whole models (the transformers fixtures) end to end. Errors are relative,
//! ‖cuda − cpu‖ / ‖cpu‖, with bf16 tolerances. Without a CUDA device each test says so and returns: these run on
//! the GPU machine (see BENCHMARKS.md for the command and the recorded run).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::backend::cpu_tensor::CpuTensor;
use engram_engine::internals::backend::cuda::CudaBackend;
use engram_engine::internals::backend::{select_row, AttentionBatch, Backend, KvLayout, SeqChunk};
use engram_engine::internals::h2o_decode::{decode as h2o_decode, DecodeOptions};
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::model::ModelFiles;
use engram_engine::internals::prefill::{decode_step, prefill_prepacked};
use engram_engine::internals::score_segments::{score_segmented, SegmentedScoring};
use engram_engine::{BudgetPart, KvBudget};

/// Opens CUDA device 0 with the default knobs, caching compiled kernels where the device scripts say
/// (`ENGRAM_KERNEL_CACHE`), as the server's configuration would.
#[allow(clippy::disallowed_methods)] // the test harness reads the device scripts' cache folder
fn open_gpu() -> Result<CudaBackend, engram_engine::internals::backend::cuda::CudaError> {
    let config = engram_engine::CudaConfig {
        kernel_cache: std::env::var_os("ENGRAM_KERNEL_CACHE").map(PathBuf::from),
        ..Default::default()
    };
    CudaBackend::with_config(0, &config)
}

fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    GPU.get_or_init(|| match open_gpu() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("no CUDA device, CUDA parity tests skipped: {e}");
            None
        }
    })
    .as_ref()
}

/// A small deterministic generator (xorshift) for test inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// bf16-representable values, uniform in [-scale, scale].
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| half::bf16::from_f32((self.unit() * 2.0 - 1.0) * scale).to_f32())
            .collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn host(data: &[f32], rows: usize, cols: usize) -> Tensor {
    Tensor::from_slice(data, (rows, cols), &Device::Cpu).unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Both backends' copies of the same host tensor.
fn both(
    g: &CudaBackend,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> (CpuTensor, <CudaBackend as Backend>::Tensor) {
    let t = host(data, rows, cols);
    (CpuBackend.weight(&t).unwrap(), g.weight(&t).unwrap())
}

/// f32 residual streams on both backends holding `data` (through the embedding kernel).
fn residual(
    g: &CudaBackend,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> (CpuTensor, <CudaBackend as Backend>::Tensor) {
    let (ct, gt) = both(g, data, rows, cols);
    let ids: Vec<u32> = (0..rows as u32).collect();
    (
        CpuBackend.embed(&ct, &ids).unwrap(),
        g.embed(&gt, &ids).unwrap(),
    )
}

fn cmp(
    g: &CudaBackend,
    cpu: &CpuTensor,
    cuda: &<CudaBackend as Backend>::Tensor,
    tol: f64,
    what: &str,
) {
    let (want, r1, c1) = CpuBackend.to_host(cpu).unwrap();
    let (got, r2, c2) = g.to_host(cuda).unwrap();
    assert_eq!((r1, c1), (r2, c2), "{what}: shape");
    let e = rel_err(&got, &want);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e < tol, "{what}: relative error {e:.3e} over {tol:.0e}");
}

#[test]
fn embed_and_norms_match() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(1);
    for &(rows, width) in &[(1, 64), (37, 896), (300, 4096), (5, 100), (2, 9000)] {
        let table = r.vec(rows * width, 2.0);
        let (ct, gt) = both(g, &table, rows, width);
        let ids: Vec<u32> = (0..rows).map(|_| r.below(rows) as u32).collect();
        let (ce, ge) = (
            CpuBackend.embed(&ct, &ids).unwrap(),
            g.embed(&gt, &ids).unwrap(),
        );
        cmp(g, &ce, &ge, 1e-6, &format!("embed {rows}x{width}"));
        let w = r.vec(width, 1.0);
        let (cw, gw) = both(g, &w, 1, width);
        let cw: CpuTensor = cw.dense("test").unwrap().flatten_all().unwrap().into();
        cmp(
            g,
            &CpuBackend.rms_norm(&ce, &cw, 1e-5).unwrap(),
            &g.rms_norm(&ge, &gw, 1e-5).unwrap(),
            8e-3,
            "rms_norm",
        );
        let delta = r.vec(rows * width, 1.0);
        let (cd, gd) = both(g, &delta, rows, width);
        let (mut cres, mut gres) = residual(g, &table, rows, width);
        let cn = CpuBackend.add_rms_norm(&mut cres, &cd, &cw, 1e-6).unwrap();
        let gn = g.add_rms_norm(&mut gres, &gd, &gw, 1e-6).unwrap();
        cmp(g, &cn, &gn, 8e-3, "add_rms_norm output");
        cmp(g, &cres, &gres, 1e-6, "add_rms_norm residual");
        CpuBackend.add(&mut cres, &cd).unwrap();
        g.add(&mut gres, &gd).unwrap();
        cmp(g, &cres, &gres, 1e-6, "add");
    }
}

#[test]
fn linear_matches_with_and_without_bias() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(2);
    for &(m, n, k) in &[
        (1, 64, 64),
        (7, 1024, 896),
        (300, 4096, 4096),
        (1, 14336, 4096),
        (64, 4096, 14336),
    ] {
        let (cx, gx) = both(g, &r.vec(m * k, 1.0), m, k);
        let (cw, gw) = both(g, &r.vec(n * k, 0.05), n, k);
        cmp(
            g,
            &CpuBackend.linear(&cx, &cw, None).unwrap(),
            &g.linear(&gx, &gw, None).unwrap(),
            8e-3,
            &format!("linear {m}x{n}x{k}"),
        );
        let b = r.vec(n, 1.0);
        let (cb, gb) = both(g, &b, 1, n);
        let cb: CpuTensor = cb.dense("test").unwrap().flatten_all().unwrap().into();
        cmp(
            g,
            &CpuBackend.linear(&cx, &cw, Some(&cb)).unwrap(),
            &g.linear(&gx, &gw, Some(&gb)).unwrap(),
            8e-3,
            "linear + bias",
        );
    }
}

#[test]
fn skinny_products_match_with_gemv_and_with_cublaslt() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(6);
    for gemv in [true, false] {
        g.set_gemv(gemv);
        for &(m, n, k) in &[
            (1, 6144, 4096),
            (2, 4096, 4096),
            (3, 28672, 4096),
            (5, 4096, 14336),
            (8, 1000, 64),
            (1, 130, 24),
        ] {
            let (cx, gx) = both(g, &r.vec(m * k, 1.0), m, k);
            let (cw, gw) = both(g, &r.vec(n * k, 0.05), n, k);
            cmp(
                g,
                &CpuBackend.linear(&cx, &cw, None).unwrap(),
                &g.linear(&gx, &gw, None).unwrap(),
                8e-3,
                &format!("linear (gemv {gemv}) {m}x{n}x{k}"),
            );
        }
    }
    g.set_gemv_rows(engram_engine::internals::backend::cuda::GEMV_DEFAULT_ROWS);
}

#[test]
fn fused_attention_prologue_matches() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(7);
    for &(heads, kv_heads, hd) in &[(4, 2, 16), (32, 8, 128), (14, 2, 64)] {
        let rows = 37;
        let layout = KvLayout {
            layers: 2,
            num_blocks: 8,
            block_size: 16,
            kv_heads,
            head_dim: hd,
        };
        let mut ckv = CpuBackend.alloc_kv(layout).unwrap();
        let mut gkv = g.alloc_kv(layout).unwrap();
        let width = (heads + 2 * kv_heads) * hd;
        let (cqkv, gqkv) = both(g, &r.vec(rows * width, 2.0), rows, width);
        let positions: Vec<u32> = (0..rows as u32).collect();
        // The sequence's blocks are 5, 2 and 7.
        let table = vec![5u32, 2, 7];
        let slots: Vec<u32> = (0..rows)
            .map(|j| table[j / 16] * 16 + (j % 16) as u32)
            .collect();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let cq = CpuBackend
            .rope_qkv_write(&cqkv, &mut ckv, 1, heads, &positions, &slots, &inv_freq)
            .unwrap();
        let gq = g
            .rope_qkv_write(&gqkv, &mut gkv, 1, heads, &positions, &slots, &inv_freq)
            .unwrap();
        cmp(
            g,
            &cq,
            &gq,
            8e-3,
            &format!("rope_qkv_write q, heads {heads}/{kv_heads} d{hd}"),
        );
        // The cached keys and values, through attention over them with the rotated queries.
        let batch = AttentionBatch {
            seqs: vec![SeqChunk {
                q_len: rows,
                context_len: rows,
                block_table: table,
                hip: None,
            }],
            block_size: 16,
        };
        let (cq2, gq2) = both(g, &CpuBackend.to_host(&cq).unwrap().0, rows, heads * hd);
        let co = CpuBackend.attention(&cq2, &ckv, 1, heads, &batch).unwrap();
        let go = g.attention(&gq2, &gkv, 1, heads, &batch).unwrap();
        cmp(
            g,
            &co,
            &go,
            1.5e-2,
            "attention over the fused prologue's cache",
        );
    }
}

#[test]
fn fused_decode_projections_match() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(8);
    for &(m, heads, kv_heads, hd, hidden, inter, bias) in &[
        (1, 32, 8, 128, 4096, 14336, false),
        (3, 14, 2, 64, 896, 4864, true),
        (8, 4, 2, 16, 64, 128, true),
    ] {
        let (cx, gx) = both(g, &r.vec(m * hidden, 1.0), m, hidden);
        let (cgu, ggu) = both(g, &r.vec(2 * inter * hidden, 0.05), 2 * inter, hidden);
        cmp(
            g,
            &CpuBackend.linear_swiglu(&cx, &cgu).unwrap(),
            &g.linear_swiglu(&gx, &ggu).unwrap(),
            1e-2,
            &format!("linear_swiglu m={m} inter={inter}"),
        );
        let n = (heads + 2 * kv_heads) * hd;
        let (cw, gw) = both(g, &r.vec(n * hidden, 0.05), n, hidden);
        let (cb, gb) = both(g, &r.vec(n, 0.5), 1, n);
        let cb: CpuTensor = cb.dense("test").unwrap().flatten_all().unwrap().into();
        let layout = KvLayout {
            layers: 1,
            num_blocks: 4,
            block_size: 16,
            kv_heads,
            head_dim: hd,
        };
        let mut ckv = CpuBackend.alloc_kv(layout).unwrap();
        let mut gkv = g.alloc_kv(layout).unwrap();
        // m sequences with one cached token each (blocks 3, 1, 0, 2, ...), decoding at positions 1000 + i.
        let positions: Vec<u32> = (0..m as u32).map(|i| 1000 + 7 * i).collect();
        let slots: Vec<u32> = (0..m as u32)
            .map(|i| [3u32, 1, 0, 2][i as usize % 4] * 16 + i / 4)
            .collect();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 500000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let (cbias, gbias) = if bias {
            (Some(&cb), Some(&gb))
        } else {
            (None, None)
        };
        let cq = CpuBackend
            .qkv_rope_write(
                &cx, &cw, cbias, &mut ckv, 0, heads, &positions, &slots, &inv_freq,
            )
            .unwrap();
        let gq = g
            .qkv_rope_write(
                &gx, &gw, gbias, &mut gkv, 0, heads, &positions, &slots, &inv_freq,
            )
            .unwrap();
        cmp(
            g,
            &cq,
            &gq,
            1e-2,
            &format!("qkv_rope_write q, m={m} heads {heads}/{kv_heads} d{hd}"),
        );
        // The cache rows it wrote (zeros elsewhere), through one query attending to the whole cache.
        let full = AttentionBatch {
            seqs: vec![SeqChunk {
                q_len: 1,
                context_len: 64,
                block_table: vec![0, 1, 2, 3],
                hip: None,
            }],
            block_size: 16,
        };
        let (cq1, gq1) = both(g, &r.vec(heads * hd, 1.0), 1, heads * hd);
        cmp(
            g,
            &CpuBackend.attention(&cq1, &ckv, 0, heads, &full).unwrap(),
            &g.attention(&gq1, &gkv, 0, heads, &full).unwrap(),
            1.5e-2,
            "attention over the fused projection's cache",
        );
    }
}

#[test]
fn rope_swiglu_and_gather_match() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(3);
    for &(rows, heads, hd) in &[(5, 4, 16), (129, 32, 128), (64, 14, 64)] {
        let width = heads * hd;
        let data = r.vec(rows * width, 1.0);
        let (mut cx, mut gx) = both(g, &data, rows, width);
        let positions: Vec<u32> = (0..rows).map(|_| r.below(8192) as u32).collect();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 500000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        CpuBackend.rope(&mut cx, hd, &positions, &inv_freq).unwrap();
        g.rope(&mut gx, hd, &positions, &inv_freq).unwrap();
        cmp(g, &cx, &gx, 8e-3, &format!("rope {rows}x{heads}x{hd}"));
        let (cu, gu) = both(g, &r.vec(rows * width, 3.0), rows, width);
        cmp(
            g,
            &CpuBackend.swiglu(&cx, &cu).unwrap(),
            &g.swiglu(&gx, &gu).unwrap(),
            8e-3,
            "swiglu",
        );
        let pick: Vec<u32> = (0..rows / 2 + 1).map(|_| r.below(rows) as u32).collect();
        let (cy, gy) = both(g, &r.vec(rows * width, 1.0), rows, width);
        cmp(
            g,
            &CpuBackend.gather_rows(&cy, &pick).unwrap(),
            &g.gather_rows(&gy, &pick).unwrap(),
            1e-6,
            "gather_rows",
        );
        let (cgu, ggu) = both(g, &r.vec(rows * 2 * width, 3.0), rows, 2 * width);
        cmp(
            g,
            &CpuBackend.swiglu_packed(&cgu).unwrap(),
            &g.swiglu_packed(&ggu).unwrap(),
            8e-3,
            "swiglu_packed",
        );
        let odd = 2 * 37;
        let (cgu, ggu) = both(g, &r.vec(rows * odd, 3.0), rows, odd);
        cmp(
            g,
            &CpuBackend.swiglu_packed(&cgu).unwrap(),
            &g.swiglu_packed(&ggu).unwrap(),
            8e-3,
            "swiglu_packed (odd width)",
        );
        let (cz, gz) = both(g, &r.vec(3 * width, 1.0), 3, width);
        cmp(
            g,
            &CpuBackend.concat_rows(&[&cy, &cz]).unwrap(),
            &g.concat_rows(&[&gy, &gz]).unwrap(),
            1e-6,
            "concat_rows",
        );
    }
}

/// Random sequences over a shuffled block pool: (q_len, context_len) each.
fn attention_case(
    g: &CudaBackend,
    r: &mut Rng,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    seqs: &[(usize, usize)],
) {
    let block_size = 16;
    let blocks_needed: usize = seqs.iter().map(|&(_, c)| c.div_ceil(block_size)).sum();
    let num_blocks = blocks_needed + 7;
    let layout = KvLayout {
        layers: 2,
        num_blocks,
        block_size,
        kv_heads,
        head_dim: hd,
    };
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, r.below(i + 1));
    }
    let mut ckv = CpuBackend.alloc_kv(layout).unwrap();
    let mut gkv = g.alloc_kv(layout).unwrap();
    let kv_width = kv_heads * hd;
    let mut chunks = Vec::new();
    let mut next = 0;
    for &(q_len, ctx) in seqs {
        let table: Vec<u32> = pool[next..next + ctx.div_ceil(block_size)].to_vec();
        next += table.len();
        // The whole context's keys and values, written through write_kv on both backends (layer 1).
        let slots: Vec<u32> = (0..ctx)
            .map(|j| table[j / block_size] * block_size as u32 + (j % block_size) as u32)
            .collect();
        let (ck, gk) = both(g, &r.vec(ctx * kv_width, 2.0), ctx, kv_width);
        let (cv, gv) = both(g, &r.vec(ctx * kv_width, 1.0), ctx, kv_width);
        CpuBackend.write_kv(&mut ckv, 1, &ck, &cv, &slots).unwrap();
        g.write_kv(&mut gkv, 1, &gk, &gv, &slots).unwrap();
        chunks.push(SeqChunk {
            q_len,
            context_len: ctx,
            block_table: table,
            hip: None,
        });
    }
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let (cq, gq) = both(g, &r.vec(tokens * heads * hd, 2.0), tokens, heads * hd);
    let batch = AttentionBatch {
        seqs: chunks,
        block_size,
    };
    let co = CpuBackend.attention(&cq, &ckv, 1, heads, &batch).unwrap();
    let go = g.attention(&gq, &gkv, 1, heads, &batch).unwrap();
    cmp(
        g,
        &co,
        &go,
        1.5e-2,
        &format!("attention heads {heads}/{kv_heads} d{hd} seqs {seqs:?}"),
    );
    // The same contexts as lists of slots (block size 1): the same result on the GPU.
    let slot_view = AttentionBatch {
        seqs: batch
            .seqs
            .iter()
            .map(|c| SeqChunk {
                q_len: c.q_len,
                context_len: c.context_len,
                block_table: (0..c.context_len)
                    .map(|j| {
                        c.block_table[j / block_size] * block_size as u32 + (j % block_size) as u32
                    })
                    .collect(),
                hip: None,
            })
            .collect(),
        block_size: 1,
    };
    let gs = g.attention(&gq, &gkv, 1, heads, &slot_view).unwrap();
    cmp(
        g,
        &co,
        &gs,
        1.5e-2,
        &format!("slot-list attention heads {heads}/{kv_heads} d{hd} seqs {seqs:?}"),
    );
}

#[test]
fn varlen_prefill_and_paged_decode_attention_match() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(4);
    // Decode rows on tensor cores (the default), then on the CUDA-core kernel.
    for tensor_cores in [true, false] {
        g.set_decode_tensor_cores(tensor_cores);
        decode_attention_cases(g, &mut r);
    }
    g.set_decode_tensor_cores(true);
}

/// Fills 256 MiB of the memory pool with NaN and frees it, so that a kernel reading memory it never wrote shows
/// up as a non-finite output instead of passing on whatever zeros the pool happened to hold.
fn poison_pool(g: &CudaBackend) {
    let nan = g.random_bf16(1 << 14, 1 << 13, 1, f32::NAN, 0.0).unwrap();
    drop(nan);
}

fn decode_attention_cases(g: &CudaBackend, r: &mut Rng) {
    for &(heads, kv_heads, hd) in &[
        (4, 2, 16),
        (32, 8, 128),
        (14, 2, 64),
        (8, 8, 32),
        (16, 1, 64),
    ] {
        poison_pool(g);
        // Whole prompts of mixed lengths (tile edges included), chunked prefill over a cached prefix, decode rows.
        attention_case(
            g,
            r,
            heads,
            kv_heads,
            hd,
            &[(1, 1), (63, 63), (64, 64), (65, 65), (300, 300)],
        );
        attention_case(
            g,
            r,
            heads,
            kv_heads,
            hd,
            &[(40, 200), (1, 77), (129, 129), (1, 1000)],
        );
        attention_case(
            g,
            r,
            heads,
            kv_heads,
            hd,
            &[(1, 5), (1, 64), (1, 65), (1, 2500), (1, 17)],
        );
    }
}

#[test]
fn token_log_probs_match_the_host() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(21);
    for &(rows, vocab) in &[(1, 7), (5, 1000), (33, 128_256)] {
        let data = r.vec(rows * vocab, 8.0);
        let (c, gt) = both(g, &data, rows, vocab);
        let tokens: Vec<u32> = (0..rows).map(|_| r.below(vocab) as u32).collect();
        let want = CpuBackend.token_log_probs(&c, &tokens).unwrap();
        let got = g.token_log_probs(&gt, &tokens).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0, f64::max);
        eprintln!("token_log_probs {rows}x{vocab}: worst relative error {worst:.2e}");
        assert!(worst < 1e-4, "token_log_probs {rows}x{vocab}: {worst:.3e}");
    }
    assert!(g
        .token_log_probs(&both(g, &[0.0; 6], 2, 3).1, &[0, 3])
        .is_err());
}

#[test]
fn token_selection_matches_the_host() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(5);
    let (rows, vocab) = (64, 50_000);
    let logits = r.vec(rows * vocab, 8.0);
    let (_, gl) = both(g, &logits, rows, vocab);
    let greedy = g.select_tokens(&gl, 0.0, 0).unwrap();
    for (i, &id) in greedy.iter().enumerate() {
        assert_eq!(
            id,
            select_row(&logits[i * vocab..(i + 1) * vocab], i, 0.0, 0),
            "greedy row {i}"
        );
    }
    let sampled = g.select_tokens(&gl, 0.8, 1234).unwrap();
    let same = sampled
        .iter()
        .enumerate()
        .filter(|&(i, &id)| id == select_row(&logits[i * vocab..(i + 1) * vocab], i, 0.8, 1234))
        .count();
    // The same Gumbel noise on both sides; only float rounding of near-ties may differ.
    assert!(
        same >= rows - 2,
        "{same} of {rows} sampled tokens agree with the host"
    );
    assert_ne!(
        sampled, greedy,
        "sampling at T = 0.8 over 50,000 tokens should not be greedy"
    );
}

fn fixture(name: &str) -> ModelFiles {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/engine")
        .join(name);
    ModelFiles::load(dir.to_str().unwrap()).unwrap()
}

#[test]
fn whole_models_match_the_cpu_backend() {
    let Some(g) = gpu() else { return };
    let cfg = KvCacheConfig {
        block_size: 16,
        num_blocks: 128,
    };
    for name in ["llama", "llama31", "qwen2", "qwen2_bf16", "mistral"] {
        let files = fixture(name);
        let cpu = LlamaModel::new(CpuBackend, &files).unwrap();
        // A second backend on the same device (the model owns its backend).
        let gpu_model = LlamaModel::new(open_gpu().unwrap(), &files).unwrap();
        let _ = g;
        let vocab = files.config.vocab_size as u64;
        let prompts: Vec<Vec<u32>> = [1usize, 7, 40, 130]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n)
                    .map(|j| ((i * 31 + j * 17) as u64 % vocab) as u32)
                    .collect()
            })
            .collect();
        let mut ckv = cpu.backend_kv(&cfg).unwrap();
        let mut gkv = gpu_model.backend_kv(&cfg).unwrap();
        let (mut cc, mut gc) = (KvCache::new(cfg), KvCache::new(cfg));
        let want = prefill_prepacked(&cpu, &mut ckv, &mut cc, &prompts, None, 0).unwrap();
        let got = prefill_prepacked(&gpu_model, &mut gkv, &mut gc, &prompts, None, 0).unwrap();
        let mut steps: Vec<(u64, u32)> = Vec::new();
        for (i, (w, o)) in want.iter().zip(&got).enumerate() {
            let e = rel_err(o, w);
            eprintln!(
                "{name} prompt {i} ({} tokens): logits relative error {e:.2e}",
                prompts[i].len()
            );
            assert!(e < 3e-2, "{name} prompt {i}: {e:.3e}");
            steps.push((i as u64, select_row(w, 0, 0.0, 0)));
        }
        // Four batched decode steps, fed the CPU's greedy tokens on both sides.
        for step in 0..4 {
            let want = decode_step(&cpu, &mut ckv, &mut cc, &steps).unwrap();
            let got = decode_step(&gpu_model, &mut gkv, &mut gc, &steps).unwrap();
            for (i, (w, o)) in want.iter().zip(&got).enumerate() {
                let e = rel_err(o, w);
                assert!(e < 3e-2, "{name} decode step {step} seq {i}: {e:.3e}");
                steps[i].1 = select_row(w, 0, 0.0, 0);
            }
        }
        eprintln!("{name}: prefill and 4 decode steps within bf16 tolerance");
    }
}

#[test]
fn segmented_scoring_matches_the_cpu_backend() {
    let Some(g) = gpu() else { return };
    let _ = g;
    let cfg = KvCacheConfig {
        block_size: 16,
        num_blocks: 128,
    };
    let files = fixture("llama");
    let cpu = LlamaModel::new(CpuBackend, &files).unwrap();
    let gpu_model = LlamaModel::new(open_gpu().unwrap(), &files).unwrap();
    let vocab = files.config.vocab_size as u32;
    let toks = |n: u32, seed: u32| -> Vec<u32> {
        (0..n).map(|i| (i * 13 + seed * 29 + 1) % vocab).collect()
    };
    let request = SegmentedScoring {
        prefix: toks(37, 1),
        segments: vec![toks(40, 2), toks(9, 3), toks(70, 4), toks(1, 5)],
        suffix: toks(6, 6),
        continuation: toks(5, 7),
        subsets: (0..16).collect(),
    };
    let mut ckv = cpu.backend_kv(&cfg).unwrap();
    let mut gkv = gpu_model.backend_kv(&cfg).unwrap();
    let (mut cc, mut gc) = (KvCache::new(cfg), KvCache::new(cfg));
    let want = score_segmented(&cpu, &mut ckv, &mut cc, &request, 96, 0).unwrap();
    let got = score_segmented(&gpu_model, &mut gkv, &mut gc, &request, 96, 0).unwrap();
    assert_eq!(want.passes, got.passes);
    let mut worst = 0f64;
    for (w, o) in want.log_probs.iter().zip(&got.log_probs) {
        worst = worst.max((w - o).abs() / w.abs().max(1.0));
    }
    eprintln!(
        "segmented scoring, 16 subsets in {} passes: worst relative error {worst:.2e}",
        got.passes
    );
    assert!(worst < 3e-2, "{:?} vs {:?}", got.log_probs, want.log_probs);
    assert_eq!(gc.usage().used_blocks, 0);
}

#[test]
fn h2o_scores_and_compaction_match() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(9);
    for &(heads, kv_heads, hd) in &[(32, 8, 128), (4, 2, 16), (14, 2, 64)] {
        let block_size = 16;
        // (new rows, context) per chunk: a prefill chunk after cached tokens, decode rows, a fresh prompt.
        let seqs = [(40usize, 200usize), (1, 77), (1, 300), (129, 129)];
        let blocks: usize = seqs.iter().map(|&(_, c)| c.div_ceil(block_size)).sum();
        let layout = KvLayout {
            layers: 2,
            num_blocks: blocks + 3,
            block_size,
            kv_heads,
            head_dim: hd,
        };
        let mut ckv = CpuBackend.alloc_kv(layout).unwrap();
        let mut gkv = g.alloc_kv(layout).unwrap();
        let kv_width = kv_heads * hd;
        let mut chunks = Vec::new();
        let mut all_slots = Vec::new();
        let mut next = 0u32;
        for &(q_len, ctx) in &seqs {
            let table: Vec<u32> = (next..next + ctx.div_ceil(block_size) as u32)
                .rev()
                .collect();
            next += table.len() as u32;
            let slots: Vec<u32> = (0..ctx)
                .map(|j| table[j / block_size] * block_size as u32 + (j % block_size) as u32)
                .collect();
            for layer in 0..2 {
                let (ck, gk) = both(g, &r.vec(ctx * kv_width, 2.0), ctx, kv_width);
                let (cv, gv) = both(g, &r.vec(ctx * kv_width, 1.0), ctx, kv_width);
                CpuBackend
                    .write_kv(&mut ckv, layer, &ck, &cv, &slots)
                    .unwrap();
                g.write_kv(&mut gkv, layer, &gk, &gv, &slots).unwrap();
            }
            all_slots.push(slots);
            chunks.push(SeqChunk {
                q_len,
                context_len: ctx,
                block_table: table,
                hip: None,
            });
        }
        let tokens: usize = seqs.iter().map(|s| s.0).sum();
        let (cq, gq) = both(g, &r.vec(tokens * heads * hd, 2.0), tokens, heads * hd);
        let batch = AttentionBatch {
            seqs: chunks,
            block_size,
        };
        let every: Vec<u32> = all_slots.concat();
        poison_pool(g);
        CpuBackend.reset_scores(&mut ckv, &every).unwrap();
        g.reset_scores(&mut gkv, &every).unwrap();
        // Two rounds into layer 1 (scores add up), chunks 0, 1 and 3 tracked.
        for _ in 0..2 {
            CpuBackend
                .accumulate_attention(&cq, &mut ckv, 1, heads, &batch, &[0, 1, 3])
                .unwrap();
            g.accumulate_attention(&gq, &mut gkv, 1, heads, &batch, &[0, 1, 3])
                .unwrap();
        }
        let want = CpuBackend.read_scores(&ckv, &every).unwrap();
        let got = g.read_scores(&gkv, &every).unwrap();
        let e = rel_err(&got, &want);
        eprintln!("h2o scores heads {heads}/{kv_heads} d{hd}: relative error {e:.2e}");
        assert!(e < 1e-2, "h2o scores {heads}/{kv_heads} d{hd}: {e:.3e}");
        // Attention with the scores of every chunk on layer 0: decode rows take the decode kernel's raw scores.
        let co = CpuBackend
            .attention_tracked(&cq, &mut ckv, 0, heads, &batch, &[0, 1, 2, 3])
            .unwrap();
        let go = g
            .attention_tracked(&gq, &mut gkv, 0, heads, &batch, &[0, 1, 2, 3])
            .unwrap();
        cmp(
            g,
            &co,
            &go,
            1.5e-2,
            &format!("attention_tracked heads {heads}/{kv_heads} d{hd}"),
        );
        let want0 = CpuBackend.read_scores(&ckv, &every).unwrap();
        let got0 = g.read_scores(&gkv, &every).unwrap();
        let e0 = rel_err(
            &got0[..every.len() * kv_heads],
            &want0[..every.len() * kv_heads],
        );
        eprintln!("h2o scores from the attention kernels, heads {heads}/{kv_heads} d{hd}: relative error {e0:.2e}");
        assert!(e0 < 1e-2, "{e0:.3e}");
        CpuBackend.reset_scores(&mut ckv, &every).unwrap();
        g.reset_scores(&mut gkv, &every).unwrap();
        for kv in [
            CpuBackend.read_scores(&ckv, &every).unwrap(),
            g.read_scores(&gkv, &every).unwrap(),
        ] {
            assert!(kv.iter().all(|&x| x == 0.0));
        }
        for _ in 0..2 {
            CpuBackend
                .accumulate_attention(&cq, &mut ckv, 1, heads, &batch, &[0, 1, 3])
                .unwrap();
            g.accumulate_attention(&gq, &mut gkv, 1, heads, &batch, &[0, 1, 3])
                .unwrap();
        }
        // Layer 0 received nothing, chunk 2 nothing either; a decode row's probabilities sum to its group size.
        assert!(want[..every.len() * kv_heads].iter().all(|&x| x == 0.0));
        let group = (heads / kv_heads) as f32;
        let seq1: f32 = (0..77)
            .map(|i| got[(kv_heads) * every.len() + 200 + i])
            .sum();
        assert!((seq1 - 2.0 * group).abs() < 1e-3 * group, "{seq1}");
        // Compaction of the first sequence to 50 tokens per head, different kept sets per layer and head.
        let n = 50;
        let mut keep = Vec::new();
        for _ in 0..2 * kv_heads {
            let mut k: Vec<u32> = (0..200u32).collect();
            for i in (1..k.len()).rev() {
                k.swap(i, r.below(i + 1));
            }
            let mut k = k[..n].to_vec();
            k.sort_unstable();
            keep.extend(k);
        }
        CpuBackend
            .compact_kv(&mut ckv, &all_slots[0], &keep, n)
            .unwrap();
        g.compact_kv(&mut gkv, &all_slots[0], &keep, n).unwrap();
        let want = CpuBackend.read_scores(&ckv, &all_slots[0][..n]).unwrap();
        let got = g.read_scores(&gkv, &all_slots[0][..n]).unwrap();
        assert!(rel_err(&got, &want) < 1e-2);
        // Attention over the compacted 50 tokens agrees too.
        let small = AttentionBatch {
            seqs: vec![SeqChunk {
                q_len: 1,
                context_len: n,
                block_table: batch.seqs[0].block_table.clone(),
                hip: None,
            }],
            block_size,
        };
        let (cq1, gq1) = both(g, &r.vec(heads * hd, 2.0), 1, heads * hd);
        for layer in 0..2 {
            let co = CpuBackend
                .attention(&cq1, &ckv, layer, heads, &small)
                .unwrap();
            let go = g.attention(&gq1, &gkv, layer, heads, &small).unwrap();
            cmp(
                g,
                &co,
                &go,
                1.5e-2,
                &format!(
                    "attention after compaction, layer {layer} heads {heads}/{kv_heads} d{hd}"
                ),
            );
        }
    }
}

#[test]
fn h2o_decoding_matches_the_cpu_backend() {
    let Some(g) = gpu() else { return };
    let _ = g;
    let files = fixture("llama");
    let cpu = LlamaModel::new(CpuBackend, &files).unwrap();
    let gpu_model = LlamaModel::new(open_gpu().unwrap(), &files).unwrap();
    let vocab = files.config.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = [90u32, 130, 60]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| (j * 7 + i as u32 * 13 + 1) % vocab)
                .collect()
        })
        .collect();
    let cfg = KvCacheConfig {
        block_size: 16,
        num_blocks: 128,
    };
    let options = DecodeOptions {
        steps: 24,
        budget: Some(KvBudget {
            heavy: BudgetPart::Tokens(12),
            recent: BudgetPart::Tokens(20),
        }),
        slack: 4,
        chunk: 64,
    };
    let mut cpu_logits = Vec::new();
    let mut ckv = cpu.backend_kv(&cfg).unwrap();
    let mut cc = KvCache::new(cfg);
    let want = h2o_decode(
        &cpu,
        &mut ckv,
        &mut cc,
        &prompts,
        &options,
        None,
        &mut |_, l| {
            cpu_logits.push(CpuBackend.to_host(l).unwrap().0);
            Ok(())
        },
    )
    .unwrap();
    let mut step = 0;
    let mut worst = 0f64;
    let mut gkv = gpu_model.backend_kv(&cfg).unwrap();
    let mut gc = KvCache::new(cfg);
    let got = h2o_decode(
        &gpu_model,
        &mut gkv,
        &mut gc,
        &prompts,
        &options,
        Some(&want.tokens),
        &mut |_, l| {
            let (data, _, _) = gpu_model.backend().to_host(l).unwrap();
            worst = worst.max(rel_err(&data, &cpu_logits[step]));
            step += 1;
            Ok(())
        },
    )
    .unwrap();
    eprintln!("h2o decoding, 3 sequences x 24 steps with eviction: worst logits relative error {worst:.2e}");
    assert!(worst < 3e-2, "{worst:.3e}");
    for (a, b) in want.states.iter().zip(&got.states) {
        assert_eq!(a.as_ref().unwrap().evicted, b.as_ref().unwrap().evicted);
    }
    assert_eq!(gc.usage().used_blocks, 0);
}

/// HiP's parameters for the CUDA tests: the kernels' query block (64 rows) and key blocks of 64 or 128 keys.
fn hip_params(block_k: usize, top_k: usize) -> engram_engine::HipParams {
    engram_engine::HipParams {
        block_q: 64,
        block_k,
        top_k,
        sink_tokens: 64,
        recent_tokens: 256,
        min_context: 512,
    }
}

/// Random chunks `(q_len, context_len, hip)` on a shuffled block pool of both backends (layer 0), and the
/// queries: the CPU's and the GPU's copies of the same bf16 values.
#[allow(clippy::type_complexity)]
fn hip_batch(
    g: &CudaBackend,
    r: &mut Rng,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    seqs: &[(usize, usize, Option<engram_engine::HipParams>)],
) -> (
    AttentionBatch,
    (CpuTensor, <CudaBackend as Backend>::Tensor),
    (<CpuBackend as Backend>::Kv, <CudaBackend as Backend>::Kv),
) {
    let block_size = 16;
    let num_blocks: usize = seqs.iter().map(|s| s.1.div_ceil(block_size)).sum::<usize>() + 3;
    let layout = KvLayout {
        layers: 1,
        num_blocks,
        block_size,
        kv_heads,
        head_dim: hd,
    };
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, r.below(i + 1));
    }
    let (mut ckv, mut gkv) = (
        CpuBackend.alloc_kv(layout).unwrap(),
        g.alloc_kv(layout).unwrap(),
    );
    let kv_width = kv_heads * hd;
    let (mut chunks, mut next) = (Vec::new(), 0);
    for &(q_len, ctx, hip) in seqs {
        let table: Vec<u32> = pool[next..next + ctx.div_ceil(block_size)].to_vec();
        next += table.len();
        let slots: Vec<u32> = (0..ctx)
            .map(|j| table[j / block_size] * block_size as u32 + (j % block_size) as u32)
            .collect();
        let (ck, gk) = both(g, &r.vec(ctx * kv_width, 2.0), ctx, kv_width);
        let (cv, gv) = both(g, &r.vec(ctx * kv_width, 1.0), ctx, kv_width);
        CpuBackend.write_kv(&mut ckv, 0, &ck, &cv, &slots).unwrap();
        g.write_kv(&mut gkv, 0, &gk, &gv, &slots).unwrap();
        let mut chunk = SeqChunk::dense(q_len, ctx, table);
        chunk.hip = hip;
        chunks.push(chunk);
    }
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let q = both(g, &r.vec(tokens * heads * hd, 2.0), tokens, heads * hd);
    let batch = AttentionBatch {
        seqs: chunks,
        block_size,
    };
    (batch, q, (ckv, gkv))
}

#[test]
fn hip_masks_and_sparse_attention_match_the_cpu_reference() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(23);
    // The 8B shape, Qwen2.5-0.5B's, one KV head per query head, and a group past the decode kernel's 8 (its
    // decode rows go through the prefill kernel).
    for &(heads, kv_heads, hd) in &[(32, 8, 128), (14, 2, 64), (4, 4, 64), (16, 1, 32)] {
        for &(block_k, top_k) in &[(64, 8), (128, 4)] {
            let p = Some(hip_params(block_k, top_k));
            let seqs = [
                (200, 3000, p),
                (1, 5000, p),
                (70, 700, None),
                (1, 777, p),
                (1, 1500, None),
                (64, 2048, p),
            ];
            let (batch, (cq, gq), (ckv, gkv)) = hip_batch(g, &mut r, heads, kv_heads, hd, &seqs);
            let what =
                format!("hip heads {heads}/{kv_heads} d{hd} block_k {block_k} top_k {top_k}");
            let cm = CpuBackend.hip_mask(&cq, &ckv, 0, heads, &batch).unwrap();
            let gm = g.hip_mask(&gq, &gkv, 0, heads, &batch).unwrap();
            assert_eq!(cm.len(), gm.len(), "{what}: mask length");
            let lists = cm.len() / top_k;
            let same = cm
                .chunks(top_k)
                .zip(gm.chunks(top_k))
                .filter(|(a, b)| a == b)
                .count();
            eprintln!("{what}: {same} of {lists} query blocks choose the same key blocks");
            // Scores summed in another order may swap a near-tie; anything more is a bug.
            assert!(same * 100 >= lists * 97, "{what}: masks differ");
            if same == lists {
                let co = CpuBackend.attention(&cq, &ckv, 0, heads, &batch).unwrap();
                let go = g.attention(&gq, &gkv, 0, heads, &batch).unwrap();
                cmp(g, &co, &go, 1.5e-2, &what);
            }
        }
    }
}

#[test]
fn hip_with_every_block_kept_is_dense_attention_on_the_gpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(24);
    let every = Some(engram_engine::HipParams {
        top_k: 256,
        ..hip_params(64, 256)
    });
    let seqs = [(300, 4000, every), (1, 6000, every), (1, 900, every)];
    let (mut batch, (_, gq), (_, gkv)) = hip_batch(g, &mut r, 32, 8, 128, &seqs);
    let sparse = g.attention(&gq, &gkv, 0, 32, &batch).unwrap();
    for c in &mut batch.seqs {
        c.hip = None;
    }
    let dense = g.attention(&gq, &gkv, 0, 32, &batch).unwrap();
    let (a, _, _) = g.to_host(&sparse).unwrap();
    let (b, _, _) = g.to_host(&dense).unwrap();
    let e = rel_err(&a, &b);
    eprintln!("hip with every block kept vs dense on the GPU: relative error {e:.2e}");
    assert!(e < 1e-3, "relative error {e:.3e}");
}
