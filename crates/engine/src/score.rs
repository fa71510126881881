//! Teacher-forced scoring: the log-probability a model gives a continuation after a context, for many
//! (context, continuation) pairs at once, with no decoding. This is the value function of TextGenSHAP-style
//! attribution ([`crate::attribution`]): one prefill per coalition prompt, the answer's tokens fed as input and
//! their log-probabilities read off the logits.
//!
//! Pairs are prepacked into rows of at most `capacity` computed tokens, and shared prefixes are computed once:
//! the first pair runs alone and its context's full cache blocks stay shared for the rest of the call (the KV
//! cache's prefix sharing), and every later row reuses whatever full blocks of its contexts earlier rows left.
//! Continuation blocks are never shared, so every continuation token's logits are computed.

use super::backend::Backend;
use super::kv_cache::KvCache;
use super::llama::{LlamaError, LlamaModel, StepBatch};
use super::prefill::{push_chunk, PrefillError};
use super::prepack::pack_first_fit_decreasing;

/// What scoring a batch of pairs computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Σ log p(continuation token | everything before it), per pair, in input order.
    pub log_probs: Vec<f64>,
    /// Forward passes run.
    pub passes: usize,
    /// Tokens computed (all tokens minus those read from shared cache blocks).
    pub computed_tokens: usize,
    /// Tokens of all pairs together.
    pub total_tokens: usize,
}

/// Scores `pairs` (context, continuation), both non-empty, as sequences `first_seq ..` of `cache` (released
/// before returning, also on error). `capacity` bounds the tokens of one pass (at least the longest pair).
pub fn score_continuations<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    pairs: &[(Vec<u32>, Vec<u32>)],
    capacity: usize,
    first_seq: u64,
) -> Result<Scores, PrefillError> {
    let seqs = first_seq..first_seq + pairs.len() as u64;
    let result = score_inner(model, kv, cache, pairs, capacity, first_seq);
    for seq in seqs {
        cache.release(seq);
    }
    result
}

fn score_inner<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    pairs: &[(Vec<u32>, Vec<u32>)],
    capacity: usize,
    first_seq: u64,
) -> Result<Scores, PrefillError> {
    let mut scores = Scores {
        log_probs: vec![0.0; pairs.len()],
        passes: 0,
        computed_tokens: 0,
        total_tokens: pairs.iter().map(|(c, a)| c.len() + a.len()).sum(),
    };
    if pairs.is_empty() {
        return Ok(scores);
    }
    if let Some(i) = pairs.iter().position(|(c, a)| c.is_empty() || a.is_empty()) {
        return Err(PrefillError::Model(super::llama::LlamaError::Batch(
            format!("pair {i}: the context and the continuation must both have tokens"),
        )));
    }
    // The first pair alone, then the rest packed by length.
    let mut rows: Vec<Vec<usize>> = vec![vec![0]];
    let rest: Vec<usize> = (1..pairs.len()).collect();
    let lengths: Vec<usize> = rest
        .iter()
        .map(|&i| pairs[i].0.len() + pairs[i].1.len())
        .collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    if !rest.is_empty() {
        let packing = pack_first_fit_decreasing(&lengths, Some(capacity.max(longest)))?;
        rows.extend(
            packing
                .rows
                .iter()
                .map(|r| r.prompts.iter().map(|&j| rest[j]).collect()),
        );
    }
    for row in rows {
        let mut batch = StepBatch::default();
        // (pair, first logits row of its continuation in this batch)
        let mut wanted: Vec<(usize, usize)> = Vec::with_capacity(row.len());
        for &i in &row {
            let (context, continuation) = &pairs[i];
            let tokens: Vec<u32> = context.iter().chain(continuation).copied().collect();
            let seq = first_seq + i as u64;
            let reused = cache.admit(seq, &tokens)?;
            // Positions context.len() - 1 ..= len - 2 predict the continuation, so computing starts at the
            // first of them at the latest. Shared blocks usually end before it (mark_computed below offers only
            // context blocks), but another pair's context can cover this pair's continuation; those positions are
            // then computed again, writing the same keys and values into the shared blocks.
            let first = context.len() - 1;
            let start = reused.min(first);
            let base = batch.tokens.len();
            push_chunk(&mut batch, cache, seq, &tokens[start..], start, false)?;
            batch
                .logits_rows
                .extend((first..tokens.len() - 1).map(|p| (base + p - start) as u32));
            wanted.push((i, base));
            scores.computed_tokens += tokens.len() - start;
        }
        let logits = model
            .forward_logits(kv, &batch, cache.block_size())?
            .ok_or_else(|| LlamaError::Batch("no continuation rows".into()))?;
        scores.passes += 1;
        // The logits rows are every wanted pair's continuation tokens, in order.
        let tokens: Vec<u32> = wanted
            .iter()
            .flat_map(|&(i, _)| pairs[i].1.iter().copied())
            .collect();
        let lps = model
            .backend()
            .token_log_probs(&logits, &tokens)
            .map_err(LlamaError::from)?;
        let mut next = 0;
        for &(i, _) in &wanted {
            let len = pairs[i].1.len();
            scores.log_probs[i] = lps[next..next + len].iter().sum();
            next += len;
            // Offer the context's full blocks, up to the row before the first continuation token, to later rows.
            cache.mark_computed(first_seq + i as u64, pairs[i].0.len() - 1)?;
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::token_log_prob;
    use crate::kv_cache::KvCacheConfig;
    use crate::model::synthetic::synthetic_config;

    fn tiny() -> LlamaModel<CpuBackend> {
        let config = synthetic_config("tiny").unwrap();
        LlamaModel::synthetic(CpuBackend, &config, 5).unwrap()
    }

    /// The reference: one sequence at a time, every row's logits, log-softmax by hand.
    fn one_by_one(model: &LlamaModel<CpuBackend>, context: &[u32], continuation: &[u32]) -> f64 {
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let tokens: Vec<u32> = context.iter().chain(continuation).copied().collect();
        cache.admit(0, &tokens).unwrap();
        let mut batch = StepBatch::default();
        push_chunk(&mut batch, &cache, 0, &tokens, 0, false).unwrap();
        batch.logits_rows = (0..tokens.len() as u32).collect();
        let logits = model.forward(&mut kv, &batch, 16).unwrap();
        continuation
            .iter()
            .enumerate()
            .map(|(j, &t)| token_log_prob(&logits[context.len() - 1 + j], t))
            .sum()
    }

    #[test]
    fn backend_log_probs_check_their_tokens() {
        let logits: crate::backend::cpu_tensor::CpuTensor = candle_core::Tensor::from_slice(
            &[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5],
            (2, 3),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .into();
        let lps = CpuBackend.token_log_probs(&logits, &[2, 0]).unwrap();
        assert!((lps[0] - token_log_prob(&[1.0, 2.0, 3.0], 2)).abs() < 1e-12);
        assert!((lps[1] - (1.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!(CpuBackend.token_log_probs(&logits, &[2]).is_err());
        assert!(CpuBackend.token_log_probs(&logits, &[2, 3]).is_err());
    }

    #[test]
    fn log_softmax_of_a_token() {
        let lp = token_log_prob(&[1.0, 2.0, 3.0], 2);
        let want = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lp - want).abs() < 1e-6, "{lp} vs {want}"); // f32 exponentials
    }

    #[test]
    fn packed_scores_with_shared_prefixes_match_one_at_a_time() {
        let model = tiny();
        // A 40-token shared prefix (two full blocks and a part), then different middles and answers.
        let prefix: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 200).collect();
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..6u32)
            .map(|k| {
                let mut ctx = prefix.clone();
                ctx.extend((0..(5 + 3 * k)).map(|i| (i * 11 + k) % 200));
                (ctx, vec![(k * 13) % 200, 42, (k + 7) % 200])
            })
            .chain([
                (vec![9], vec![8]),
                (prefix.clone(), vec![1, 2]),
                // The first pair's shared context blocks cover this continuation.
                (prefix[..10].to_vec(), prefix[10..35].to_vec()),
            ])
            .collect();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 96,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let s = score_continuations(&model, &mut kv, &mut cache, &pairs, 128, 100).unwrap();
        for (i, (c, a)) in pairs.iter().enumerate() {
            let want = one_by_one(&model, c, a);
            assert!(
                (s.log_probs[i] - want).abs() < 1e-4 * want.abs().max(1.0),
                "pair {i}: {} vs {want}",
                s.log_probs[i]
            );
        }
        // The shared prefix was computed once: later pairs reused its two full blocks.
        assert!(
            s.computed_tokens <= s.total_tokens - 32 * 6,
            "{} of {}",
            s.computed_tokens,
            s.total_tokens
        );
        assert!(s.passes >= 2);
        // Everything was released.
        assert_eq!(cache.usage().used_blocks, 0);
    }

    #[test]
    fn empty_parts_are_refused_and_nothing_is_kept() {
        let model = tiny();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 8,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut cache = KvCache::new(cfg);
        let pairs = vec![(vec![1, 2], vec![3]), (vec![4], vec![])];
        assert!(score_continuations(&model, &mut kv, &mut cache, &pairs, 64, 0).is_err());
        assert_eq!(cache.usage().used_blocks, 0);
    }
}
