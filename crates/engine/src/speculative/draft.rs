//! The draft-model proposer: a smaller model with the target's tokenizer, with its own KV cache, run
//! autoregressively for `k` steps per target step over all speculating sequences at once (one packed batch per
//! draft step). Each sequence's draft cache keeps the context it has seen; after verification it is cut back to
//! the part the target accepted ([`DraftModel::accept`]), so the next proposal feeds only what is new.

use std::collections::HashMap;

use super::Proposal;
use crate::backend::Backend;
use crate::kv_cache::{KvCache, KvCacheConfig};
use crate::llama::{LlamaError, LlamaModel, StepBatch};
use crate::prefill::{push_chunk, PrefillError};
use crate::sampling::{argmax, prepare_logits, token_distribution, Sampler, SamplingParams};

/// One sequence's request for guesses.
pub struct DraftRequest<'a> {
    /// The target's sequence id.
    pub seq: u64,
    /// Prompt and output so far (its last token is not yet in the target's cache either).
    pub context: &'a [u32],
    /// Guesses wanted.
    pub k: usize,
    /// The request's sampling: greedy requests get the draft's argmax (one-hot `q`), others a draw from the draft's
    /// distribution under the same parameters.
    pub params: &'a SamplingParams,
    /// The draws' generator.
    pub sampler: &'a mut Sampler,
}

/// A draft model with its KV cache.
pub struct DraftModel<B: Backend> {
    model: LlamaModel<B>,
    kv: B::Kv,
    cache: KvCache,
    /// Tokens of each sequence's context held in the draft cache.
    fed: HashMap<u64, usize>,
}

impl<B: Backend> DraftModel<B> {
    /// Wraps `model` with a KV cache of `kv_cache_mib` MiB in blocks of `block_size` tokens.
    pub fn new(
        model: LlamaModel<B>,
        kv_cache_mib: usize,
        block_size: usize,
    ) -> Result<Self, LlamaError> {
        let block_bytes = model.kv_layout(1, block_size).bytes_f32().max(1);
        let config = KvCacheConfig {
            block_size,
            num_blocks: (kv_cache_mib * 1024 * 1024 / block_bytes).max(1),
        };
        let kv = model.backend_kv(&config)?;
        Ok(Self {
            model,
            kv,
            cache: KvCache::new(config),
            fed: HashMap::new(),
        })
    }

    /// Runs the draft once per row bucket up to `max_rows` when its backend tunes products per row count
    /// ([`crate::warmup`]), so proposals do not stall on tuning while serving.
    pub fn warm_up(&mut self, max_rows: usize) -> Result<(), PrefillError> {
        if self.model.backend().tunes_per_shape() {
            let rows = crate::warmup::warmup_rows(max_rows);
            crate::warmup::warm_up(&self.model, &mut self.kv, self.cache.config(), &rows)?;
        }
        Ok(())
    }

    /// The draft's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    /// Guesses for each request, in order. A sequence the draft cannot hold (cache full, context window reached)
    /// gets no guesses this step.
    pub fn propose(
        &mut self,
        requests: &mut [DraftRequest<'_>],
    ) -> Result<Vec<Proposal>, PrefillError> {
        let mut out: Vec<Proposal> = vec![Proposal::default(); requests.len()];
        let window = self.model.config().max_position_embeddings;
        // Sequences taking part, and what each feeds next.
        let mut live: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            if r.k == 0 || r.context.is_empty() || r.context.len() + r.k > window {
                continue;
            }
            match self.reserve(r.seq, r.context) {
                Ok(start) => live.push((i, r.context[start..].to_vec())),
                Err(_) => self.release(r.seq),
            }
        }
        let greedy_everywhere = live
            .iter()
            .all(|(i, _)| requests[*i].params.greedy_on_device());
        for step in 0.. {
            live.retain(|(i, _)| requests[*i].k > step);
            if live.is_empty() {
                break;
            }
            let mut batch = StepBatch::default();
            for (i, feed) in &live {
                let seq = requests[*i].seq;
                let start = self.fed[&seq];
                if step > 0 {
                    self.cache.append_slots(seq, feed.len())?;
                }
                push_chunk(&mut batch, &self.cache, seq, feed, start, true)?;
            }
            let block_size = self.cache.block_size();
            let picks: Vec<(u32, Option<Vec<f64>>)> = if greedy_everywhere {
                self.model
                    .forward_select(&mut self.kv, &batch, block_size, 0.0, 0)?
                    .into_iter()
                    .map(|t| (t, None))
                    .collect()
            } else {
                let rows = self.model.forward(&mut self.kv, &batch, block_size)?;
                live.iter()
                    .zip(rows)
                    .map(|((i, _), mut row)| {
                        let r = &mut requests[*i];
                        let mut context = r.context.to_vec();
                        context.extend_from_slice(&out[*i].tokens);
                        prepare_logits(&mut row, r.params, &context);
                        if r.params.is_greedy() {
                            // One-hot q: no distribution is kept.
                            (argmax(&row) as u32, None)
                        } else {
                            let q = token_distribution(&row, r.params);
                            (r.sampler.sample_weights(&q) as u32, Some(q))
                        }
                    })
                    .collect()
            };
            for ((i, feed), (token, q)) in live.iter_mut().zip(picks) {
                let seq = requests[*i].seq;
                *self.fed.get_mut(&seq).expect("reserved") += feed.len();
                let p = &mut out[*i];
                p.tokens.push(token);
                if let Some(q) = q {
                    p.q.get_or_insert_with(Vec::new).push(q);
                }
                *feed = vec![token];
            }
        }
        Ok(out)
    }

    /// Makes room for `context` past what the sequence already holds; returns where feeding starts.
    fn reserve(&mut self, seq: u64, context: &[u32]) -> Result<usize, PrefillError> {
        match self.fed.get(&seq).copied() {
            None => {
                let cached = self.cache.admit(seq, context)?;
                self.fed.insert(seq, cached);
                Ok(cached)
            }
            Some(fed) => {
                let fed = fed.min(context.len() - 1);
                self.cache.truncate(seq, fed)?;
                self.cache.append_slots(seq, context.len() - fed)?;
                self.fed.insert(seq, fed);
                Ok(fed)
            }
        }
    }

    /// After verification: the first `valid` tokens of what the draft fed for `seq` (context, then guesses) are
    /// still the sequence's; the rest is dropped.
    pub fn accept(&mut self, seq: u64, valid: usize) {
        if let Some(fed) = self.fed.get_mut(&seq) {
            if valid < *fed {
                *fed = valid;
                if self.cache.truncate(seq, valid).is_err() {
                    self.release(seq);
                }
            }
        }
    }

    /// Forgets a sequence (finished or cancelled).
    pub fn release(&mut self, seq: u64) {
        self.fed.remove(&seq);
        self.cache.release(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::synthetic::synthetic_config;

    fn draft() -> DraftModel<CpuBackend> {
        let config = synthetic_config("tiny").unwrap();
        let model = LlamaModel::synthetic(CpuBackend, &config, 11).unwrap();
        DraftModel::new(model, 8, 4).unwrap()
    }

    /// One sequence's guesses.
    fn guesses(
        d: &mut DraftModel<CpuBackend>,
        seq: u64,
        context: &[u32],
        k: usize,
        params: &SamplingParams,
        sampler: &mut Sampler,
    ) -> Proposal {
        d.propose(&mut [DraftRequest {
            seq,
            context,
            k,
            params,
            sampler,
        }])
        .unwrap()
        .remove(0)
    }

    #[test]
    fn greedy_guesses_equal_the_draft_decoding_alone_and_resume_after_rejection() {
        let mut d = draft();
        let params = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let context: Vec<u32> = vec![256, 10, 20, 30, 40, 50, 60];
        let mut sampler = Sampler::new(1);
        let first = guesses(&mut d, 1, &context, 5, &params, &mut sampler);
        assert_eq!(first.tokens.len(), 5);
        assert!(first.q.is_none());
        // The same guesses one at a time on a fresh draft: each step extends the context by the last guess.
        let mut fresh = draft();
        let mut ctx = context.clone();
        for (j, &want) in first.tokens.iter().enumerate() {
            let got = guesses(&mut fresh, 9 + j as u64, &ctx, 1, &params, &mut sampler);
            assert_eq!(got.tokens, vec![want], "guess {j}");
            ctx.push(want);
        }
        // Two guesses accepted, then the target's own token 7: the draft keeps context + 2 guesses and continues.
        d.accept(1, context.len() + 2);
        let mut next = context.clone();
        next.extend_from_slice(&first.tokens[..2]);
        next.push(7);
        let resumed = guesses(&mut d, 1, &next, 2, &params, &mut sampler);
        let mut scratch = draft();
        let expected = guesses(&mut scratch, 2, &next, 2, &params, &mut sampler);
        assert_eq!(resumed.tokens, expected.tokens);
        d.release(1);
        assert_eq!(d.cache.usage().sequences, 0);
    }

    #[test]
    fn sampled_guesses_carry_the_draft_distribution() {
        let mut d = draft();
        let params = SamplingParams::default();
        let context: Vec<u32> = vec![256, 1, 2, 3];
        let mut sampler = Sampler::new(4);
        let p = guesses(&mut d, 3, &context, 3, &params, &mut sampler);
        let q = p.q.expect("sampled guesses keep q");
        assert_eq!(q.len(), 3);
        for (row, &t) in q.iter().zip(&p.tokens) {
            assert_eq!(row.len(), d.vocab_size());
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(row[t as usize] > 0.0);
        }
    }
}
