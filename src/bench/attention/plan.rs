//! How many keys a query row attends, from HiP's plans ([`QueryBlockPlan`]) alone: the kernel part reports it
//! next to the timings (which blocks the search keeps does not change the count).

use engram_engine::internals::hip::{key_spans, QueryBlockPlan};
use engram_engine::HipParams;

/// Keys a query row attends on average, for a chunk of `rows` rows at the end of a context of `t` keys: all
/// earlier keys when dense (or when HiP does not engage), else HiP's sink, `min(top_k, candidates)` chosen blocks
/// and the recent window, cut causally (which blocks are chosen does not change the count).
pub fn keys_per_row(hip: Option<&HipParams>, t: usize, rows: usize) -> f64 {
    let first = t - rows;
    let Some(p) = hip.filter(|p| p.engages(t)) else {
        return (first..t).map(|pos| (pos + 1) as f64).sum::<f64>() / rows.max(1) as f64;
    };
    let mut total = 0.0;
    for qb in 0..p.query_blocks(rows) {
        let block = first + qb * p.block_q..first + ((qb + 1) * p.block_q).min(rows);
        let plan = QueryBlockPlan::new(p, block.start, block.end - 1);
        let chosen: Vec<u32> = plan
            .candidates
            .clone()
            .take(p.top_k)
            .map(|b| b as u32)
            .collect();
        for pos in block {
            let spans = key_spans(&plan, &chosen, p.block_k, pos);
            total += spans.iter().map(|r| r.len()).sum::<usize>() as f64;
        }
    }
    total / rows.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_per_row_counts_sink_chosen_blocks_and_window() {
        let p = HipParams {
            block_q: 4,
            block_k: 4,
            top_k: 2,
            sink_tokens: 4,
            recent_tokens: 8,
            min_context: 0,
        };
        // A decode row at position 99: sink 4, two blocks of 4, window from floor((100 - 8) / 4) = 23: keys 92..=99.
        assert_eq!(keys_per_row(Some(&p), 100, 1), 4.0 + 8.0 + 8.0);
        assert_eq!(keys_per_row(None, 100, 1), 100.0);
        assert_eq!(keys_per_row(None, 4, 4), 2.5);
        // Not engaged: dense.
        let off = HipParams {
            min_context: 1000,
            ..p
        };
        assert_eq!(keys_per_row(Some(&off), 100, 1), 100.0);
    }
}
