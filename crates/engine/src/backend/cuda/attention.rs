//! Host side of the attention kernels (`kernels/attention.cu`): splits a packed batch into prefill chunks (more
//! than one query row: the varlen FlashAttention-style kernel over 64-row tiles) and decode rows (one query row:
//! the split-context paged kernel, all query heads of a KV head together, then the combine kernel), and uploads
//! the batch's metadata in one buffer.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::launch::PushArg;
use super::{
    hip, launch, rows_cfg, CudaBackend, CudaBuf, CudaError, CudaKv, CudaTensor, HEAD_DIMS,
};
use crate::backend::AttentionBatch;

/// Query rows per prefill tile and keys per tile (the kernels' TILE).
pub const TILE: usize = 64;
/// Most query heads per KV head the decode kernel takes (its MAX_GROUP); larger groups use the prefill kernel.
pub const MAX_GROUP: usize = 8;

/// The metadata of one batch, as offsets into one u32 buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The buffer: per-sequence row0, q_len, ctx, table0, then the block tables, the prefill work items, and the
    /// decode sequences' row0, ctx, table0.
    pub data: Vec<u32>,
    /// Sequences.
    pub seqs: usize,
    /// Offset of the block tables.
    pub tables: usize,
    /// Offset and count of the prefill work items (pairs of sequence index and tile).
    pub work: (usize, usize),
    /// Offset and count of the decode sequences.
    pub decode: (usize, usize),
    /// Longest context among the decode sequences.
    pub decode_max_ctx: usize,
}

/// Builds the metadata; `decode_kernel` false sends every sequence to the prefill kernel.
pub fn plan(batch: &AttentionBatch, decode_kernel: bool) -> Plan {
    let n = batch.seqs.len();
    let mut row0 = Vec::with_capacity(n);
    let mut table0 = Vec::with_capacity(n);
    let (mut row, mut toff) = (0u32, 0u32);
    for s in &batch.seqs {
        row0.push(row);
        table0.push(toff);
        row += s.q_len as u32;
        toff += s.block_table.len() as u32;
    }
    let mut data = Vec::new();
    data.extend_from_slice(&row0);
    data.extend(batch.seqs.iter().map(|s| s.q_len as u32));
    data.extend(batch.seqs.iter().map(|s| s.context_len as u32));
    data.extend_from_slice(&table0);
    let tables = data.len();
    for s in &batch.seqs {
        data.extend_from_slice(&s.block_table);
    }
    let work_at = data.len();
    let mut decode = Vec::new();
    for (i, s) in batch.seqs.iter().enumerate() {
        if decode_kernel && s.q_len == 1 {
            decode.push(i);
        } else {
            for t in 0..s.q_len.div_ceil(TILE) {
                data.extend([i as u32, t as u32]);
            }
        }
    }
    let work = (work_at, (data.len() - work_at) / 2);
    let decode_at = data.len();
    data.extend(decode.iter().map(|&i| row0[i]));
    data.extend(decode.iter().map(|&i| batch.seqs[i].context_len as u32));
    data.extend(decode.iter().map(|&i| table0[i]));
    let decode_max_ctx = decode
        .iter()
        .map(|&i| batch.seqs[i].context_len)
        .max()
        .unwrap_or(0);
    Plan {
        data,
        seqs: n,
        tables,
        work,
        decode: (decode_at, decode.len()),
        decode_max_ctx,
    }
}

/// Fewest key tiles a decode split takes by default (`engine.cuda.decode_min_tiles` overrides it).
pub const MIN_TILES_PER_SPLIT: usize = 1;

/// Decode-attention blocks per multiprocessor the split of the context aims at by default
/// (`engine.cuda.decode_blocks_per_sm` overrides it).
pub const BLOCKS_PER_SM: usize = 2;

/// Keys per decode split at the default [`BLOCKS_PER_SM`]: see [`split_len_for`].
pub fn split_len_with(
    max_ctx: usize,
    blocks_without_split: usize,
    sm_count: usize,
    min_tiles: usize,
) -> usize {
    split_len_for(
        max_ctx,
        blocks_without_split,
        sm_count,
        min_tiles,
        BLOCKS_PER_SM,
    )
}

/// Keys per decode split: enough splits that the grid has about `blocks_per_sm` blocks per multiprocessor, at
/// most 32 splits, each of at least `min_tiles` tiles (a single split writes its output directly, with no combine).
pub fn split_len_for(
    max_ctx: usize,
    blocks_without_split: usize,
    sm_count: usize,
    min_tiles: usize,
    blocks_per_sm: usize,
) -> usize {
    let tiles = max_ctx.div_ceil(TILE).max(1);
    let wanted = (blocks_per_sm * sm_count)
        .div_ceil(blocks_without_split.max(1))
        .clamp(1, 32);
    let per = tiles.div_ceil(wanted.min(tiles)).max(min_tiles.min(tiles));
    TILE * per
}

/// H2O's view of a decode launch: every decode row's score of every key (log2 domain), per row and head
/// `stride` apart, and each row and head's log2-sum-exp; rows are in decode order (`decode_chunks`: their chunks).
pub struct RawScores {
    /// `[decode row][head][stride]`.
    pub raw: CudaSlice<f32>,
    /// Floats between two heads' scores.
    pub stride: usize,
    /// `[decode row][head]`.
    pub lse: CudaSlice<f32>,
    /// The batch chunk of each decode row.
    pub decode_chunks: Vec<usize>,
}

/// Runs attention for `batch` on `layer`.
pub fn run(
    be: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
) -> Result<CudaTensor, CudaError> {
    Ok(run_scored(be, q, kv, layer, heads, batch, false)?.0)
}

/// [`run`], and with `emit_scores` the decode rows' raw scores for H2O (on the tensor-core decode kernel).
pub fn run_scored(
    be: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
    emit_scores: bool,
) -> Result<(CudaTensor, Option<RawScores>), CudaError> {
    let l = kv.layout;
    let dim_index = check_batch(q, kv, layer, heads, batch)?;
    let (tokens, width) = q.shape();
    let group = heads / l.kv_heads;
    let p = plan(batch, group <= MAX_GROUP);
    let meta = be.upload("attention", &p.data)?;
    let mut out = be.alloc_bf16(tokens * width)?;
    let args = Shared::new(q, kv, layer, heads, batch.block_size, &meta, &p, dim_index)?;
    let sparse = batch.seqs.iter().any(|c| c.sparse().is_some());
    if sparse && emit_scores {
        return Err(CudaError::Shape {
            op: "attention",
            reason: "HiP sparse attention does not keep H2O scores".into(),
        });
    }
    let (prefill_lists, decode_lists) = if sparse {
        hip_lists(be, &args, &p, batch, None)?
    } else {
        (None, None)
    };
    if p.work.1 > 0 {
        launch_prefill(be, &args, &p, prefill_lists.as_ref(), &mut out)?;
    }
    let scored = if p.decode.1 > 0 {
        launch_decode(
            be,
            &args,
            &p,
            batch,
            emit_scores,
            decode_lists.as_ref(),
            &mut out,
        )?
    } else {
        None
    };
    Ok((
        CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows: tokens,
            cols: width,
        },
        scored,
    ))
}

/// HiP's tile lists of one launch, and the keys its longest row visits (what decode splits are sized for).
pub struct Lists {
    lists: CudaSlice<u32>,
    stride: usize,
    max_keys: usize,
}

/// HiP's search for the prefill work items and for the decode rows of `p`, each writing its query blocks'
/// chosen blocks to `mask` when given ([`crate::hip::mask_len`]'s layout).
fn hip_lists(
    be: &CudaBackend,
    s: &Shared<'_>,
    p: &Plan,
    batch: &AttentionBatch,
    mut mask: Option<&mut CudaSlice<u32>>,
) -> Result<(Option<Lists>, Option<Lists>), CudaError> {
    hip::check_params(batch)?;
    let n = p.seqs;
    let row0 = &p.data[..n];
    let (offsets, _) = hip::mask_offsets(batch, s.kv_heads as usize);
    let (table0, tables) = (s.view(3 * n, n), s.meta.slice(p.tables..));
    let inputs = hip::SearchInputs {
        q: s.q,
        k: s.k,
        table0: &table0,
        tables: &tables,
        heads: s.heads,
        kv_heads: s.kv_heads,
        block_size: s.block_size,
        dim_index: s.dim_index,
        head_dim: s.head_dim,
    };
    let work: Vec<(usize, usize)> = p.data[p.work.0..p.work.0 + 2 * p.work.1]
        .chunks_exact(2)
        .map(|w| (w[0] as usize, w[1] as usize))
        .collect();
    let decode: Vec<(usize, usize)> = decode_chunks(batch)
        .into_iter()
        .filter(|_| p.decode.1 > 0)
        .map(|c| (c, 0))
        .collect();
    let mut run =
        |units: &[(usize, usize)], key: &'static str| -> Result<Option<Lists>, CudaError> {
            if !units.iter().any(|&(c, _)| batch.seqs[c].sparse().is_some()) {
                return Ok(None);
            }
            let items = hip::items(batch, row0, units, Some(&offsets), s.kv_heads as usize);
            let ctx: Vec<usize> = units
                .iter()
                .map(|&(c, _)| batch.seqs[c].context_len)
                .collect();
            let lists = hip::search(be, &inputs, &items, key, mask.as_deref_mut())?;
            Ok(Some(Lists {
                lists,
                stride: items.stride,
                max_keys: hip::decode_keys(&items, &ctx),
            }))
        };
    Ok((run(&work, "hip_prefill")?, run(&decode, "hip_decode")?))
}

/// The chosen key blocks of every HiP query block of `batch` ([`crate::hip::mask_len`]'s layout), from the same
/// search [`run`] does.
pub fn hip_mask(
    be: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
) -> Result<Vec<u32>, CudaError> {
    let l = kv.layout;
    let dim_index = check_batch(q, kv, layer, heads, batch)?;
    let p = plan(batch, heads / l.kv_heads <= MAX_GROUP);
    let meta = be.upload("attention", &p.data)?;
    let args = Shared::new(q, kv, layer, heads, batch.block_size, &meta, &p, dim_index)?;
    let (_, total) = hip::mask_offsets(batch, l.kv_heads);
    // SAFETY: every HiP query block writes all its entries before the copy back.
    let mut mask = unsafe { be.stream.alloc::<u32>(total.max(1)) }
        .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
    hip_lists(be, &args, &p, batch, Some(&mut mask))?;
    let host = be
        .stream
        .clone_dtoh(&mask)
        .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
    Ok(host[..total].to_vec())
}

/// Checks the queries and the batch against the cache; returns the head dimension's kernel index.
fn check_batch(
    q: &CudaTensor,
    kv: &CudaKv,
    layer: usize,
    heads: usize,
    batch: &AttentionBatch,
) -> Result<usize, CudaError> {
    let l = kv.layout;
    let d = l.head_dim;
    let dim_index = HEAD_DIMS
        .iter()
        .position(|&h| h == d)
        .ok_or_else(|| CudaError::Shape {
            op: "attention",
            reason: format!("head_dim {d} (kernels exist for {HEAD_DIMS:?})"),
        })?;
    let (tokens, width) = q.shape();
    let described: usize = batch.seqs.iter().map(|s| s.q_len).sum();
    if width != heads * d
        || !heads.is_multiple_of(l.kv_heads)
        || described != tokens
        || layer >= l.layers
    {
        return Err(CudaError::Shape {
            op: "attention",
            reason: format!("{tokens}x{width} queries, {heads} heads, {described} rows described"),
        });
    }
    // The cache's own blocks, or (block size 1) a list of slots: the same storage viewed token by token.
    if batch.block_size != l.block_size && batch.block_size != 1 {
        return Err(CudaError::Shape {
            op: "attention",
            reason: format!("block size {} vs cache {}", batch.block_size, l.block_size),
        });
    }
    let table_entries = l.num_blocks * l.block_size / batch.block_size;
    for s in &batch.seqs {
        let needed = s.context_len.div_ceil(batch.block_size);
        if s.q_len > s.context_len
            || s.block_table.len() < needed
            || s.block_table.iter().any(|&b| b as usize >= table_entries)
        {
            return Err(CudaError::Shape {
                op: "attention",
                reason: format!(
                    "sequence of {} new / {} cached tokens with {} blocks",
                    s.q_len,
                    s.context_len,
                    s.block_table.len()
                ),
            });
        }
    }
    Ok(dim_index)
}

/// What the prefill and decode launches of one attention call share.
struct Shared<'a> {
    q: &'a CudaSlice<u16>,
    k: &'a CudaSlice<u16>,
    v: &'a CudaSlice<u16>,
    /// The uploaded [`Plan`] data.
    meta: &'a CudaSlice<u32>,
    tables: cudarc::driver::CudaView<'a, u32>,
    heads: i32,
    kv_heads: i32,
    block_size: i32,
    scale_log2: f32,
    head_dim: usize,
    dim_index: usize,
}

impl<'a> Shared<'a> {
    /// The arguments of one attention call on `layer` with the uploaded plan `meta` of `p`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: &'a CudaTensor,
        kv: &'a CudaKv,
        layer: usize,
        heads: usize,
        block_size: usize,
        meta: &'a CudaSlice<u32>,
        p: &Plan,
        dim_index: usize,
    ) -> Result<Self, CudaError> {
        let l = kv.layout;
        Ok(Self {
            q: q.bf16("attention")?,
            k: &kv.k[layer],
            v: &kv.v[layer],
            meta,
            tables: meta.slice(p.tables..),
            heads: heads as i32,
            kv_heads: l.kv_heads as i32,
            block_size: block_size as i32,
            scale_log2: std::f32::consts::LOG2_E / (l.head_dim as f32).sqrt(),
            head_dim: l.head_dim,
            dim_index,
        })
    }

    /// `len` entries of the plan data from `at` (at least one, for an empty list).
    fn view(&self, at: usize, len: usize) -> cudarc::driver::CudaView<'_, u32> {
        self.meta.slice(at..at + len.max(1))
    }
}

/// The varlen prefill kernel over the plan's work items (query tiles of sequences with more than one row).
fn launch_prefill(
    be: &CudaBackend,
    s: &Shared<'_>,
    p: &Plan,
    lists: Option<&Lists>,
    out: &mut CudaSlice<u16>,
) -> Result<(), CudaError> {
    let n = p.seqs;
    let (row0, q_len, ctx, table0) = (
        s.view(0, n),
        s.view(n, n),
        s.view(2 * n, n),
        s.view(3 * n, n),
    );
    let work = s.view(p.work.0, 2 * p.work.1);
    let f = &be.kernels.attn_prefill[s.dim_index];
    let mut b = be.builder(f);
    b.arg(s.q)
        .arg(s.k)
        .arg(s.v)
        .arg(out)
        .arg(&work)
        .arg(&row0)
        .arg(&q_len)
        .arg(&ctx)
        .arg(&table0)
        .arg(&s.tables)
        .arg(&s.heads)
        .arg(&s.kv_heads)
        .arg(&s.block_size)
        .arg(&s.scale_log2);
    let null = 0u64;
    let stride = lists.map_or(0, |l| l.stride as i32);
    match lists {
        Some(l) => b.arg(&l.lists),
        None => b.arg(&null),
    };
    b.arg(&stride);
    let cfg = LaunchConfig {
        grid_dim: (p.work.1 as u32, s.heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        b,
        cfg,
        "attention",
        &format!("attn_prefill_d{}", s.head_dim),
    )
}

/// The split-context decode kernel over the plan's decode rows, then the combine of the splits (a single split
/// writes its rows directly); with `emit_scores`, every key's raw score and each row's log-sum-exp for H2O.
fn launch_decode(
    be: &CudaBackend,
    s: &Shared<'_>,
    p: &Plan,
    batch: &AttentionBatch,
    emit_scores: bool,
    lists: Option<&Lists>,
    out: &mut CudaSlice<u16>,
) -> Result<Option<RawScores>, CudaError> {
    let (nd, d) = (p.decode.1, s.head_dim);
    let heads = s.heads as usize;
    let dec_row0 = s.view(p.decode.0, nd);
    let dec_ctx = s.view(p.decode.0 + nd, nd);
    let dec_table0 = s.view(p.decode.0 + 2 * nd, nd);
    // Under HiP the splits share out the longest row's tile list rather than its context.
    let max_keys = lists.map_or(p.decode_max_ctx, |l| l.max_keys);
    let split = split_len_for(
        max_keys,
        nd * s.kv_heads as usize,
        be.sm_count,
        be.decode_min_tiles,
        be.decode_blocks_per_sm,
    );
    let splits = max_keys.div_ceil(split).max(1);
    let parts = nd * heads * splits;
    let mut part_o: CudaSlice<f32> = be.alloc_f32(parts * d)?;
    let mut part_m: CudaSlice<f32> = be.alloc_f32(parts)?;
    let mut part_l: CudaSlice<f32> = be.alloc_f32(parts)?;
    let (sl, sp) = (split as i32, splits as i32);
    // Only the tensor-core kernel reads HiP's tile lists.
    let mma =
        emit_scores || lists.is_some() || be.decode_mma.load(std::sync::atomic::Ordering::Relaxed);
    let (f, name) = if mma {
        (
            &be.kernels.attn_decode_mma[s.dim_index],
            "attn_decode_mma_d",
        )
    } else {
        (&be.kernels.attn_decode[s.dim_index], "attn_decode_d")
    };
    let mut scored = if emit_scores {
        let stride = p.decode_max_ctx.max(1);
        Some(RawScores {
            raw: be.alloc_f32(nd * heads * stride)?,
            stride,
            lse: be.alloc_f32(nd * heads)?,
            decode_chunks: decode_chunks(batch),
        })
    } else {
        None
    };
    let null = 0u64;
    let raw_stride = scored.as_ref().map_or(0, |r| r.stride as i32);
    let mut b = be.builder(f);
    b.arg(s.q)
        .arg(s.k)
        .arg(s.v)
        .arg(&mut part_o)
        .arg(&mut part_m)
        .arg(&mut part_l)
        .arg(&dec_row0)
        .arg(&dec_ctx)
        .arg(&dec_table0)
        .arg(&s.tables)
        .arg(&s.heads)
        .arg(&s.kv_heads)
        .arg(&s.block_size)
        .arg(&s.scale_log2)
        .arg(&sl)
        .arg(&sp)
        .arg(&mut *out);
    match scored.as_mut() {
        Some(r) => b.arg(&mut r.raw).arg(&raw_stride).arg(&mut r.lse),
        None => b.arg(&null).arg(&raw_stride).arg(&null),
    };
    let stride = lists.map_or(0, |l| l.stride as i32);
    match lists {
        Some(l) => b.arg(&l.lists),
        None => b.arg(&null),
    };
    b.arg(&stride);
    let cfg = LaunchConfig {
        grid_dim: (nd as u32, s.kv_heads as u32, splits as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "attention", &format!("{name}{d}"))?;
    if splits == 1 {
        // The decode kernel wrote the normalised rows itself.
        return Ok(scored);
    }
    let hd = d as i32;
    let mut b = be.builder(&be.kernels.attn_combine);
    b.arg(&part_o)
        .arg(&part_m)
        .arg(&part_l)
        .arg(&dec_row0)
        .arg(out)
        .arg(&s.heads)
        .arg(&hd)
        .arg(&sp);
    match scored.as_mut() {
        Some(r) => b.arg(&mut r.lse),
        None => b.arg(&null),
    };
    let mut cfg = rows_cfg(nd, d.max(32) as u32);
    cfg.grid_dim.1 = heads as u32;
    launch(b, cfg, "attention", "attn_combine")?;
    Ok(scored)
}

/// The chunks of `batch` that the decode kernel takes (one query row), in the plan's decode order.
pub fn decode_chunks(batch: &AttentionBatch) -> Vec<usize> {
    batch
        .seqs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.q_len == 1)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqChunk;

    fn seq(q_len: usize, context_len: usize, blocks: &[u32]) -> SeqChunk {
        SeqChunk {
            q_len,
            context_len,
            block_table: blocks.to_vec(),
            hip: None,
        }
    }

    #[test]
    fn plan_splits_prefill_tiles_and_decode_rows() {
        let batch = AttentionBatch {
            seqs: vec![
                seq(130, 130, &[0, 1, 2]),
                seq(1, 40, &[3]),
                seq(2, 10, &[4]),
            ],
            block_size: 64,
        };
        let p = plan(&batch, true);
        assert_eq!(&p.data[0..3], &[0, 130, 131]); // row0
        assert_eq!(&p.data[3..6], &[130, 1, 2]); // q_len
        assert_eq!(&p.data[6..9], &[130, 40, 10]); // ctx
        assert_eq!(&p.data[9..12], &[0, 3, 4]); // table0
        assert_eq!(&p.data[p.tables..p.tables + 5], &[0, 1, 2, 3, 4]);
        let work = &p.data[p.work.0..p.work.0 + 2 * p.work.1];
        assert_eq!(work, &[0, 0, 0, 1, 0, 2, 2, 0]);
        assert_eq!(p.decode.1, 1);
        assert_eq!(&p.data[p.decode.0..p.decode.0 + 3], &[130, 40, 3]);
        assert_eq!(p.decode_max_ctx, 40);
        let all_prefill = plan(&batch, false);
        assert_eq!(all_prefill.decode.1, 0);
        assert_eq!(all_prefill.work.1, 5);
    }

    #[test]
    fn split_len_fills_the_device_within_bounds() {
        // One sequence, 8 KV heads on 132 SMs: as fine as one tile per split, at most 32 splits.
        assert_eq!(split_len_with(256, 8, 132, 1), 64);
        assert_eq!(split_len_with(8192, 8, 132, 1), 256);
        // With at least 4 tiles per split, short contexts stay in one split (no combine pass).
        assert_eq!(split_len_with(256, 8, 132, 4), 256);
        assert_eq!(split_len_with(2048, 8, 132, 4), 256);
        assert_eq!(split_len_with(32768, 8, 132, 4), 1024);
        // Plenty of blocks already: one split covering the whole context.
        assert_eq!(split_len_with(256, 512, 132, 1), 256);
        assert_eq!(split_len_with(1, 1, 132, 1), 64);
    }
}
