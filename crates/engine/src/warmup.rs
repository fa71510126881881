//! Engine warm-up: one forward pass for each row bucket a step can have, run before the engine serves, so that a
//! backend which tunes its products at the first call of a row count (cuBLASLt autotuning on CUDA, see
//! `tuning_rows` in the CUDA backend) does so at start-up rather than in the middle of a request. Decode batches
//! and speculative verify passes have a new row count whenever the number of sequences or their guesses change;
//! tuning one costs tens of milliseconds, which is a visible stall in a 5 ms decode step.

use super::backend::Backend;
use super::kv_cache::{KvCache, KvCacheConfig};
use super::llama::{LlamaError, LlamaModel, StepBatch};
use super::prefill::{push_chunk, PrefillError};

/// The row counts warmed: each of 1 to 8, every multiple of 8 up to 128, then powers of two up to `max_rows`
/// (one representative per tuning bucket).
pub fn warmup_rows(max_rows: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (1..=8).chain((16..=128).step_by(8)).collect();
    let mut p = 256;
    while p <= max_rows {
        rows.push(p);
        p *= 2;
    }
    rows.retain(|&r| r <= max_rows.max(1));
    rows
}

/// Runs one pass of each of `rows` rows (a prompt chunk of that many tokens with logits for every row, so the
/// output projection meets the same count) through a scratch cache over `kv`, whose contents it overwrites;
/// a pass that does not fit the cache or the context window is skipped. Returns the row counts run.
pub fn warm_up<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: KvCacheConfig,
    rows: &[usize],
) -> Result<Vec<usize>, PrefillError> {
    let window = model.config().max_position_embeddings;
    let mut scratch = KvCache::new(cache);
    let mut done = Vec::new();
    for (i, &n) in rows.iter().enumerate() {
        if n == 0 || n > window || !scratch.can_admit(n) {
            continue;
        }
        let seq = i as u64;
        // Token 0..n-1 modulo the vocabulary: any ids do; the values are never read.
        let vocab = model.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..n as u32).map(|t| t % vocab).collect();
        scratch.admit(seq, &tokens)?;
        let mut batch = StepBatch::default();
        push_chunk(&mut batch, &scratch, seq, &tokens, 0, false)?;
        batch.logits_rows = (0..n as u32).collect();
        let result = model.forward_select(kv, &batch, cache.block_size, 0.0, 0);
        scratch.release(seq);
        result?;
        done.push(n);
    }
    model
        .backend()
        .synchronize()
        .map_err(|e| PrefillError::Model(LlamaError::Backend(e)))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::synthetic::synthetic_config;

    #[test]
    fn one_row_count_per_tuning_bucket() {
        let rows = warmup_rows(512);
        assert_eq!(&rows[..9], &[1, 2, 3, 4, 5, 6, 7, 8, 16]);
        assert!(rows.contains(&128) && rows.contains(&256) && rows.contains(&512));
        assert!(!rows.contains(&1024));
        assert_eq!(rows.len(), 8 + 15 + 2);
        assert_eq!(warmup_rows(5), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn warm_up_runs_each_pass_that_fits_and_leaves_decoding_intact() {
        let config = synthetic_config("tiny").unwrap();
        let model = LlamaModel::synthetic(CpuBackend, &config, 3).unwrap();
        let cache = KvCacheConfig {
            block_size: 4,
            num_blocks: 40,
        };
        let mut kv = model.backend_kv(&cache).unwrap();
        // 160 cache slots: the 256-row pass does not fit and is skipped.
        let done = warm_up(&model, &mut kv, cache, &[1, 8, 64, 256]).unwrap();
        assert_eq!(done, vec![1, 8, 64]);
        // The same storage then serves a prompt exactly as fresh storage does.
        let prompt: Vec<u32> = vec![256, 5, 6, 7, 8, 9];
        let logits = |kv: &mut _| {
            let mut c = KvCache::new(cache);
            c.admit(1, &prompt).unwrap();
            let mut batch = StepBatch::default();
            push_chunk(&mut batch, &c, 1, &prompt, 0, true).unwrap();
            model.forward(kv, &batch, cache.block_size).unwrap()
        };
        let warmed = logits(&mut kv);
        let mut fresh_kv = model.backend_kv(&cache).unwrap();
        assert_eq!(warmed, logits(&mut fresh_kv));
    }
}
