//! Greedy batch decoding under H2O on a model held directly ([`crate::h2o`]): what `engram bench h2o`
//! and the tests run. Each prompt is prefilled in chunks (its keys collecting attention scores), evicted down to
//! its budget, then every step decodes one token per sequence and evicts the sequences that reached their budget
//! plus the slack. Without a budget it is plain greedy decoding over the full cache, the baseline.

use std::time::Instant;

use super::backend::Backend;
use super::h2o::{keep_sets, H2oState, KvBudget};
use super::kv_cache::{KvCache, KvError};
use super::llama::{LlamaError, LlamaModel, StepBatch};
use super::prefill::{push_chunk, push_chunk_at, PrefillError};

/// Sees each step's logits (`[sequences, vocab]` on the backend), with the step's index.
pub type Observer<'a, B> =
    &'a mut dyn FnMut(usize, &<B as Backend>::Tensor) -> Result<(), PrefillError>;

/// How to decode.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// New tokens per sequence.
    pub steps: usize,
    /// The KV budget of every sequence (`None`: the full cache).
    pub budget: Option<KvBudget>,
    /// Tokens over the budget tolerated before evicting (1: evict every step, as the paper does).
    pub slack: usize,
    /// Prompt tokens per prefill pass.
    pub chunk: usize,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct DecodeRun {
    /// The tokens fed at each step, per sequence (the greedy choices, or the forced ones).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds of each decode step (eviction included, the observer's time not).
    pub step_seconds: Vec<f64>,
    /// Each sequence's H2O state at the end (with a budget).
    pub states: Vec<Option<H2oState>>,
    /// The most KV blocks in use at once after the prefill.
    pub peak_decode_blocks: usize,
    /// KV blocks in use after the prefill's eviction.
    pub blocks_after_prefill: usize,
    /// Time spent evicting during decoding, by phase.
    pub eviction: EvictionTimes,
}

/// Seconds spent in each phase of eviction (summed over the rounds), and the rounds and sequences evicted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EvictionTimes {
    /// Rounds with at least one sequence evicted.
    pub rounds: usize,
    /// Sequence evictions.
    pub sequences: usize,
    /// Reading the scores to the host.
    pub read_s: f64,
    /// Choosing the kept sets.
    pub select_s: f64,
    /// Compacting the cache (launches and waiting for them).
    pub compact_s: f64,
}

/// Decodes `prompts` as sequences `0..` of `cache` (released at the end). With `forced`, step `t` of sequence
/// `i` feeds `forced[i][t]` instead of the previous argmax. `observe(step, logits)` sees each step's logits
/// (`[sequences, vocab]` on the backend) before the next tokens are chosen.
pub fn decode<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    options: &DecodeOptions,
    forced: Option<&[Vec<u32>]>,
    observe: Observer<'_, B>,
) -> Result<DecodeRun, PrefillError> {
    let result = run(model, kv, cache, prompts, options, forced, observe);
    for seq in 0..prompts.len() as u64 {
        cache.release(seq);
    }
    result
}

/// Prefills each prompt in chunks of `chunk` tokens (its keys collecting scores under H2O), evicts it down to its
/// budget, and returns each prompt's first greedy token.
fn prefill_all<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    chunk: usize,
    states: &mut [Option<H2oState>],
) -> Result<Vec<u32>, PrefillError> {
    let bs = cache.block_size();
    let mut next = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let seq = i as u64;
        cache.reserve(seq, prompt.len())?;
        let mut start = 0;
        let mut last = None;
        while start < prompt.len() {
            let end = (start + chunk.max(1)).min(prompt.len());
            let mut batch = StepBatch::default();
            push_chunk(&mut batch, cache, seq, &prompt[start..end], start, true)?;
            if states[i].is_some() {
                batch.tracked.push(0);
            }
            last = model.forward_logits(kv, &batch, bs)?;
            start = end;
        }
        let logits = last.ok_or_else(|| LlamaError::Batch("an empty prompt".into()))?;
        next.push(
            model
                .backend()
                .select_tokens(&logits, 0.0, 0)
                .map_err(LlamaError::from)?[0],
        );
        if let Some(state) = states[i].as_mut() {
            evict_due(
                model,
                kv,
                cache,
                &mut [(seq, state)],
                &mut EvictionTimes::default(),
            )?;
        }
    }
    Ok(next)
}

fn run<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    options: &DecodeOptions,
    forced: Option<&[Vec<u32>]>,
    observe: Observer<'_, B>,
) -> Result<DecodeRun, PrefillError> {
    if let Some(b) = &options.budget {
        b.validate()
            .map_err(|e| PrefillError::Model(LlamaError::Batch(e)))?;
        if !model.backend().supports_h2o() {
            return Err(PrefillError::Model(LlamaError::Batch(format!(
                "the {} backend keeps no attention scores for H2O",
                model.backend().name()
            ))));
        }
    }
    let n = prompts.len();
    let bs = cache.block_size();
    let mut states: Vec<Option<H2oState>> = prompts
        .iter()
        .map(|p| {
            options
                .budget
                .map(|b| H2oState::new(b.resolve(p.len()), options.slack))
        })
        .collect();
    let mut next = prefill_all(model, kv, cache, prompts, options.chunk, &mut states)?;
    let blocks_after_prefill = cache.usage().used_blocks;
    let mut tokens: Vec<Vec<u32>> = vec![Vec::with_capacity(options.steps); n];
    let mut step_seconds = Vec::with_capacity(options.steps);
    let mut peak = blocks_after_prefill;
    let mut eviction = EvictionTimes::default();
    for step in 0..options.steps {
        let began = Instant::now();
        let mut batch = StepBatch::default();
        for i in 0..n {
            let seq = i as u64;
            let token = forced.map_or(next[i], |f| f[i][step]);
            tokens[i].push(token);
            let len = cache.table(seq).ok_or(KvError::UnknownSequence(seq))?.len;
            let position = states[i].as_ref().map_or(len, |s| s.position(len));
            cache.append_slots(seq, 1)?;
            push_chunk_at(&mut batch, cache, seq, &[token], len, position, true)?;
            if states[i].is_some() {
                batch.tracked.push(i);
            }
        }
        peak = peak.max(cache.usage().used_blocks);
        let logits = model
            .forward_logits(kv, &batch, bs)?
            .ok_or_else(|| LlamaError::Batch("no logits".into()))?;
        // The observer's time is not the step's.
        model.backend().synchronize().map_err(LlamaError::from)?;
        let forward = began.elapsed();
        observe(step, &logits)?;
        let resumed = Instant::now();
        next = model
            .backend()
            .select_tokens(&logits, 0.0, 0)
            .map_err(LlamaError::from)?;
        let mut tracked: Vec<(u64, &mut H2oState)> = states
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|s| (i as u64, s)))
            .collect();
        evict_due(model, kv, cache, &mut tracked, &mut eviction)?;
        model.backend().synchronize().map_err(LlamaError::from)?;
        step_seconds.push((forward + resumed.elapsed()).as_secs_f64());
    }
    Ok(DecodeRun {
        tokens,
        step_seconds,
        states,
        peak_decode_blocks: peak,
        blocks_after_prefill,
        eviction,
    })
}

/// Evicts every sequence of `seqs` (cache sequence id and H2O state) that is due down to its budget: one read of
/// all their scores, their kept sets chosen on all cores, then each compacted (its kept tokens moved to its first
/// slots) and its blocks past them freed. Returns the tokens evicted.
pub fn evict_due<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    seqs: &mut [(u64, &mut H2oState)],
    times: &mut EvictionTimes,
) -> Result<usize, PrefillError> {
    let mut due = Vec::new();
    for (k, (seq, s)) in seqs.iter().enumerate() {
        let len = cache.table(*seq).ok_or(KvError::UnknownSequence(*seq))?.len;
        if s.due(len) {
            due.push((k, len, s.budget));
        }
    }
    if due.is_empty() {
        return Ok(0);
    }
    let began = Instant::now();
    let mut slots = Vec::with_capacity(due.len());
    let mut all = Vec::new();
    for &(k, len, _) in &due {
        let s = cache.slots_for(seqs[k].0, 0, len)?;
        all.extend_from_slice(&s);
        slots.push(s);
    }
    let b = model.backend();
    let scores = b.read_scores(kv, &all).map_err(LlamaError::from)?;
    let c = model.config();
    let heads_total = c.num_layers * c.num_kv_heads;
    // Each sequence's scores, [layer][head][its tokens], out of [layer][head][all tokens].
    let mut offset = 0;
    let mut own: Vec<Vec<f32>> = Vec::with_capacity(due.len());
    for &(_, len, _) in &due {
        let mut v = Vec::with_capacity(heads_total * len);
        for h in 0..heads_total {
            let at = h * all.len() + offset;
            v.extend_from_slice(&scores[at..at + len]);
        }
        own.push(v);
        offset += len;
    }
    let read = began.elapsed().as_secs_f64();
    let keeps: Vec<Vec<u32>> = {
        use rayon::prelude::*;
        own.par_iter()
            .zip(due.par_iter())
            .map(|(s, &(_, len, budget))| keep_sets(s, heads_total, len, budget))
            .collect()
    };
    let selected = began.elapsed().as_secs_f64();
    let mut evicted = 0;
    for ((&(k, len, budget), keep), slots) in due.iter().zip(&keeps).zip(&slots) {
        let kept = budget.total().min(len);
        b.compact_kv(kv, slots, keep, kept)
            .map_err(LlamaError::from)?;
        cache.truncate(seqs[k].0, kept)?;
        seqs[k].1.record(keep, heads_total, len);
        evicted += len - kept;
    }
    b.synchronize().map_err(LlamaError::from)?;
    times.rounds += 1;
    times.sequences += due.len();
    times.read_s += read;
    times.select_s += selected - read;
    times.compact_s += began.elapsed().as_secs_f64() - selected;
    Ok(evicted)
}
