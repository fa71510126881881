//! Host side of HiP attention on CUDA (`kernels/hip.cu`; [`crate::hip`] is the method and its CPU reference):
//! the search items of a launch's query blocks, the search launch, and the tile lists the attention kernels
//! read. A prefill work item (64 query rows of a chunk) is one query block, a decode row another.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};

use super::attention::TILE;
use super::launch::PushArg;
use super::{launch, CudaBackend, CudaError};
use crate::backend::AttentionBatch;
use crate::hip::QueryBlockPlan;

/// u32 fields per search item (the layout is documented in `kernels/hip.cu`).
pub const FIELDS: usize = 12;
/// "No mask wanted" in an item's mask offset; "none" after a query block's chosen blocks.
pub const NONE: u32 = u32::MAX;

/// The search items of one launch (prefill work items or decode rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items {
    /// [`FIELDS`] u32 per item.
    pub data: Vec<u32>,
    /// Items.
    pub count: usize,
    /// u32 per tile list: one more than the longest list.
    pub stride: usize,
}

/// Refuses HiP parameters the kernels cannot run: a query block must be one 64-row tile and a key block whole
/// 64-key tiles.
pub fn check_params(batch: &AttentionBatch) -> Result<(), CudaError> {
    for p in batch.seqs.iter().filter_map(|s| s.sparse()) {
        if p.block_q != TILE || !p.block_k.is_multiple_of(TILE) {
            return Err(CudaError::Shape {
                op: "hip attention",
                reason: format!(
                    "the CUDA kernels need block_q = {TILE} and block_k a multiple of {TILE} (got {} and {})",
                    p.block_q, p.block_k
                ),
            });
        }
    }
    Ok(())
}

/// Where each HiP chunk's chosen blocks start in [`crate::hip::mask_len`]'s layout, and the total length.
pub fn mask_offsets(batch: &AttentionBatch, kv_heads: usize) -> (Vec<Option<usize>>, usize) {
    let mut at = 0;
    let offsets = batch
        .seqs
        .iter()
        .map(|s| {
            s.sparse().map(|p| {
                let here = at;
                at += crate::hip::mask_len(p, s.q_len, kv_heads);
                here
            })
        })
        .collect();
    (offsets, at)
}

/// The items of `units`, `(chunk, query tile)` pairs in the launch's order; `row0` is each chunk's first packed
/// row. With `masks`, each HiP query block also writes its chosen blocks at its chunk's offset.
pub fn items(
    batch: &AttentionBatch,
    row0: &[u32],
    units: &[(usize, usize)],
    masks: Option<&[Option<usize>]>,
    kv_heads: usize,
) -> Items {
    let mut data = Vec::with_capacity(units.len() * FIELDS);
    let mut longest = 0;
    for &(s, tile) in units {
        let seq = &batch.seqs[s];
        let Some(p) = seq.sparse() else {
            data.extend([row0[s], 0, s as u32, 0, 0, 0, 0, 0, 0, 0, 0, NONE]);
            continue;
        };
        let rows = TILE.min(seq.q_len - tile * TILE);
        let first = seq.context_len - seq.q_len + tile * TILE;
        let last = first + rows - 1;
        let plan = QueryBlockPlan::new(p, first, last);
        let per = p.block_k / TILE;
        let chosen = plan.candidates.len().min(p.top_k);
        let tiles = (plan.sink + chosen) * per + (last / TILE + 1 - plan.window.start * per);
        longest = longest.max(tiles);
        let mask_at = masks
            .and_then(|m| m[s])
            .map_or(NONE, |at| (at + tile * kv_heads * p.top_k) as u32);
        data.extend([
            row0[s] + (tile * TILE) as u32,
            rows as u32,
            s as u32,
            1,
            p.top_k as u32,
            p.block_k as u32,
            plan.sink as u32,
            plan.candidates.start as u32,
            plan.candidates.end as u32,
            plan.window.start as u32,
            last as u32,
            mask_at,
        ]);
    }
    Items {
        data,
        count: units.len(),
        stride: longest + 1,
    }
}

/// Tiles the list of each decode row visits at most (its longest KV head's list), in keys: what the decode
/// split plan sizes for; dense rows count their context.
pub fn decode_keys(items: &Items, ctx: &[usize]) -> usize {
    items
        .data
        .chunks_exact(FIELDS)
        .zip(ctx)
        .map(|(it, &c)| {
            if it[3] == 0 {
                c
            } else {
                (items.stride - 1) * TILE
            }
        })
        .max()
        .unwrap_or(0)
}

/// What the search reads besides the items.
pub struct SearchInputs<'a> {
    /// Queries, bf16.
    pub q: &'a CudaSlice<u16>,
    /// The layer's keys, bf16.
    pub k: &'a CudaSlice<u16>,
    /// Each chunk's offset in `tables`.
    pub table0: &'a CudaView<'a, u32>,
    /// The block tables.
    pub tables: &'a CudaView<'a, u32>,
    /// Query heads.
    pub heads: i32,
    /// KV heads.
    pub kv_heads: i32,
    /// Tokens per block of the tables.
    pub block_size: i32,
    /// Index of the head dimension's kernel.
    pub dim_index: usize,
    /// The head dimension.
    pub head_dim: usize,
}

/// Runs the search over `items`: returns the tile lists (`stride` u32 per item and KV head).
pub fn search(
    be: &CudaBackend,
    s: &SearchInputs<'_>,
    items: &Items,
    key: &'static str,
    mask: Option<&mut CudaSlice<u32>>,
) -> Result<CudaSlice<u32>, CudaError> {
    let uploaded = be.upload(key, &items.data)?;
    let n = items.count * s.kv_heads as usize * items.stride;
    // SAFETY: the search writes every list's count and its tiles before the attention kernels read them.
    let mut lists = unsafe { be.stream.alloc::<u32>(n.max(1)) }
        .map_err(|e| CudaError::driver("cuMemAlloc", e))?;
    let stride = items.stride as i32;
    let null = 0u64;
    let mut b = be.builder(&be.kernels.hip_search[s.dim_index]);
    b.arg(s.q)
        .arg(s.k)
        .arg(&*uploaded)
        .arg(s.table0)
        .arg(s.tables)
        .arg(&s.heads)
        .arg(&s.kv_heads)
        .arg(&s.block_size)
        .arg(&mut lists)
        .arg(&stride);
    match mask {
        Some(m) => b.arg(m),
        None => b.arg(&null),
    };
    let cfg = LaunchConfig {
        grid_dim: (items.count as u32, s.kv_heads as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(b, cfg, "hip", &format!("hip_search_d{}", s.head_dim))?;
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqChunk;
    use crate::hip::HipParams;

    #[test]
    fn items_carry_the_plan_and_the_list_length() {
        let p = HipParams {
            block_q: 64,
            block_k: 128,
            top_k: 4,
            sink_tokens: 64,
            recent_tokens: 256,
            min_context: 100,
        };
        let mut sparse = SeqChunk::dense(1, 4000, vec![0]);
        sparse.hip = Some(p);
        let dense = SeqChunk::dense(70, 70, vec![1]);
        let batch = AttentionBatch {
            seqs: vec![dense, sparse],
            block_size: 4096,
        };
        let (offsets, total) = mask_offsets(&batch, 2);
        assert_eq!((offsets.clone(), total), (vec![None, Some(0)], 8));
        let it = items(&batch, &[0, 70], &[(0, 1), (1, 0)], Some(&offsets), 2);
        assert_eq!(it.count, 2);
        assert_eq!(it.data[3], 0, "the dense chunk's item");
        let sp = &it.data[FIELDS..];
        // Row 3999: window from floor((4000 - 256) / 128) = 29 to 3999 / 128 = 31; one sink block.
        assert_eq!(&sp[..3], &[70, 1, 1]);
        assert_eq!(&sp[6..11], &[1, 1, 29, 29, 3999]);
        assert_eq!(sp[11], 0);
        // Tiles: (1 sink + 4 chosen) * 2 + tiles 58 ..= 62.
        assert_eq!(it.stride, 1 + 10 + 5);
        assert_eq!(decode_keys(&it, &[70, 4000]), 15 * 64);
    }
}
