//! HiP attention (Hierarchically Pruned Attention, Lee et al. 2024), written from the paper's description: a
//! training-free sparse attention. For each block of query rows and each KV head, a tree search over the keys
//! picks the `top_k` key blocks the queries score highest, using the model's own attention logits; the rows then
//! attend only to those blocks, plus a few sink blocks at the start and a recent window, causally. Nothing is
//! dropped from the cache: the next query block searches all keys again.
//!
//! Geometry, in a sequence's token indices (not cache slots): key block `b` is keys `[b * block_k, (b + 1) *
//! block_k)`. A query block is `block_q` consecutive rows of one chunk of a packed batch (a decode row is a block
//! of one), counted from the chunk's first row. For a query block whose first row sits at position `p0` and last
//! at `p1` ([`QueryBlockPlan::new`]):
//! - the sink is blocks `[0, sink)`, `sink = ceil(sink_tokens / block_k)`;
//! - the window is blocks `[w, p1 / block_k]`, `w = max(sink, floor((p0 + 1 - recent_tokens) / block_k))`, so
//!   that every row sees at least its `recent_tokens` latest keys;
//! - the candidates are blocks `[sink, w)`, searched when there are more than `top_k` of them; otherwise all of
//!   them are kept and the attention is exactly dense.
//!
//! The search ([`search`]): split the candidates into `top_k` chunks of consecutive blocks; then, until every
//! kept chunk is a single block, split each chunk of several blocks in two halves, score every chunk by its
//! representative key ([`representative`], the key in its middle) as the largest logit any of the block's query
//! rows of any query head of the KV head gives it, and keep the `top_k` best (ties to the earlier chunk). The kept
//! chunks are the chosen blocks. Each step costs `2 * top_k` key reads, and there are about
//! `log2(candidates / top_k)` steps: O(T log T) over a prompt instead of O(T²).

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Why HiP parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attention: {0}")]
pub struct HipError(pub String);

/// HiP's parameters: per request (`attention: {"kind": "hip", ...}`) or as the engine's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HipParams {
    /// Query rows that share one search (a block of a chunk's consecutive rows).
    pub block_q: usize,
    /// Keys per key block, the unit the search keeps.
    pub block_k: usize,
    /// Key blocks each query block keeps besides the sink and the recent window.
    pub top_k: usize,
    /// Tokens at the start always attended (rounded up to whole key blocks).
    pub sink_tokens: usize,
    /// Latest tokens always attended by every row (the window starts at a key block boundary at or before).
    pub recent_tokens: usize,
    /// Sparse attention engages for a chunk whose context exceeds this many tokens; shorter ones stay dense.
    pub min_context: usize,
}

impl Default for HipParams {
    fn default() -> Self {
        Self {
            block_q: 64,
            block_k: 64,
            top_k: 32,
            sink_tokens: 64,
            recent_tokens: 512,
            min_context: 4096,
        }
    }
}

/// How a request attends: densely (the default) or with HiP. In JSON and TOML: `{"kind": "dense"}` or
/// `{"kind": "hip", "top_k": 32, ...}` (omitted parameters take [`HipParams::default`]'s values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionMode {
    /// Every row attends to all earlier keys (an empty struct variant, so that stray fields are refused).
    Dense {},
    /// HiP sparse attention for contexts past `min_context`.
    Hip(HipParams),
}

impl Default for AttentionMode {
    fn default() -> Self {
        Self::Dense {}
    }
}

impl AttentionMode {
    /// The HiP parameters, if sparse.
    pub fn hip(&self) -> Option<HipParams> {
        match self {
            Self::Dense {} => None,
            Self::Hip(p) => Some(*p),
        }
    }

    /// Checks HiP's parameters ([`HipParams::validate`]).
    pub fn validate(&self) -> Result<(), HipError> {
        self.hip().map_or(Ok(()), |p| p.validate())
    }
}

/// Largest `top_k` accepted: the search keeps twice as many candidates in a GPU block's shared memory.
pub const MAX_TOP_K: usize = 256;

impl HipParams {
    /// Checks the parameters: block sizes between 1 and 4096, `top_k` between 1 and [`MAX_TOP_K`].
    pub fn validate(&self) -> Result<(), HipError> {
        let block = |name: &str, v: usize| {
            if (1..=4096).contains(&v) {
                Ok(())
            } else {
                Err(HipError(format!(
                    "{name} must be between 1 and 4096, got {v}"
                )))
            }
        };
        block("block_q", self.block_q)?;
        block("block_k", self.block_k)?;
        if !(1..=MAX_TOP_K).contains(&self.top_k) {
            return Err(HipError(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                self.top_k
            )));
        }
        Ok(())
    }

    /// Checks what the CUDA kernels add: a query block of 64 rows (one tile) and key blocks of whole 64-key
    /// tiles.
    pub fn check_cuda(&self) -> Result<(), HipError> {
        if self.block_q != 64 || !self.block_k.is_multiple_of(64) {
            return Err(HipError(format!(
                "on CUDA, block_q must be 64 and block_k a multiple of 64 (got {} and {})",
                self.block_q, self.block_k
            )));
        }
        Ok(())
    }

    /// Whether a chunk whose context holds `context_len` tokens attends sparsely.
    pub fn engages(&self, context_len: usize) -> bool {
        context_len > self.min_context
    }

    /// Sink blocks: `ceil(sink_tokens / block_k)`.
    pub fn sink_blocks(&self) -> usize {
        self.sink_tokens.div_ceil(self.block_k)
    }

    /// Query blocks of a chunk of `q_len` rows.
    pub fn query_blocks(&self, q_len: usize) -> usize {
        q_len.div_ceil(self.block_q)
    }
}

/// The key blocks of one query block: sink, candidates and window ([module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryBlockPlan {
    /// Sink blocks `[0, sink)`, clipped to the window's start.
    pub sink: usize,
    /// Candidate blocks for the search.
    pub candidates: Range<usize>,
    /// Window blocks, the last one holding the block's last row.
    pub window: Range<usize>,
}

impl QueryBlockPlan {
    /// The plan of a query block whose rows sit at positions `first..=last`.
    pub fn new(params: &HipParams, first: usize, last: usize) -> Self {
        let bk = params.block_k;
        let last_block = last / bk;
        let recent_start = (first + 1).saturating_sub(params.recent_tokens) / bk;
        let window_start = recent_start.max(params.sink_blocks()).min(last_block);
        let sink = params.sink_blocks().min(window_start);
        Self {
            sink,
            candidates: sink..window_start,
            window: window_start..last_block + 1,
        }
    }

    /// Whether the search must choose (more candidates than `top_k`).
    pub fn searches(&self, top_k: usize) -> bool {
        self.candidates.len() > top_k
    }

    /// The blocks the rows attend, ascending: sink, `chosen` (candidate blocks, ascending), window.
    pub fn attended(&self, chosen: &[u32]) -> Vec<u32> {
        let mut blocks: Vec<u32> = (0..self.sink as u32).collect();
        blocks.extend_from_slice(chosen);
        blocks.extend(self.window.start as u32..self.window.end as u32);
        blocks
    }
}

/// The representative key of the chunk of blocks `[a, b)`: the key in its middle.
pub fn representative(block_k: usize, a: usize, b: usize) -> usize {
    (a + b) * block_k / 2
}

/// The first split of `n` candidate blocks starting at `start` into `k < n` chunks: chunk `i` is
/// `[start + i * n / k, start + (i + 1) * n / k)`.
pub fn initial_chunks(start: usize, n: usize, k: usize) -> Vec<(usize, usize)> {
    (0..k)
        .map(|i| (start + i * n / k, start + (i + 1) * n / k))
        .collect()
}

/// The search: the candidate blocks kept for one query block and KV head, ascending. `score(key)` is the
/// largest logit the block's rows give key `key` (any positive scale of it chooses the same).
pub fn search(
    top_k: usize,
    block_k: usize,
    candidates: Range<usize>,
    mut score: impl FnMut(usize) -> f32,
) -> Vec<u32> {
    let n = candidates.len();
    if n <= top_k {
        return candidates.map(|b| b as u32).collect();
    }
    let mut chunks = initial_chunks(candidates.start, n, top_k);
    while chunks.iter().any(|&(a, b)| b - a > 1) {
        let mut next = Vec::with_capacity(2 * chunks.len());
        for &(a, b) in &chunks {
            if b - a > 1 {
                let mid = a + (b - a) / 2;
                next.push((a, mid));
                next.push((mid, b));
            } else {
                next.push((a, b));
            }
        }
        let mut scored: Vec<(f32, (usize, usize))> = next
            .into_iter()
            .map(|(a, b)| (score(representative(block_k, a, b)), (a, b)))
            .collect();
        // Best first; equal scores keep the earlier chunk (the list is in block order and the sort is stable).
        scored.sort_by(|x, y| y.0.total_cmp(&x.0));
        scored.truncate(top_k);
        chunks = scored.into_iter().map(|(_, c)| c).collect();
        chunks.sort_unstable();
    }
    chunks.into_iter().map(|(a, _)| a as u32).collect()
}

/// The chosen blocks of every query block and KV head of one batch, flattened: per chunk with HiP engaged (in
/// batch order), per query block, per KV head, `top_k` entries, the chosen candidate blocks ascending and
/// `u32::MAX` after them. This is the layout both backends' searches produce and the tests compare.
pub fn mask_len(params: &HipParams, q_len: usize, kv_heads: usize) -> usize {
    params.query_blocks(q_len) * kv_heads * params.top_k
}

/// Attention's view of one row: the ascending key ranges it attends (sink, chosen blocks, window), cut at the
/// row's position `pos` (causal) and merged where they touch.
pub fn key_spans(
    plan: &QueryBlockPlan,
    chosen: &[u32],
    block_k: usize,
    pos: usize,
) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    let mut push = |r: Range<usize>| {
        let r = r.start..r.end.min(pos + 1);
        if r.is_empty() {
            return;
        }
        match spans.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => spans.push(r),
        }
    };
    push(0..plan.sink * block_k);
    for &b in chosen.iter().take_while(|&&b| b != u32::MAX) {
        let b = b as usize;
        push(b * block_k..(b + 1) * block_k);
    }
    push(plan.window.start * block_k..plan.window.end * block_k);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(top_k: usize) -> HipParams {
        HipParams {
            block_q: 4,
            block_k: 4,
            top_k,
            sink_tokens: 4,
            recent_tokens: 8,
            min_context: 0,
        }
    }

    #[test]
    fn the_plan_splits_sink_candidates_and_window() {
        let p = params(2);
        // Rows at 40..=43: window from floor((41 - 8) / 4) = 8 to 43 / 4 = 10.
        let plan = QueryBlockPlan::new(&p, 40, 43);
        assert_eq!(plan.sink, 1);
        assert_eq!(plan.candidates, 1..8);
        assert_eq!(plan.window, 8..11);
        // Early rows: everything is window (and sink).
        let early = QueryBlockPlan::new(&p, 2, 5);
        assert_eq!((early.sink, early.candidates.len()), (1, 0));
        assert_eq!(early.window, 1..2);
        let first = QueryBlockPlan::new(&p, 0, 0);
        assert_eq!((first.sink, first.window.clone()), (0, 0..1));
    }

    #[test]
    fn the_search_finds_the_blocks_whose_keys_score_highest() {
        // 64 candidate blocks of 4 keys; the score falls with the distance to the middle key of a hot block, so
        // at every level the half nearer a hot block wins and the search walks down to it.
        let hot = [9usize, 30, 51];
        let score = |key: usize| {
            -hot.iter()
                .map(|&h| (key as f32 - (4 * h + 2) as f32).abs())
                .fold(f32::MAX, f32::min)
        };
        assert_eq!(search(3, 4, 0..64, score), vec![9, 30, 51]);
        let one = search(1, 4, 0..64, score);
        assert!(
            one.len() == 1 && hot.contains(&(one[0] as usize)),
            "{one:?}"
        );
    }

    #[test]
    fn few_candidates_are_all_kept_and_the_result_is_sorted_and_distinct() {
        assert_eq!(search(8, 4, 3..7, |_| 0.0), vec![3, 4, 5, 6]);
        let chosen = search(5, 2, 0..100, |k| ((k * 7919) % 101) as f32);
        assert_eq!(chosen.len(), 5);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]));
        assert!(chosen.iter().all(|&b| b < 100));
    }

    #[test]
    fn spans_are_causal_ascending_and_merged() {
        let p = params(2);
        let plan = QueryBlockPlan::new(&p, 40, 43);
        let spans = key_spans(&plan, &[1, 5, u32::MAX], 4, 41);
        assert_eq!(spans, vec![0..8, 20..24, 32..42]);
    }

    #[test]
    fn modes_read_from_json_with_defaults_and_unknown_fields_refused() {
        let m: AttentionMode = serde_json::from_str(r#"{"kind":"hip","top_k":8}"#).unwrap();
        assert_eq!(
            m.hip(),
            Some(HipParams {
                top_k: 8,
                ..HipParams::default()
            })
        );
        let d: AttentionMode = serde_json::from_str(r#"{"kind":"dense"}"#).unwrap();
        assert_eq!(d, AttentionMode::Dense {});
        assert!(serde_json::from_str::<AttentionMode>(r#"{"kind":"hip","topk":8}"#).is_err());
        assert!(serde_json::from_str::<AttentionMode>(r#"{"kind":"sparse"}"#).is_err());
        assert!(serde_json::from_str::<AttentionMode>(r#"{"kind":"dense","top_k":8}"#).is_err());
    }

    #[test]
    fn parameters_are_checked() {
        assert!(HipParams::default().validate().is_ok());
        let bad = HipParams {
            top_k: 0,
            ..HipParams::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("top_k"));
        let bad = HipParams {
            block_k: 0,
            ..HipParams::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("block_k"));
    }
}
