//! Host side of the H2O kernels (`kernels/h2o.cu`): the attention score of every cached key, kept per slot and KV
//! head for all layers in one f32 buffer (`CudaKv::scores`, layer `l` at `l * layer_stride`), and the compaction
//! of each head's kept tokens into a sequence's first slots. Decode rows get their probabilities from the
//! tensor-core decode attention kernel itself (it writes every key's score and each row's log-sum-exp, and
//! `h2o_from_raw` adds the normalised probabilities); prompt chunks, whose probabilities need each row's final
//! softmax statistics before any key's share is known, take `h2o_accumulate`, which computes them in two passes.

use cudarc::driver::LaunchConfig;

use super::attention::{plan, run_scored, RawScores};
use super::launch::PushArg;
use super::{launch, shape_err, CudaBackend, CudaError, CudaKv, CudaTensor, HEAD_DIMS};
use crate::backend::{check_compaction, AttentionBatch, BackendError};

/// Threads of the accumulation kernel (its H2O_THREADS).
const THREADS: u32 = 128;
/// Most (row, query head) pairs per accumulation block (its H2O_PAIRS).
const PAIRS: usize = 16;

/// Floats of one layer's scores.
pub fn layer_stride(kv: &CudaKv) -> usize {
    let l = kv.layout;
    l.num_blocks * l.block_size * l.kv_heads
}

fn check_slots(kv: &CudaKv, slots: &[u32], op: &'static str) -> Result<(), BackendError> {
    let l = kv.layout;
    let capacity = (l.num_blocks * l.block_size) as u32;
    if slots.iter().any(|&s| s >= capacity) {
        return Err(shape_err(op, format!("a slot beyond {capacity}")));
    }
    Ok(())
}

/// Zeroes the scores of `slots` in every layer.
pub fn reset(be: &CudaBackend, kv: &mut CudaKv, slots: &[u32]) -> Result<(), BackendError> {
    check_slots(kv, slots, "reset_scores")?;
    if slots.is_empty() {
        return Ok(());
    }
    let l = kv.layout;
    let dev = be.upload("h2o_slots", slots)?;
    let (n, kvh, stride) = (
        slots.len() as i32,
        l.kv_heads as i32,
        layer_stride(kv) as u64,
    );
    let mut b = be.builder(&be.kernels.h2o_reset);
    b.arg(&mut kv.scores)
        .arg(&*dev)
        .arg(&n)
        .arg(&kvh)
        .arg(&stride);
    let cfg = LaunchConfig {
        grid_dim: (slots.len() as u32, l.layers as u32, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "h2o", "h2o_reset")?;
    Ok(())
}

/// Adds the attention probabilities of the tracked chunks' query rows to their keys' scores in `layer`.
pub fn accumulate(
    be: &CudaBackend,
    q: &CudaTensor,
    kv: &mut CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
    tracked: &[usize],
) -> Result<(), BackendError> {
    let l = kv.layout;
    let d = l.head_dim;
    let dim = HEAD_DIMS
        .iter()
        .position(|&h| h == d)
        .ok_or_else(|| shape_err("accumulate_attention", format!("head_dim {d}")))?;
    let (tokens, width) = q.shape();
    let group = heads / l.kv_heads.max(1);
    let described: usize = batch.seqs.iter().map(|s| s.q_len).sum();
    if width != heads * d
        || !heads.is_multiple_of(l.kv_heads)
        || group > PAIRS
        || described != tokens
        || layer >= l.layers
        || tracked.iter().any(|&s| s >= batch.seqs.len())
    {
        return Err(shape_err(
            "accumulate_attention",
            format!("{tokens}x{width} queries, {heads} heads, chunks {tracked:?}"),
        ));
    }
    let rows_per_block = (PAIRS / group).max(1);
    // The attention plan's per-chunk metadata and tables, then this kernel's work items (chunk, first row).
    let n = batch.seqs.len();
    let p = plan(batch, false);
    let mut data = p.data[..p.work.0].to_vec();
    let (tables_at, work_at) = (p.tables, data.len());
    for &c in tracked {
        for first in (0..batch.seqs[c].q_len).step_by(rows_per_block) {
            data.extend([c as u32, first as u32]);
        }
    }
    let items = (data.len() - work_at) / 2;
    if items == 0 {
        return Ok(());
    }
    let meta = be.upload("h2o_meta", &data)?;
    let view = |at: usize, len: usize| meta.slice(at..at + len.max(1));
    let (r0, ql, cx, t0) = (view(0, n), view(n, n), view(2 * n, n), view(3 * n, n));
    let tables = meta.slice(tables_at..work_at.max(tables_at + 1));
    let work = view(work_at, 2 * items);
    let scale = 1.0 / (d as f32).sqrt();
    let (hh, kvh, bs, rpb) = (
        heads as i32,
        l.kv_heads as i32,
        batch.block_size as i32,
        rows_per_block as i32,
    );
    let offset = (layer * layer_stride(kv)) as u64;
    let mut b = be.builder(&be.kernels.h2o_accumulate[dim]);
    b.arg(q.bf16("accumulate_attention")?)
        .arg(&kv.k[layer])
        .arg(&mut kv.scores)
        .arg(&work)
        .arg(&r0)
        .arg(&ql)
        .arg(&cx)
        .arg(&t0)
        .arg(&tables)
        .arg(&hh)
        .arg(&kvh)
        .arg(&bs)
        .arg(&scale)
        .arg(&rpb)
        .arg(&offset);
    let cfg = LaunchConfig {
        grid_dim: (items as u32, l.kv_heads as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "h2o", &format!("h2o_accumulate_d{d}"))?;
    Ok(())
}

/// The scores of `slots`, `[layer][kv_head][slot]`, on the host.
pub fn read(be: &CudaBackend, kv: &CudaKv, slots: &[u32]) -> Result<Vec<f32>, BackendError> {
    check_slots(kv, slots, "read_scores")?;
    let l = kv.layout;
    if slots.is_empty() {
        return Ok(Vec::new());
    }
    let dev = be.upload("h2o_slots", slots)?;
    let mut out = be.alloc_f32(l.layers * l.kv_heads * slots.len())?;
    let (n, kvh, stride) = (
        slots.len() as i32,
        l.kv_heads as i32,
        layer_stride(kv) as u64,
    );
    let mut b = be.builder(&be.kernels.h2o_read);
    b.arg(&kv.scores)
        .arg(&*dev)
        .arg(&n)
        .arg(&kvh)
        .arg(&stride)
        .arg(&mut out);
    let cfg = LaunchConfig {
        grid_dim: (slots.len() as u32, l.layers as u32, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "h2o", "h2o_read")?;
    Ok(be
        .stream
        .clone_dtoh(&out)
        .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?)
}

/// Moves each layer and head's kept tokens to the first `n` of `slots`, through scratch (gather, then scatter).
pub fn compact(
    be: &CudaBackend,
    kv: &mut CudaKv,
    slots: &[u32],
    keep: &[u32],
    n: usize,
) -> Result<(), BackendError> {
    let l = kv.layout;
    check_compaction(&l, slots, keep, n)?;
    if n == 0 {
        return Ok(());
    }
    let dev_slots = be.upload("h2o_slots", slots)?;
    let dev_keep = be.upload("h2o_keep", keep)?;
    let per_layer = l.kv_heads * n;
    let mut tk = be.alloc_bf16(per_layer * l.head_dim)?;
    let mut tv = be.alloc_bf16(per_layer * l.head_dim)?;
    let mut ts = be.alloc_f32(per_layer)?;
    let (nn, kvh, hd) = (n as i32, l.kv_heads as i32, l.head_dim as i32);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, l.kv_heads as u32, 1),
        block_dim: (l.head_dim.clamp(32, 128) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    for layer in 0..l.layers {
        let offset = (layer * layer_stride(kv)) as u64;
        let keep_view = dev_keep.slice(layer * per_layer..(layer + 1) * per_layer);
        let mut b = be.builder(&be.kernels.h2o_gather);
        b.arg(&kv.k[layer])
            .arg(&kv.v[layer])
            .arg(&kv.scores)
            .arg(&offset)
            .arg(&*dev_slots)
            .arg(&keep_view)
            .arg(&nn)
            .arg(&kvh)
            .arg(&hd)
            .arg(&mut tk)
            .arg(&mut tv)
            .arg(&mut ts);
        launch(b, cfg, "h2o", "h2o_gather")?;
        let mut b = be.builder(&be.kernels.h2o_scatter);
        b.arg(&mut kv.k[layer])
            .arg(&mut kv.v[layer])
            .arg(&mut kv.scores)
            .arg(&offset)
            .arg(&*dev_slots)
            .arg(&nn)
            .arg(&kvh)
            .arg(&hd)
            .arg(&tk)
            .arg(&tv)
            .arg(&ts);
        launch(b, cfg, "h2o", "h2o_scatter")?;
    }
    Ok(())
}

/// Attention for `batch` with the scores of the chunks `tracked`: decode rows through the decode kernel's raw
/// scores, the rest through [`accumulate`].
pub fn attention_tracked(
    be: &CudaBackend,
    q: &CudaTensor,
    kv: &mut CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
    tracked: &[usize],
) -> Result<CudaTensor, BackendError> {
    let decode_tracked = tracked
        .iter()
        .any(|&c| batch.seqs.get(c).is_some_and(|s| s.q_len == 1));
    let (out, raw) = run_scored(be, q, kv, layer, heads, batch, decode_tracked)?;
    let covered: Vec<usize> = match &raw {
        Some(r) => {
            from_raw(be, kv, layer, heads, batch, tracked, r)?;
            r.decode_chunks.clone()
        }
        None => Vec::new(),
    };
    let rest: Vec<usize> = tracked
        .iter()
        .copied()
        .filter(|c| !covered.contains(c))
        .collect();
    if !rest.is_empty() {
        accumulate(be, q, kv, layer, heads, batch, &rest)?;
    }
    Ok(out)
}

/// Adds the probabilities of the tracked decode rows in `raw` to their keys' scores.
fn from_raw(
    be: &CudaBackend,
    kv: &mut CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
    tracked: &[usize],
    raw: &RawScores,
) -> Result<(), BackendError> {
    let l = kv.layout;
    // Per tracked decode row: its decode index, context and table offset; then the tables.
    let rows: Vec<(usize, usize)> = raw
        .decode_chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| tracked.contains(c))
        .map(|(i, &c)| (i, c))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut data: Vec<u32> = rows.iter().map(|&(i, _)| i as u32).collect();
    data.extend(rows.iter().map(|&(_, c)| batch.seqs[c].context_len as u32));
    let mut toff = 0u32;
    for &(_, c) in &rows {
        data.push(toff);
        toff += batch.seqs[c].block_table.len() as u32;
    }
    let tables_at = data.len();
    for &(_, c) in &rows {
        data.extend_from_slice(&batch.seqs[c].block_table);
    }
    let meta = be.upload("h2o_raw_meta", &data)?;
    let (ri, cx, t0) = (
        meta.slice(0..n),
        meta.slice(n..2 * n),
        meta.slice(2 * n..3 * n),
    );
    let tables = meta.slice(tables_at..data.len().max(tables_at + 1));
    let max_ctx = rows
        .iter()
        .map(|&(_, c)| batch.seqs[c].context_len)
        .max()
        .unwrap_or(1);
    let (stride, hh, kvh, bs) = (
        raw.stride as i32,
        heads as i32,
        l.kv_heads as i32,
        batch.block_size as i32,
    );
    let offset = (layer * layer_stride(kv)) as u64;
    let mut b = be.builder(&be.kernels.h2o_from_raw);
    b.arg(&raw.raw)
        .arg(&stride)
        .arg(&raw.lse)
        .arg(&mut kv.scores)
        .arg(&offset)
        .arg(&ri)
        .arg(&cx)
        .arg(&t0)
        .arg(&tables)
        .arg(&hh)
        .arg(&kvh)
        .arg(&bs);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, l.kv_heads as u32, max_ctx.div_ceil(256) as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "h2o", "h2o_from_raw")?;
    Ok(())
}
