//! Batch prefill three ways, over the same forward pass: prepacked (prompts bin-packed into rows of at most
//! `capacity` tokens, each row one varlen pass; the Prepacking paper), padded (every prompt padded to the longest,
//! one pass: the usual baseline), and one prompt at a time. All return each prompt's last-token logits, in input
//! order, and leave each prompt's keys and values in its own cache blocks.

use super::backend::{Backend, SeqChunk};
use super::kv_cache::{KvCache, KvError};
use super::llama::{LlamaError, LlamaModel, StepBatch};
use super::prepack::{pack_first_fit_decreasing, PackError};

/// Errors of batch prefill.
#[derive(Debug, thiserror::Error)]
pub enum PrefillError {
    /// The prompts cannot be packed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The cache has no room.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] LlamaError),
}

/// Adds `tokens` of sequence `seq` (already admitted to `cache`, positions `start..`) to `batch`.
pub fn push_chunk(
    batch: &mut StepBatch,
    cache: &KvCache,
    seq: u64,
    tokens: &[u32],
    start: usize,
    want_logits: bool,
) -> Result<(), PrefillError> {
    push_chunk_at(batch, cache, seq, tokens, start, start, want_logits)
}

/// [`push_chunk`] with the tokens' rotary positions starting at `position` instead of their cache index `start`
/// (they differ once H2O has evicted tokens).
pub fn push_chunk_at(
    batch: &mut StepBatch,
    cache: &KvCache,
    seq: u64,
    tokens: &[u32],
    start: usize,
    position: usize,
    want_logits: bool,
) -> Result<(), PrefillError> {
    let slots = cache.slots_for(seq, start, tokens.len())?;
    let table = cache
        .table(seq)
        .ok_or(KvError::UnknownSequence(seq))?
        .blocks
        .clone();
    batch.tokens.extend_from_slice(tokens);
    batch
        .positions
        .extend((position..position + tokens.len()).map(|p| p as u32));
    batch.slots.extend(slots);
    batch.seqs.push(SeqChunk {
        q_len: tokens.len(),
        context_len: start + tokens.len(),
        block_table: table,
        hip: None,
    });
    if want_logits {
        batch.logits_rows.push(batch.tokens.len() as u32 - 1);
    }
    Ok(())
}

/// Prepacked prefill. Prompt `i` is cached as sequence `first_seq + i`. `capacity` bounds a row's tokens (`None`:
/// the longest prompt, as in the paper).
pub fn prefill_prepacked<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    capacity: Option<usize>,
    first_seq: u64,
) -> Result<Vec<Vec<f32>>, PrefillError> {
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let packing = pack_first_fit_decreasing(&lengths, capacity)?;
    let mut out = vec![Vec::new(); prompts.len()];
    for row in &packing.rows {
        let mut batch = StepBatch::default();
        for &i in &row.prompts {
            let seq = first_seq + i as u64;
            cache.admit(seq, &prompts[i])?;
            push_chunk(&mut batch, cache, seq, &prompts[i], 0, true)?;
        }
        let logits = model.forward(kv, &batch, cache.block_size())?;
        for (&i, l) in row.prompts.iter().zip(logits) {
            out[i] = l;
        }
    }
    Ok(out)
}

/// Padded prefill: every prompt is padded at the end with `pad` to the longest prompt's length and the whole
/// batch runs as one pass; padding is computed (and cached) but never attended to by real tokens, since it comes
/// after them.
pub fn prefill_padded<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    pad: u32,
    first_seq: u64,
) -> Result<Vec<Vec<f32>>, PrefillError> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut batch = StepBatch::default();
    for (i, p) in prompts.iter().enumerate() {
        let mut padded = p.clone();
        padded.resize(longest, pad);
        let seq = first_seq + i as u64;
        cache.admit(seq, &padded)?;
        push_chunk(&mut batch, cache, seq, &padded, 0, false)?;
        let row_start = batch.tokens.len() - longest;
        batch.logits_rows.push((row_start + p.len() - 1) as u32);
    }
    Ok(model.forward(kv, &batch, cache.block_size())?)
}

/// One prompt per pass.
pub fn prefill_one_by_one<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    first_seq: u64,
) -> Result<Vec<Vec<f32>>, PrefillError> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let seq = first_seq + i as u64;
        cache.admit(seq, p)?;
        let mut batch = StepBatch::default();
        push_chunk(&mut batch, cache, seq, p, 0, true)?;
        out.extend(model.forward(kv, &batch, cache.block_size())?);
    }
    Ok(out)
}

/// Prefills one prompt in chunks of at most `chunk` tokens (as Dynamic SplitFuse cuts long prompts): returns the
/// last token's logits, which must equal whole-prompt prefill's.
pub fn prefill_chunked<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    prompt: &[u32],
    chunk: usize,
    seq: u64,
) -> Result<Vec<f32>, PrefillError> {
    cache.admit(seq, prompt)?;
    let mut last = Vec::new();
    let mut start = 0;
    while start < prompt.len() {
        let end = (start + chunk.max(1)).min(prompt.len());
        let mut batch = StepBatch::default();
        push_chunk(
            &mut batch,
            cache,
            seq,
            &prompt[start..end],
            start,
            end == prompt.len(),
        )?;
        if let Some(l) = model.forward(kv, &batch, cache.block_size())?.pop() {
            last = l;
        }
        start = end;
    }
    Ok(last)
}

/// One decode step for several sequences: feeds each `(seq, token)` at the end of its context (allocating its
/// slot) and returns the next-token logits of each, in order.
pub fn decode_step<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    steps: &[(u64, u32)],
) -> Result<Vec<Vec<f32>>, PrefillError> {
    let mut batch = StepBatch::default();
    for &(seq, token) in steps {
        let start = cache.table(seq).ok_or(KvError::UnknownSequence(seq))?.len;
        cache.append_slots(seq, 1)?;
        push_chunk(&mut batch, cache, seq, &[token], start, true)?;
    }
    Ok(model.forward(kv, &batch, cache.block_size())?)
}
