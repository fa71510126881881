//! Streaming a step's results: the tokens chosen on the backend or sampled from the logits, speculative guesses
//! proposed before the pass and verified after it, stop conditions, and the book-keeping that follows (rejected
//! guesses leave the KV cache, the proposal length adapts, the scheduler counts extra tokens).

use super::super::backend::Backend;
use super::super::generator::{FinishReason, GenerationEvent, TokenEvent};
use super::super::sampling::Sampled;
use super::super::scheduler::{ChunkKind, StepPlan};
use super::super::speculative::speculator::{SpecInput, Speculator};
use super::super::speculative::{verify, verify_argmax, Proposal};
use super::LoopState;
use crate::metrics;
use std::collections::HashMap;
use std::time::Instant;

/// A sequence whose next token(s) a step samples: its logits rows, and for a speculating decode, its guesses and
/// where its fed token sits in the cache.
pub(super) struct Sampling {
    pub(super) seq: u64,
    pub(super) proposal: Option<(Proposal, usize)>,
}

impl Sampling {
    pub(super) fn rows(&self) -> usize {
        1 + self.proposal.as_ref().map_or(0, |(p, _)| p.tokens.len())
    }
}

impl LoopState {
    /// Streams the tokens the backend chose (one per logits row, in `sampling` order), verifying guesses by
    /// argmax; returns the requests that ended and the tokens streamed.
    pub(super) fn emit_chosen<B: Backend>(
        &mut self,
        tokens: &[u32],
        sampling: Vec<Sampling>,
        spec: &mut Option<Speculator<B>>,
    ) -> Result<(Vec<(u64, FinishReason)>, usize), String> {
        let forced = spec.as_ref().is_some_and(Speculator::forces_acceptance);
        let (mut finished, mut emitted_total, mut row) = (Vec::new(), 0, 0);
        for s in sampling {
            let rows = &tokens[row..row + s.rows()];
            row += s.rows();
            let (chosen, accepted) = match &s.proposal {
                Some((p, _)) if forced => {
                    let mut kept = p.tokens.clone();
                    kept.push(rows[p.tokens.len()]);
                    (kept, p.tokens.len())
                }
                Some((p, _)) => verify_argmax(&p.tokens, rows),
                None => (rows.to_vec(), 0),
            };
            let sampled = chosen.into_iter().map(|token| Sampled {
                token,
                logprob: f32::NAN, // not computed: the request asked for no logprobs
                top: Vec::new(),
            });
            let seq = s.seq;
            let (emitted, reason) = self.emit_all(seq, sampled);
            emitted_total += emitted;
            self.settle(s, accepted, emitted, reason.is_some(), spec)?;
            finished.extend(reason.map(|r| (seq, r)));
        }
        Ok((finished, emitted_total))
    }

    /// Samples and streams from the logits rows (in `sampling` order), verifying guesses against them; returns
    /// the requests that ended and the tokens streamed.
    pub(super) fn emit_from_logits<B: Backend>(
        &mut self,
        logits: Vec<Vec<f32>>,
        sampling: Vec<Sampling>,
        spec: &mut Option<Speculator<B>>,
    ) -> Result<(Vec<(u64, FinishReason)>, usize), String> {
        let (mut finished, mut emitted_total) = (Vec::new(), 0);
        let mut logits = logits.into_iter();
        for s in sampling {
            let mut rows: Vec<Vec<f32>> = logits.by_ref().take(s.rows()).collect();
            let seq = s.seq;
            let (emitted, accepted, reason) = match &s.proposal {
                None => (1, 0, self.emit(seq, &mut rows[0])),
                Some((p, _)) => {
                    let a = self.active.get_mut(&seq).ok_or("unknown sequence")?;
                    let mut context = a.request.prompt.clone();
                    context.extend_from_slice(&a.generated);
                    let verdict = verify(
                        &mut rows,
                        p,
                        &a.request.params,
                        &mut context,
                        &mut a.sampler,
                    );
                    let (emitted, reason) = self.emit_all(seq, verdict.tokens.into_iter());
                    (emitted, verdict.accepted, reason)
                }
            };
            emitted_total += emitted;
            self.settle(s, accepted, emitted, reason.is_some(), spec)?;
            finished.extend(reason.map(|r| (seq, r)));
        }
        Ok((finished, emitted_total))
    }

    /// Guesses for the step's decoding sequences that speculate, within the step's spare token budget.
    pub(super) fn propose<B: Backend>(
        &mut self,
        spec: &mut Speculator<B>,
        plan: &StepPlan,
    ) -> Result<HashMap<u64, Proposal>, String> {
        let decoding: std::collections::HashSet<u64> = plan
            .items
            .iter()
            .filter(|i| i.kind == ChunkKind::Decode)
            .map(|i| i.seq)
            .collect();
        let mut room = self.token_budget.saturating_sub(plan.tokens);
        let mut inputs: Vec<SpecInput<'_>> = Vec::new();
        for (&seq, a) in self.active.iter_mut() {
            let Some(k) = a.k else { continue };
            if !decoding.contains(&seq) || room == 0 {
                continue;
            }
            // Every emitted token must fit max_tokens: the guesses plus the target's own token.
            let left = a
                .request
                .params
                .max_tokens
                .saturating_sub(a.generated.len() + 1);
            let k = k.k.min(left).min(room);
            if k == 0 {
                continue;
            }
            room -= k;
            inputs.push(SpecInput {
                seq,
                prompt: &a.request.prompt,
                generated: &a.generated,
                k,
                params: &a.request.params,
                sampler: &mut a.draft_sampler,
            });
        }
        let seqs: Vec<u64> = inputs.iter().map(|i| i.seq).collect();
        let proposals = spec.propose(&mut inputs)?;
        Ok(seqs
            .into_iter()
            .zip(proposals)
            .filter(|(_, p)| !p.tokens.is_empty())
            .collect())
    }

    /// Streams `tokens` of `id` in order until one ends the request; returns how many were streamed and why it
    /// ended, if it did.
    fn emit_all(
        &mut self,
        id: u64,
        tokens: impl Iterator<Item = Sampled>,
    ) -> (usize, Option<FinishReason>) {
        let mut emitted = 0;
        for t in tokens {
            emitted += 1;
            if let Some(reason) = self.emit_sampled(id, t) {
                return (emitted, Some(reason));
            }
        }
        (emitted, None)
    }

    /// Book-keeping after a sequence's tokens were streamed: the target step is counted, and for a speculating
    /// decode the rejected guesses leave the cache (target and draft), the proposal length adapts, and the
    /// scheduler counts the extra tokens.
    fn settle<B: Backend>(
        &mut self,
        s: Sampling,
        accepted: usize,
        emitted: usize,
        finished: bool,
        spec: &mut Option<Speculator<B>>,
    ) -> Result<(), String> {
        let Some(a) = self.active.get_mut(&s.seq) else {
            return Ok(());
        };
        a.target_steps += 1;
        metrics::TARGET_STEPS.inc();
        let Some((proposal, start)) = s.proposal else {
            return Ok(());
        };
        let proposed = proposal.tokens.len();
        // A request that ends on an accepted guess keeps only the guesses before its end.
        let accepted = accepted.min(emitted);
        a.proposed += proposed;
        a.accepted += accepted;
        if let Some(k) = a.k.as_mut() {
            k.observe(proposed, accepted);
        }
        metrics::SPECULATIVE_PROPOSED.inc_by(proposed as u64);
        metrics::SPECULATIVE_ACCEPTED.inc_by(accepted as u64);
        if emitted > 1 {
            self.scheduler.add_generated(s.seq, emitted - 1);
        }
        if !finished {
            // The fed token and the accepted guesses stay; the target's own token is fed next step.
            let context_len = a.request.prompt.len() + a.generated.len() - emitted;
            self.cache
                .truncate(s.seq, start + emitted)
                .map_err(|e| e.to_string())?;
            if let Some(sp) = spec.as_mut() {
                sp.accept(s.seq, context_len + accepted);
            }
        }
        Ok(())
    }

    /// Samples the next token of `id` from `logits` and streams it; returns why the request ends, if it does.
    fn emit(&mut self, id: u64, logits: &mut [f32]) -> Option<FinishReason> {
        let a = self.active.get_mut(&id)?;
        let allowed = match (&a.request.constraint, &a.json) {
            (Some(c), Some(state)) => {
                let remaining = a
                    .request
                    .params
                    .max_tokens
                    .saturating_sub(a.generated.len());
                Some((c.clone(), c.allowed(state, remaining)))
            }
            _ => None,
        };
        let s = match &allowed {
            // Greedy with nothing else to report: the allowed argmax alone (no mask written, no softmax).
            Some((c, allowed)) if a.request.params.greedy_on_device() => Sampled {
                token: c.argmax(logits, allowed).unwrap_or(0),
                logprob: f32::NAN,
                top: Vec::new(),
            },
            _ => {
                if let Some((c, allowed)) = &allowed {
                    c.mask(logits, allowed);
                }
                let mut context = a.request.prompt.clone();
                context.extend_from_slice(&a.generated);
                a.sampler.sample(logits, &a.request.params, &context)
            }
        };
        if let (Some((c, _)), Some(state)) = (&allowed, &mut a.json) {
            // Only allowed tokens are chosen (submit checked the budget, so the set is never empty).
            if let Some(next) = c.advance(state, s.token) {
                *state = next;
            }
        }
        self.emit_sampled(id, s)
    }

    /// Streams the chosen token of `id`; returns why the request ends, if it does.
    fn emit_sampled(&mut self, id: u64, s: Sampled) -> Option<FinishReason> {
        let a = self.active.get_mut(&id)?;
        let params = &a.request.params;
        a.generated.push(s.token);
        metrics::TOKENS_GENERATED.inc();
        let now = Instant::now();
        match a.last_token {
            None => metrics::TIME_TO_FIRST_TOKEN.observe((now - a.arrived).as_secs_f64()),
            Some(t) => metrics::INTER_TOKEN_LATENCY.observe((now - t).as_secs_f64()),
        }
        a.last_token = Some(now);
        let json_done = match (&a.request.constraint, &a.json) {
            (Some(c), Some(state)) => c.is_complete(state),
            _ => false,
        };
        let stop_token = self.eos.contains(&s.token) || params.stop_token_ids.contains(&s.token);
        // Text of the new token: decode everything generated (stop tokens excluded) and emit what is new,
        // holding back an incomplete UTF-8 sequence.
        let mut text = String::new();
        let mut stop_string = false;
        if !stop_token {
            if let Ok(all) = self.tokenizer.decode(&a.generated, true) {
                if !all.ends_with('\u{FFFD}')
                    && all.len() >= a.decoded.len()
                    && all.starts_with(&a.decoded)
                {
                    let (out, stopped) = a.stops.push(&all[a.decoded.len()..]);
                    a.decoded = all;
                    text = out;
                    stop_string = stopped;
                }
            }
        }
        // Admission checked that prompt + max_tokens fits the context window.
        let at_limit = a.generated.len() >= params.max_tokens;
        let reason = if stop_token || stop_string || json_done {
            Some(FinishReason::Stop)
        } else if at_limit {
            Some(FinishReason::Length)
        } else {
            None
        };
        if reason == Some(FinishReason::Length) {
            text.push_str(&a.stops.flush());
        }
        let event = GenerationEvent::Token(TokenEvent {
            token: s.token,
            text,
            logprob: s.logprob,
            top_logprobs: s.top,
        });
        if a.events.send(event).is_err() {
            return Some(FinishReason::Stop);
        }
        reason
    }
}
