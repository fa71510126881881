//! Teacher-forced scoring with segments encoded once (the Fusion-in-Decoder trick in decoder form, the fast
//! approximate mode of TextGenSHAP-style attribution): a prompt is a prefix, any subset of `n` segments (the
//! passages) and a suffix, and the log-probability of a continuation is wanted for many subsets.
//!
//! - The prefix is computed once, sharing cached blocks like any prompt.
//! - Each segment is computed once, attending to the prefix and to itself only, at positions restarting right
//!   after the prefix: segments never see each other.
//! - Each subset's tail (suffix then continuation) attends to the prefix, the chosen segments (in index order) and
//!   itself, at positions starting after the prefix plus the longest segment, so every segment ends just before it.
//!   A subset costs its tail's tokens only, whatever its segments' length (the continuation's last token is only
//!   predicted, so it is not computed).
//!
//! Attention reads the prefix's and segments' keys wherever they lie: every chunk's "block table" is the list of
//! its context's cache slots (a block size of 1 over the same storage, [`crate::backend::AttentionBatch`]).
//! Everything is packed into passes of at most `capacity` tokens: the prefix and segments first, then the tails;
//! in a layer every key is written before any query attends, so a tail can share a pass with its segments. Tails'
//! slots are private blocks, released after their pass.
//!
//! With one segment and a subset holding it, the tail sits right after it: the prompt is then exactly
//! prefix + segment + suffix, and the score equals [`crate::score::score_continuations`]'s (a test
//! checks it). With several, the scores are the approximation of the FiD mode.

use super::backend::{Backend, SeqChunk};
use super::kv_cache::{KvCache, KvError};
use super::llama::{LlamaError, LlamaModel, StepBatch};
use super::prefill::PrefillError;
use super::score::Scores;

/// Most segments of one request (subsets are bit sets of a `u64`).
pub const MAX_SEGMENTS: usize = 64;

/// Subsets of segments to score a continuation under, each segment computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentedScoring {
    /// Tokens every prompt starts with (at least one).
    pub prefix: Vec<u32>,
    /// The segments (each non-empty, at most [`MAX_SEGMENTS`]).
    pub segments: Vec<Vec<u32>>,
    /// Tokens after the chosen segments, before the continuation (at least one: its last token predicts the
    /// continuation's first).
    pub suffix: Vec<u32>,
    /// The continuation whose log-probability is wanted (at least one token).
    pub continuation: Vec<u32>,
    /// The subsets: bit `i` set means segment `i` is in.
    pub subsets: Vec<u64>,
}

impl SegmentedScoring {
    /// Checks the shape: a message naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.prefix.is_empty() || self.suffix.is_empty() || self.continuation.is_empty() {
            return Err("the prefix, the suffix and the continuation must each have tokens".into());
        }
        if self.segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "{} segments (at most {MAX_SEGMENTS})",
                self.segments.len()
            ));
        }
        if let Some(i) = self.segments.iter().position(Vec::is_empty) {
            return Err(format!("segment {i} has no tokens"));
        }
        let known = if self.segments.len() == 64 {
            u64::MAX
        } else {
            (1u64 << self.segments.len()) - 1
        };
        if let Some(s) = self.subsets.iter().find(|&&s| s & !known != 0) {
            return Err(format!(
                "subset {s:#x} names segments beyond the {} given",
                self.segments.len()
            ));
        }
        Ok(())
    }

    /// The tail's input: the suffix, then the continuation but its last token (only predicted, never read).
    fn tail(&self) -> Vec<u32> {
        let read = &self.continuation[..self.continuation.len() - 1];
        self.suffix.iter().chain(read).copied().collect()
    }

    /// Tokens of every subset's prompt written out in full (what scoring them one by one would compute).
    fn full_tokens(&self) -> usize {
        let tail = self.suffix.len() + self.continuation.len();
        self.subsets
            .iter()
            .map(|&s| {
                self.prefix.len()
                    + tail
                    + (0..self.segments.len())
                        .filter(|&i| s & (1 << i) != 0)
                        .map(|i| self.segments[i].len())
                        .sum::<usize>()
            })
            .sum()
    }
}

/// Scores `request` as sequences `first_seq ..` of `cache` (all released before returning, also on error).
/// `capacity` bounds the tokens of one pass (raised to the longest single piece when that is longer).
pub fn score_segmented<B: Backend>(
    model: &LlamaModel<B>,
    kv: &mut B::Kv,
    cache: &mut KvCache,
    request: &SegmentedScoring,
    capacity: usize,
    first_seq: u64,
) -> Result<Scores, PrefillError> {
    request
        .validate()
        .map_err(|e| PrefillError::Model(LlamaError::Batch(e)))?;
    let mut run = Run {
        model,
        kv,
        cache,
        request,
        first_seq,
        held: Vec::new(),
    };
    let result = run.score(capacity);
    for seq in run.held.drain(..) {
        run.cache.release(seq);
    }
    result
}

/// One call's state: the sequences it holds in the cache.
struct Run<'a, B: Backend> {
    model: &'a LlamaModel<B>,
    kv: &'a mut B::Kv,
    cache: &'a mut KvCache,
    request: &'a SegmentedScoring,
    first_seq: u64,
    held: Vec<u64>,
}

/// A piece of work in a pass: its tokens, their first position, its context's slots, and (for a tail) the
/// subset it scores.
struct Piece {
    seq: u64,
    tokens: Vec<u32>,
    start: usize,
    context: Vec<u32>,
    subset: Option<usize>,
}

impl<B: Backend> Run<'_, B> {
    fn score(&mut self, capacity: usize) -> Result<Scores, PrefillError> {
        let r = self.request;
        let n = r.segments.len();
        let tail = r.tail();
        let capacity = capacity
            .max(tail.len())
            .max(r.prefix.len())
            .max(r.segments.iter().map(Vec::len).max().unwrap_or(0));
        let mut scores = Scores {
            log_probs: vec![0.0; r.subsets.len()],
            passes: 0,
            computed_tokens: 0,
            total_tokens: r.full_tokens(),
        };
        let prefix_seq = self.first_seq;
        let (mut pending, prefix_slots, segment_slots) = self.admit_segments()?;
        let tail_start = r.prefix.len() + r.segments.iter().map(Vec::len).max().unwrap_or(0);
        let tail_seq0 = self.first_seq + 1 + n as u64;
        let mut next_subset = 0;
        let mut prefix_marked = false;
        while !pending.is_empty() || next_subset < r.subsets.len() {
            // Fill the pass: what is pending first, then tails while tokens and cache blocks last.
            let mut pass = Vec::new();
            let mut used = 0;
            while let Some(p) = pending.first() {
                if used + p.tokens.len() > capacity && !pass.is_empty() {
                    break;
                }
                used += p.tokens.len();
                pass.push(pending.remove(0));
            }
            // Tails only once every segment is in this pass or an earlier one.
            let mut tails = Vec::new();
            while pending.is_empty()
                && next_subset < r.subsets.len()
                && used + tail.len() <= capacity
            {
                let seq = tail_seq0 + tails.len() as u64;
                match self.cache.reserve(seq, tail.len()) {
                    Ok(()) => {}
                    Err(KvError::OutOfBlocks { .. }) if !pass.is_empty() || !tails.is_empty() => {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
                self.held.push(seq);
                tails.push(seq);
                let subset = r.subsets[next_subset];
                let mut context = prefix_slots.clone();
                for (i, own) in segment_slots.iter().enumerate() {
                    if subset & (1 << i) != 0 {
                        context.extend_from_slice(own);
                    }
                }
                context.extend(self.cache.slots_for(seq, 0, tail.len())?);
                pass.push(Piece {
                    seq,
                    tokens: tail.clone(),
                    start: tail_start,
                    context,
                    subset: Some(next_subset),
                });
                used += tail.len();
                next_subset += 1;
            }
            self.run_pass(&pass, &mut scores)?;
            if !prefix_marked {
                // The prefix is written: offer its full blocks to later calls and requests.
                self.cache.mark_computed(prefix_seq, r.prefix.len())?;
                prefix_marked = true;
            }
            for seq in tails {
                self.cache.release(seq);
                self.held.retain(|&s| s != seq);
            }
        }
        Ok(scores)
    }

    /// Admits the prefix (reusing cached blocks), then each segment after it: the pieces to compute, the prefix's
    /// slots and each segment's own slots.
    #[allow(clippy::type_complexity)]
    fn admit_segments(&mut self) -> Result<(Vec<Piece>, Vec<u32>, Vec<Vec<u32>>), PrefillError> {
        let r = self.request;
        let n = r.segments.len();
        let prefix_seq = self.first_seq;
        let reused = self.cache.admit(prefix_seq, &r.prefix)?;
        self.held.push(prefix_seq);
        let prefix_slots = self.cache.slots_for(prefix_seq, 0, r.prefix.len())?;
        let mut pending = vec![Piece {
            seq: prefix_seq,
            tokens: r.prefix[reused..].to_vec(),
            start: reused,
            context: prefix_slots.clone(),
            subset: None,
        }];
        let mut segment_slots = Vec::with_capacity(n);
        for (i, segment) in r.segments.iter().enumerate() {
            let seq = self.first_seq + 1 + i as u64;
            self.cache.reserve(seq, segment.len())?;
            self.held.push(seq);
            let own = self.cache.slots_for(seq, 0, segment.len())?;
            let mut context = prefix_slots.clone();
            context.extend_from_slice(&own);
            pending.push(Piece {
                seq,
                tokens: segment.clone(),
                start: r.prefix.len(),
                context,
                subset: None,
            });
            segment_slots.push(own);
        }
        Ok((pending, prefix_slots, segment_slots))
    }

    /// Runs one pass over `pieces` and stores the tails' log-probabilities.
    fn run_pass(&mut self, pieces: &[Piece], scores: &mut Scores) -> Result<(), PrefillError> {
        let r = self.request;
        let mut batch = StepBatch::default();
        let mut wanted = Vec::new();
        for p in pieces.iter().filter(|p| !p.tokens.is_empty()) {
            let slots = &p.context[p.context.len() - p.tokens.len()..];
            let base = batch.tokens.len();
            batch.tokens.extend_from_slice(&p.tokens);
            batch
                .positions
                .extend((p.start..p.start + p.tokens.len()).map(|x| x as u32));
            batch.slots.extend_from_slice(slots);
            batch.seqs.push(SeqChunk {
                q_len: p.tokens.len(),
                context_len: p.context.len(),
                block_table: p.context.clone(),
                hip: None,
            });
            if let Some(subset) = p.subset {
                // Rows suffix.len() - 1 .. (the tail's last) predict the continuation.
                let first = base + r.suffix.len() - 1;
                batch
                    .logits_rows
                    .extend((first..first + r.continuation.len()).map(|x| x as u32));
                wanted.push(subset);
            }
            scores.computed_tokens += p.tokens.len();
            debug_assert!(self.held.contains(&p.seq));
        }
        if batch.tokens.is_empty() {
            return Ok(());
        }
        let logits = self.model.forward_logits(self.kv, &batch, 1)?;
        scores.passes += 1;
        let Some(logits) = logits else {
            return Ok(());
        };
        let tokens: Vec<u32> = wanted
            .iter()
            .flat_map(|_| r.continuation.iter().copied())
            .collect();
        let lps = self
            .model
            .backend()
            .token_log_probs(&logits, &tokens)
            .map_err(LlamaError::from)?;
        for (k, &subset) in wanted.iter().enumerate() {
            let len = r.continuation.len();
            scores.log_probs[subset] = lps[k * len..(k + 1) * len].iter().sum();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::kv_cache::KvCacheConfig;
    use crate::model::synthetic::synthetic_config;
    use crate::score::score_continuations;

    fn tiny() -> LlamaModel<CpuBackend> {
        let config = synthetic_config("tiny").unwrap();
        LlamaModel::synthetic(CpuBackend, &config, 5).unwrap()
    }

    fn tokens(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 17 + seed * 31 + 3) % 250)
            .collect()
    }

    fn request(lengths: &[usize], subsets: Vec<u64>) -> SegmentedScoring {
        SegmentedScoring {
            prefix: tokens(21, 1),
            segments: lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| tokens(n, 10 + i as u32))
                .collect(),
            suffix: tokens(5, 2),
            continuation: tokens(4, 3),
            subsets,
        }
    }

    fn score(
        model: &LlamaModel<CpuBackend>,
        req: &SegmentedScoring,
        capacity: usize,
    ) -> (Scores, usize) {
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut c = KvCache::new(cfg);
        let s = score_segmented(model, &mut kv, &mut c, req, capacity, 7).unwrap();
        (s, c.usage().used_blocks)
    }

    /// The joint prompt prefix + segment + suffix, scored the ordinary way.
    fn joint(
        model: &LlamaModel<CpuBackend>,
        req: &SegmentedScoring,
        segment: Option<usize>,
    ) -> f64 {
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut c = KvCache::new(cfg);
        let mut context = req.prefix.clone();
        if let Some(i) = segment {
            context.extend_from_slice(&req.segments[i]);
        }
        context.extend_from_slice(&req.suffix);
        let pairs = [(context, req.continuation.clone())];
        score_continuations(model, &mut kv, &mut c, &pairs, 256, 0)
            .unwrap()
            .log_probs[0]
    }

    #[test]
    fn a_subset_holding_one_longest_segment_is_its_joint_prompt() {
        let model = tiny();
        // Segments 0 and 2 are the longest, so a tail after either sits right after it.
        let req = request(&[19, 7, 19], vec![0b001, 0b100, 0b010, 0b111, 0]);
        let (s, left) = score(&model, &req, 64);
        assert_eq!(left, 0, "every block is released");
        for (k, seg) in [(0, 0), (1, 2)] {
            let want = joint(&model, &req, Some(seg));
            let got = s.log_probs[k];
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1.0),
                "segment {seg}: {got} vs {want}"
            );
        }
        // A shorter segment sits further from the tail, and several segments never see each other: these are
        // the approximation, so they differ from the joint prompts.
        assert!((s.log_probs[2] - joint(&model, &req, Some(1))).abs() > 1e-6);
        assert!(s.log_probs.iter().all(|v| v.is_finite() && *v < 0.0));
        // Computed: the prefix and segments once, then each subset's tail only (the continuation's last token
        // is never read).
        let tail = req.suffix.len() + req.continuation.len();
        assert_eq!(s.computed_tokens, 21 + 19 + 7 + 19 + 5 * (tail - 1));
        assert_eq!(
            s.total_tokens,
            5 * (21 + tail) + 19 + 19 + 7 + (19 + 7 + 19)
        );
    }

    #[test]
    fn scores_do_not_depend_on_how_the_work_is_packed() {
        let model = tiny();
        let subsets: Vec<u64> = (0..16).collect();
        let req = request(&[6, 11, 3, 9], subsets);
        let (one, _) = score(&model, &req, 1 << 12);
        let (many, left) = score(&model, &req, 12);
        assert_eq!(left, 0);
        assert!(
            many.passes > one.passes,
            "{} vs {}",
            many.passes,
            one.passes
        );
        for (a, b) in one.log_probs.iter().zip(&many.log_probs) {
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Different subsets give different values.
        assert!((one.log_probs[0] - one.log_probs[15]).abs() > 1e-6);
    }

    #[test]
    fn bad_requests_are_refused_and_nothing_is_kept() {
        let model = tiny();
        let cfg = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut kv = model.backend_kv(&cfg).unwrap();
        let mut c = KvCache::new(cfg);
        let mut bad = vec![request(&[4, 4], vec![0b100]), request(&[4, 0], vec![1])];
        let mut no_suffix = request(&[4], vec![1]);
        no_suffix.suffix.clear();
        bad.push(no_suffix);
        for req in &bad {
            assert!(req.validate().is_err());
            assert!(score_segmented(&model, &mut kv, &mut c, req, 64, 0).is_err());
            assert_eq!(c.usage().used_blocks, 0);
        }
        // A cache too small for the segments fails cleanly too.
        let small = KvCacheConfig {
            block_size: 16,
            num_blocks: 3,
        };
        let mut kv = model.backend_kv(&small).unwrap();
        let mut c = KvCache::new(small);
        let req = request(&[30, 30], vec![3]);
        assert!(score_segmented(&model, &mut kv, &mut c, &req, 64, 0).is_err());
        assert_eq!(c.usage().used_blocks, 0);
    }
}
