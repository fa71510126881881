//! What the engine loop holds for speculative decoding: the proposer, the switch, and the settings.

use std::collections::HashMap;

use super::draft::{DraftModel, DraftRequest};
use super::lookup::prompt_lookup;
use super::{AdaptiveK, Proposal, SpeculationMethod, SpeculationSwitch, SpeculativeConfig};
use crate::backend::Backend;
use crate::sampling::{Sampler, SamplingParams};

/// Where guesses come from.
pub enum Proposer<B: Backend> {
    /// Prompt lookup over each sequence's own context.
    Lookup,
    /// A draft model.
    Draft(Box<DraftModel<B>>),
    /// A benchmark oracle: for each prompt, the continuation a plain run produced; it guesses that continuation,
    /// so every guess of a greedy request is accepted and guessing costs nothing (the mechanism's upper bound).
    Replay(HashMap<Vec<u32>, Vec<u32>>),
}

/// One sequence asking for guesses.
pub struct SpecInput<'a> {
    /// The sequence.
    pub seq: u64,
    /// Its prompt.
    pub prompt: &'a [u32],
    /// Its output so far.
    pub generated: &'a [u32],
    /// Guesses wanted.
    pub k: usize,
    /// The request's sampling.
    pub params: &'a SamplingParams,
    /// The generator for the draft's draws.
    pub sampler: &'a mut Sampler,
}

/// Speculative decoding state of the engine loop.
pub struct Speculator<B: Backend> {
    config: SpeculativeConfig,
    switch: SpeculationSwitch,
    proposer: Proposer<B>,
    /// Benchmarks only: keep every guess of greedy on-device requests without checking it.
    force_accept: bool,
}

impl<B: Backend> Speculator<B> {
    /// The speculator `config` asks for (`None` when the method is `off`); `draft` must be given for the draft
    /// method.
    pub fn from_config(
        config: &SpeculativeConfig,
        draft: Option<DraftModel<B>>,
    ) -> Result<Option<Self>, String> {
        config
            .validate()
            .map_err(|(key, message)| format!("{key} {message}"))?;
        let proposer = match (config.method, draft) {
            (SpeculationMethod::Off, _) => return Ok(None),
            (SpeculationMethod::PromptLookup, _) => Proposer::Lookup,
            (SpeculationMethod::Draft, Some(d)) => Proposer::Draft(Box::new(d)),
            (SpeculationMethod::Draft, None) => {
                return Err("speculative decoding with a draft model needs the draft loaded".into())
            }
        };
        Ok(Some(Self::new(config.clone(), proposer)))
    }

    /// A speculator with an explicit proposer (benchmarks use [`Proposer::Replay`]).
    pub fn new(config: SpeculativeConfig, proposer: Proposer<B>) -> Self {
        Self {
            switch: SpeculationSwitch::new(config.adaptive, config.probe_interval),
            config,
            proposer,
            force_accept: false,
        }
    }

    /// For benchmarks only: every guess of a greedy on-device request is kept without being checked (the target's
    /// own token after them still comes from the pass), so a step costs what it would with a free proposer that
    /// always agrees: the upper bound of the mechanism. The output is then no longer the target's.
    pub fn forcing_acceptance(mut self) -> Self {
        self.force_accept = true;
        self
    }

    /// Whether guesses are kept unchecked ([`Speculator::forcing_acceptance`]).
    pub fn forces_acceptance(&self) -> bool {
        self.force_accept
    }

    /// A new sequence's proposal length.
    pub fn initial_k(&self) -> AdaptiveK {
        AdaptiveK::new(self.config.k, self.config.max_k, self.config.adaptive)
    }

    /// Whether this decode step speculates.
    pub fn choose(&mut self) -> bool {
        self.switch.choose()
    }

    /// Records a decode-only step for the switch.
    pub fn observe(&mut self, speculated: bool, tokens: usize, secs: f64) {
        self.switch.observe(speculated, tokens, secs);
    }

    /// Whether speculating is currently the faster mode.
    pub fn favours_speculation(&self) -> bool {
        self.switch.favours_speculation()
    }

    /// Guesses for each input, in order (possibly empty).
    pub fn propose(&mut self, inputs: &mut [SpecInput<'_>]) -> Result<Vec<Proposal>, String> {
        let (min_n, max_n) = (self.config.min_ngram, self.config.max_ngram);
        match &mut self.proposer {
            Proposer::Lookup => Ok(inputs
                .iter()
                .map(|i| {
                    let context: Vec<u32> = i.prompt.iter().chain(i.generated).copied().collect();
                    Proposal {
                        tokens: prompt_lookup(&context, i.k, min_n, max_n),
                        q: None,
                    }
                })
                .collect()),
            Proposer::Replay(known) => Ok(inputs
                .iter()
                .map(|i| Proposal {
                    tokens: known
                        .get(i.prompt)
                        .map(|c| {
                            let from = i.generated.len().min(c.len());
                            c[from..(from + i.k).min(c.len())].to_vec()
                        })
                        .unwrap_or_default(),
                    q: None,
                })
                .collect()),
            Proposer::Draft(draft) => {
                let contexts: Vec<Vec<u32>> = inputs
                    .iter()
                    .map(|i| i.prompt.iter().chain(i.generated).copied().collect())
                    .collect();
                let mut requests: Vec<DraftRequest<'_>> = inputs
                    .iter_mut()
                    .zip(&contexts)
                    .map(|(i, context)| DraftRequest {
                        seq: i.seq,
                        context,
                        k: i.k,
                        params: i.params,
                        sampler: &mut *i.sampler,
                    })
                    .collect();
                draft
                    .propose(&mut requests)
                    .map_err(|e| format!("draft model: {e}"))
            }
        }
    }

    /// After verification: the first `valid` tokens of the sequence's context plus guesses are kept.
    pub fn accept(&mut self, seq: u64, valid: usize) {
        if let Proposer::Draft(d) = &mut self.proposer {
            d.accept(seq, valid);
        }
    }

    /// Forgets a finished or cancelled sequence.
    pub fn release(&mut self, seq: u64) {
        if let Proposer::Draft(d) = &mut self.proposer {
            d.release(seq);
        }
    }
}
