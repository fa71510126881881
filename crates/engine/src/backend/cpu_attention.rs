//! The CPU backend's attention over the paged cache: dense, or HiP's sparse attention ([`crate::hip`]) for the
//! chunks that ask for it, with the mask search done here as the reference the GPU kernels are checked against.

use std::ops::Range;

use super::{AttentionBatch, BackendError};
use crate::hip::{self, QueryBlockPlan};

/// Cache slot of the `j`-th token of a sequence with `table` (blocks of `bs` tokens).
pub(super) fn slot_of(table: &[u32], bs: usize, j: usize) -> usize {
    table[j / bs] as usize * bs + j % bs
}

/// Per query row of a packed batch: its chunk and its position in that chunk's context.
pub(super) fn row_owners(
    batch: &AttentionBatch,
    tokens: usize,
    op: &'static str,
) -> Result<Vec<(usize, usize)>, BackendError> {
    let mut owner = Vec::with_capacity(tokens);
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first = seq.context_len - seq.q_len;
        owner.extend((0..seq.q_len).map(|i| (s, first + i)));
    }
    if owner.len() != tokens {
        return Err(BackendError::Shape {
            op,
            reason: format!(
                "{tokens} query rows but the batch describes {}",
                owner.len()
            ),
        });
    }
    Ok(owner)
}

/// Where one layer's queries and keys are, for attention and the HiP search.
pub(super) struct Operands<'a> {
    /// Queries, `[tokens, heads * head_dim]`.
    pub q: &'a [f32],
    /// Keys of the layer, one row of `kv_heads * head_dim` per cache slot.
    pub k: &'a [f32],
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of a head.
    pub head_dim: usize,
}

impl Operands<'_> {
    fn q_row(&self, t: usize, h: usize) -> &[f32] {
        let (w, hd) = (self.heads * self.head_dim, self.head_dim);
        &self.q[t * w + h * hd..t * w + (h + 1) * hd]
    }

    fn k_row(&self, slot: usize, kv_head: usize) -> &[f32] {
        let (w, hd) = (self.kv_heads * self.head_dim, self.head_dim);
        &self.k[slot * w + kv_head * hd..slot * w + (kv_head + 1) * hd]
    }
}

/// The HiP mask of one chunk: its query blocks' plans and chosen blocks ([`hip::mask_len`]'s layout).
pub(super) struct ChunkMask {
    plans: Vec<QueryBlockPlan>,
    chosen: Vec<u32>,
    top_k: usize,
    block_q: usize,
    block_k: usize,
}

impl ChunkMask {
    /// The key ranges row `i` of the chunk (at position `pos`) attends with query head group `kv_head`.
    fn spans(&self, i: usize, pos: usize, kv_head: usize, kv_heads: usize) -> Vec<Range<usize>> {
        let qb = i / self.block_q;
        let at = (qb * kv_heads + kv_head) * self.top_k;
        hip::key_spans(
            &self.plans[qb],
            &self.chosen[at..at + self.top_k],
            self.block_k,
            pos,
        )
    }
}

/// The HiP masks of a batch: `None` for a chunk attending densely.
pub(super) fn hip_masks(ops: &Operands, batch: &AttentionBatch) -> Vec<Option<ChunkMask>> {
    use rayon::prelude::*;
    let mut row0 = 0;
    let mut out = Vec::with_capacity(batch.seqs.len());
    for seq in &batch.seqs {
        let first_row = row0;
        row0 += seq.q_len;
        let Some(p) = seq.sparse().copied() else {
            out.push(None);
            continue;
        };
        let first_pos = seq.context_len - seq.q_len;
        let blocks = p.query_blocks(seq.q_len);
        let plans: Vec<QueryBlockPlan> = (0..blocks)
            .map(|qb| {
                let rows = qb * p.block_q..((qb + 1) * p.block_q).min(seq.q_len);
                QueryBlockPlan::new(&p, first_pos + rows.start, first_pos + rows.end - 1)
            })
            .collect();
        let group = ops.heads / ops.kv_heads;
        let chosen: Vec<u32> = (0..blocks * ops.kv_heads)
            .into_par_iter()
            .flat_map_iter(|unit| {
                let (qb, g) = (unit / ops.kv_heads, unit % ops.kv_heads);
                let rows =
                    first_row + qb * p.block_q..first_row + ((qb + 1) * p.block_q).min(seq.q_len);
                let score = |key: usize| {
                    let k = ops.k_row(slot_of(&seq.block_table, batch.block_size, key), g);
                    let mut best = f32::NEG_INFINITY;
                    for t in rows.clone() {
                        for h in g * group..(g + 1) * group {
                            best = best.max(dot(ops.q_row(t, h), k));
                        }
                    }
                    best
                };
                let mut picked =
                    hip::search(p.top_k, p.block_k, plans[qb].candidates.clone(), score);
                picked.resize(p.top_k, u32::MAX);
                picked
            })
            .collect();
        out.push(Some(ChunkMask {
            plans,
            chosen,
            top_k: p.top_k,
            block_q: p.block_q,
            block_k: p.block_k,
        }));
    }
    out
}

/// The flattened chosen blocks of every HiP chunk of a batch ([`hip::mask_len`]'s layout, chunks in order).
pub(super) fn flat_masks(masks: &[Option<ChunkMask>]) -> Vec<u32> {
    masks
        .iter()
        .flatten()
        .flat_map(|m| m.chosen.iter().copied())
        .collect()
}

/// The keys row `t` (chunk `s`, position `pos`) attends with `kv_head`: all of `0..=pos`, or its HiP spans.
pub(super) fn row_spans(
    masks: &[Option<ChunkMask>],
    batch: &AttentionBatch,
    (s, pos): (usize, usize),
    kv_head: usize,
    kv_heads: usize,
) -> Vec<Range<usize>> {
    match &masks[s] {
        None => vec![Range {
            start: 0,
            end: pos + 1,
        }],
        Some(m) => {
            let seq = &batch.seqs[s];
            let i = pos - (seq.context_len - seq.q_len);
            m.spans(i, pos, kv_head, kv_heads)
        }
    }
}

/// The attention probabilities of one query head `qh` over the keys of `spans` (ascending) of a sequence
/// (`kc`'s rows through `table`, the head's columns from `off`), scaled by `1/sqrt(head_dim)`, into `probs`, in
/// the order of the keys.
#[allow(clippy::too_many_arguments)]
pub(super) fn row_probabilities(
    qh: &[f32],
    kc: &[f32],
    table: &[u32],
    bs: usize,
    kv_width: usize,
    off: usize,
    spans: &[Range<usize>],
    probs: &mut Vec<f32>,
) {
    let hd = qh.len();
    let scale = 1.0 / (hd as f32).sqrt();
    probs.clear();
    let mut max = f32::NEG_INFINITY;
    for j in spans.iter().flat_map(|r| r.clone()) {
        let base = slot_of(table, bs, j) * kv_width + off;
        let sc = dot(qh, &kc[base..base + hd]) * scale;
        max = max.max(sc);
        probs.push(sc);
    }
    let mut sum = 0.0;
    for p in probs.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in probs.iter_mut() {
        *p /= sum;
    }
}

/// `Σ a_i · b_i` over 16 independent lanes, so the compiler vectorizes it (a single running f32 sum must stay in
/// order and cannot be); a head of 64 or 128 is whole chunks, any remainder is added at the end.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::super::cpu::CpuBackend;
    use super::super::cpu_tensor::CpuTensor;
    use super::super::{AttentionBatch, Backend, KvLayout, SeqChunk};
    use crate::hip::{HipParams, QueryBlockPlan};
    use candle_core::{Device, Tensor};

    /// A seeded generator of values in [-1, 1).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn tensor(data: &[f32], rows: usize, cols: usize) -> CpuTensor {
        CpuTensor::Dense(Tensor::from_slice(data, (rows, cols), &Device::Cpu).unwrap())
    }

    #[test]
    fn the_lane_dot_equals_the_plain_sum() {
        for n in [0, 5, 16, 64, 80, 131] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((super::dot(&a, &b) - plain).abs() < 1e-4, "n={n}");
        }
    }

    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HD: usize = 16;

    fn params(top_k: usize) -> HipParams {
        HipParams {
            block_q: 8,
            block_k: 8,
            top_k,
            sink_tokens: 8,
            recent_tokens: 16,
            min_context: 40,
        }
    }

    /// One sequence of `ctx` keys in shuffled blocks of 4 slots, and a chunk of its last `q_len` rows
    /// (queries and keys from `seed`).
    struct Case {
        kv: <CpuBackend as Backend>::Kv,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        batch: AttentionBatch,
    }

    fn case(seed: u64, q_len: usize, ctx: usize, hip: Option<HipParams>) -> Case {
        let bs = 4;
        let blocks = ctx.div_ceil(bs);
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let layout = KvLayout {
            layers: 1,
            num_blocks: blocks,
            block_size: bs,
            kv_heads: KV_HEADS,
            head_dim: HD,
        };
        let b = CpuBackend;
        let mut kv = b.alloc_kv(layout).unwrap();
        let width = KV_HEADS * HD;
        let (k, v) = (values(seed, ctx * width), values(seed + 1, ctx * width));
        let slots: Vec<u32> = (0..ctx)
            .map(|j| table[j / bs] * bs as u32 + (j % bs) as u32)
            .collect();
        b.write_kv(
            &mut kv,
            0,
            &tensor(&k, ctx, width),
            &tensor(&v, ctx, width),
            &slots,
        )
        .unwrap();
        let mut chunk = SeqChunk::dense(q_len, ctx, table);
        chunk.hip = hip;
        Case {
            kv,
            q: values(seed + 2, q_len * HEADS * HD),
            k,
            v,
            batch: AttentionBatch {
                seqs: vec![chunk],
                block_size: bs,
            },
        }
    }

    fn logit(c: &Case, row: usize, head: usize, key: usize) -> f32 {
        let qh = &c.q[(row * HEADS + head) * HD..][..HD];
        let kh = &c.k[(key * KV_HEADS + head / (HEADS / KV_HEADS)) * HD..][..HD];
        qh.iter().zip(kh).map(|(a, b)| a * b).sum()
    }

    /// The search written out plainly: every level's chunks and scores as lists, scores from the logits.
    fn plain_search(
        c: &Case,
        p: &HipParams,
        rows: std::ops::Range<usize>,
        kvh: usize,
        first: usize,
    ) -> Vec<u32> {
        let last = first + rows.len() - 1;
        let plan = QueryBlockPlan::new(p, first, last);
        let (lo, hi) = (plan.candidates.start, plan.candidates.end);
        if hi - lo <= p.top_k {
            return (lo as u32..hi as u32).collect();
        }
        let group = HEADS / KV_HEADS;
        let score = |key: usize| {
            let mut best = f32::MIN;
            for r in rows.clone() {
                for h in kvh * group..(kvh + 1) * group {
                    best = best.max(logit(c, r, h, key));
                }
            }
            best
        };
        let n = hi - lo;
        let mut kept: Vec<(usize, usize)> = (0..p.top_k)
            .map(|i| (lo + i * n / p.top_k, lo + (i + 1) * n / p.top_k))
            .collect();
        while kept.iter().any(|&(a, b)| b - a > 1) {
            let mut level = Vec::new();
            for &(a, b) in &kept {
                if b - a > 1 {
                    level.push((a, a + (b - a) / 2));
                    level.push((a + (b - a) / 2, b));
                } else {
                    level.push((a, b));
                }
            }
            let scores: Vec<f32> = level
                .iter()
                .map(|&(a, b)| score((a + b) * p.block_k / 2))
                .collect();
            let mut order: Vec<usize> = (0..level.len()).collect();
            order.sort_by(|&x, &y| scores[y].partial_cmp(&scores[x]).unwrap().then(x.cmp(&y)));
            let mut best: Vec<usize> = order[..p.top_k].to_vec();
            best.sort();
            kept = best.into_iter().map(|i| level[i]).collect();
        }
        kept.into_iter().map(|(a, _)| a as u32).collect()
    }

    #[test]
    fn the_backend_chooses_the_blocks_of_the_plain_search() {
        let p = params(3);
        let (q_len, ctx) = (20, 150);
        let c = case(7, q_len, ctx, Some(p));
        let q = tensor(&c.q, q_len, HEADS * HD);
        let mask = CpuBackend.hip_mask(&q, &c.kv, 0, HEADS, &c.batch).unwrap();
        assert_eq!(mask.len(), 3 * KV_HEADS * p.top_k);
        let first = ctx - q_len;
        for qb in 0..3 {
            let rows = qb * 8..((qb + 1) * 8).min(q_len);
            for kvh in 0..KV_HEADS {
                let mut want = plain_search(&c, &p, rows.clone(), kvh, first + rows.start);
                want.resize(p.top_k, u32::MAX);
                let at = (qb * KV_HEADS + kvh) * p.top_k;
                assert_eq!(&mask[at..at + p.top_k], &want[..], "block {qb} head {kvh}");
            }
        }
    }

    #[test]
    fn sparse_attention_is_softmax_over_the_chosen_keys_only() {
        let p = params(2);
        let (q_len, ctx) = (9, 120);
        let c = case(11, q_len, ctx, Some(p));
        let q = tensor(&c.q, q_len, HEADS * HD);
        let b = CpuBackend;
        let mask = b.hip_mask(&q, &c.kv, 0, HEADS, &c.batch).unwrap();
        let (out, _, _) = b
            .to_host(&b.attention(&q, &c.kv, 0, HEADS, &c.batch).unwrap())
            .unwrap();
        let first = ctx - q_len;
        let scale = 1.0 / (HD as f32).sqrt();
        for row in 0..q_len {
            let (qb, pos) = (row / 8, first + row);
            let plan =
                QueryBlockPlan::new(&p, first + qb * 8, first + ((qb + 1) * 8).min(q_len) - 1);
            for h in 0..HEADS {
                let kvh = h / (HEADS / KV_HEADS);
                let chosen = &mask[(qb * KV_HEADS + kvh) * p.top_k..][..p.top_k];
                let visible = |j: usize| {
                    let blk = j / p.block_k;
                    j <= pos
                        && (blk < plan.sink
                            || chosen.contains(&(blk as u32))
                            || blk >= plan.window.start)
                };
                let keys: Vec<usize> = (0..ctx).filter(|&j| visible(j)).collect();
                assert!(keys.len() < pos + 1, "row {row}: the mask must drop keys");
                let s: Vec<f32> = keys.iter().map(|&j| logit(&c, row, h, j) * scale).collect();
                let m = s.iter().copied().fold(f32::MIN, f32::max);
                let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..HD {
                    let want: f32 = keys
                        .iter()
                        .zip(&s)
                        .map(|(&j, x)| (x - m).exp() / z * c.v[(j * KV_HEADS + kvh) * HD + d])
                        .sum();
                    let got = out[(row * HEADS + h) * HD + d];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {row} head {h} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The backend's attention output for the queries `q` over a case's cache and batch.
    fn output(q: &CpuTensor, c: &Case) -> Vec<f32> {
        let b = CpuBackend;
        let out = b.attention(q, &c.kv, 0, HEADS, &c.batch).unwrap();
        b.to_host(&out).unwrap().0
    }

    #[test]
    fn with_every_block_kept_hip_is_exactly_dense() {
        let (q_len, ctx) = (17, 200);
        let every = HipParams {
            top_k: 64,
            ..params(64)
        };
        let sparse = case(3, q_len, ctx, Some(every));
        let dense = case(3, q_len, ctx, None);
        let q = tensor(&sparse.q, q_len, HEADS * HD);
        assert_eq!(output(&q, &sparse), output(&q, &dense));
    }

    #[test]
    fn short_contexts_stay_dense() {
        let b = CpuBackend;
        let p = params(1);
        let (q_len, ctx) = (5, 40); // min_context is 40: not engaged
        let sparse = case(5, q_len, ctx, Some(p));
        let dense = case(5, q_len, ctx, None);
        let q = tensor(&sparse.q, q_len, HEADS * HD);
        assert!(b
            .hip_mask(&q, &sparse.kv, 0, HEADS, &sparse.batch)
            .unwrap()
            .is_empty());
        assert_eq!(output(&q, &sparse), output(&q, &dense));
    }
}
