//! One sequence at a time through the model, as the engine steps it: prefill in chunks of `chunk` tokens and
//! greedy decoding, each chunk with the run's HiP parameters (`SeqChunk::hip`), on a fresh cache bookkeeping per
//! run over one KV storage.

use std::ops::Range;

use super::text::argmax;
use crate::bench::engine::BenchError;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::{LlamaError, LlamaModel, StepBatch};
use engram_engine::internals::prefill::{push_chunk, PrefillError};
use engram_engine::HipParams;

/// The sequence id of the runs (each starts on a fresh cache).
const SEQ: u64 = 1;

/// Runs one sequence at a time through the model, as the engine steps it.
pub struct Runner<'a, B: Backend> {
    model: &'a LlamaModel<B>,
    kv: B::Kv,
    cache: KvCacheConfig,
    chunk: usize,
}

impl<'a, B: Backend> Runner<'a, B> {
    /// A runner over KV storage of `cache`'s size, prefilling `chunk` tokens per forward pass.
    pub fn new(
        model: &'a LlamaModel<B>,
        cache: KvCacheConfig,
        chunk: usize,
    ) -> Result<Self, LlamaError> {
        Ok(Self {
            kv: model.backend_kv(&cache)?,
            model,
            cache,
            chunk: chunk.max(1),
        })
    }

    /// Prefills `tokens` in chunks, each with `hip`; returns the cache holding the sequence and the host logits of
    /// the positions in `keep`, in order.
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        hip: Option<HipParams>,
        keep: Range<usize>,
    ) -> Result<(KvCache, Vec<Vec<f32>>), BenchError> {
        let mut cache = KvCache::new(self.cache);
        cache.admit(SEQ, tokens).map_err(PrefillError::from)?;
        let mut out = Vec::with_capacity(keep.len());
        for start in (0..tokens.len()).step_by(self.chunk) {
            let end = (start + self.chunk).min(tokens.len());
            let mut batch = StepBatch::default();
            push_chunk(&mut batch, &cache, SEQ, &tokens[start..end], start, false)?;
            set_hip(&mut batch, hip);
            batch.logits_rows = (start..end)
                .filter(|p| keep.contains(p))
                .map(|p| (p - start) as u32)
                .collect();
            out.extend(
                self.model
                    .forward(&mut self.kv, &batch, self.cache.block_size)?,
            );
        }
        Ok((cache, out))
    }

    /// The greedy answer to `prompt`: up to `n` tokens, stopping before an `eos` token.
    pub fn answer(
        &mut self,
        prompt: &[u32],
        hip: Option<HipParams>,
        n: usize,
        eos: &[u32],
    ) -> Result<Vec<u32>, BenchError> {
        let len = prompt.len();
        let (mut cache, logits) = self.prefill(prompt, hip, len.saturating_sub(1)..len)?;
        let mut next = logits.first().map_or(0, |row| argmax(row) as u32);
        let mut out = Vec::with_capacity(n);
        while out.len() < n && !eos.contains(&next) {
            out.push(next);
            if out.len() == n {
                break;
            }
            let pos = len + out.len() - 1;
            cache.append_slots(SEQ, 1).map_err(PrefillError::from)?;
            let mut batch = StepBatch::default();
            push_chunk(&mut batch, &cache, SEQ, &[next], pos, true)?;
            set_hip(&mut batch, hip);
            let logits = self
                .model
                .forward(&mut self.kv, &batch, self.cache.block_size)?;
            next = logits.first().map_or(0, |row| argmax(row) as u32);
        }
        Ok(out)
    }
}

/// Gives the chunk just pushed HiP's parameters (as the engine does for a request's chunks).
fn set_hip(batch: &mut StepBatch, hip: Option<HipParams>) {
    if let Some(chunk) = batch.seqs.last_mut() {
        chunk.hip = hip;
    }
}
