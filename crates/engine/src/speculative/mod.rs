//! Lossless speculative decoding: a cheap proposer guesses the next `k` tokens of a sequence, the target model
//! scores all of them in one forward pass (the guesses are one more chunk of the step's packed batch, with logits
//! for every row), and the longest prefix the target agrees with is kept, plus one token of the target's own.
//!
//! - Proposers: prompt lookup ([`lookup`]: n-gram matches against the prompt and the output so far, free to run)
//!   and a draft model ([`draft`]: any smaller model with the same tokenizer).
//! - Verification ([`verify`]): greedy requests keep a guess when it is the target's argmax, so the output is the
//!   one plain decoding gives; sampled requests use rejection sampling (accept guess `x` with probability
//!   `min(1, p(x) / q(x))`, else draw from the normalised `max(0, p − q)`), so the output distribution is the
//!   target's (Leviathan et al., Chen et al. 2023). A deterministic proposer's `q` is one-hot.
//! - Adaptation ([`AdaptiveK`], [`SpeculationSwitch`]): each sequence's `k` grows while its guesses are all
//!   accepted and shrinks when one is rejected, and the engine measures tokens per second with and without
//!   speculation and keeps whichever pays, probing the other now and then.

pub mod draft;
pub mod lookup;
pub mod speculator;

use super::sampling::{
    argmax, describe_token, prepare_logits, token_distribution, Sampled, Sampler, SamplingParams,
};
use serde::{Deserialize, Serialize};

/// Which proposer speculative decoding uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeculationMethod {
    /// No speculation.
    #[default]
    Off,
    /// n-gram matches against the prompt and the output so far.
    PromptLookup,
    /// A smaller model with the same tokenizer (`draft_model`).
    Draft,
}

/// How a draft model's dense (safetensors) weights are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftWeights {
    /// 8-bit (Q8_0) on the CPU, where a small draft's step is bound by reading its weights (its vocabulary-wide
    /// head above all); as stored on a GPU, whose backend runs dense weights only.
    #[default]
    Auto,
    /// As the files hold them (upcast to f32).
    AsStored,
    /// Q8_0 blocks (CPU backend only).
    Q8_0,
}

impl DraftWeights {
    /// Whether a draft loaded on the backend called `backend_name` gets its dense matrices quantized.
    pub fn quantize_on(self, backend_name: &str) -> bool {
        match self {
            Self::Auto => backend_name == "cpu",
            Self::AsStored => false,
            Self::Q8_0 => true,
        }
    }
}

/// Speculative decoding settings (`[engine.speculative]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeculativeConfig {
    /// The proposer.
    pub method: SpeculationMethod,
    /// The draft model for `method = "draft"`: `synthetic:NAME[@SEED]` or a Hugging Face directory with the
    /// target's tokenizer.
    pub draft_model: Option<String>,
    /// Tokens proposed per step at the start of a sequence.
    pub k: usize,
    /// Most tokens proposed per step.
    pub max_k: usize,
    /// Longest n-gram prompt lookup matches.
    pub max_ngram: usize,
    /// Shortest n-gram prompt lookup matches.
    pub min_ngram: usize,
    /// Whether `k` adapts per sequence and speculation switches itself off when it does not pay.
    pub adaptive: bool,
    /// With `adaptive`, the losing mode (speculating or not) is retried once every this many decode steps.
    pub probe_interval: usize,
    /// Memory for the draft model's KV cache, MiB.
    pub draft_kv_cache_mib: usize,
    /// How the draft's dense weights are held.
    pub draft_weights: DraftWeights,
}

impl Default for SpeculativeConfig {
    fn default() -> Self {
        Self {
            method: SpeculationMethod::Off,
            draft_model: None,
            k: 4,
            max_k: 8,
            max_ngram: 3,
            min_ngram: 1,
            adaptive: true,
            probe_interval: 32,
            draft_kv_cache_mib: 256,
            draft_weights: DraftWeights::Auto,
        }
    }
}

impl SpeculativeConfig {
    /// Checks the settings: the offending key (`engine.speculative.…`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.method == SpeculationMethod::Draft && self.draft_model.is_none() {
            return Err((
                "engine.speculative.draft_model",
                "is required when method = \"draft\" (synthetic:NAME or a model directory)".into(),
            ));
        }
        for (key, v, lo, hi) in [
            ("engine.speculative.max_k", self.max_k, 1, 32),
            ("engine.speculative.k", self.k, 1, self.max_k),
            ("engine.speculative.max_ngram", self.max_ngram, 1, 16),
            (
                "engine.speculative.min_ngram",
                self.min_ngram,
                1,
                self.max_ngram,
            ),
            (
                "engine.speculative.probe_interval",
                self.probe_interval,
                2,
                1 << 16,
            ),
            (
                "engine.speculative.draft_kv_cache_mib",
                self.draft_kv_cache_mib,
                1,
                1 << 20,
            ),
        ] {
            if v < lo || v > hi {
                return Err((key, format!("must be between {lo} and {hi}, got {v}")));
            }
        }
        Ok(())
    }
}

/// Guessed tokens for one sequence, with the proposer's distribution at each (`None`: deterministic guesses,
/// each one-hot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// The guesses, in order.
    pub tokens: Vec<u32>,
    /// `q[i]` over the vocabulary, for `tokens[i]`.
    pub q: Option<Vec<Vec<f64>>>,
}

/// What verifying a proposal decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Tokens to emit, in order: the accepted guesses, then the target's own token.
    pub tokens: Vec<Sampled>,
    /// How many guesses were accepted.
    pub accepted: usize,
}

/// Verifies `proposal` against the target's logits: `rows[i]` (rewritten in place) is the target's next-token
/// logits after the context plus the first `i` guesses, so there is one more row than guesses. `context` (the
/// prompt and the output so far) gets each emitted token appended, for the repetition penalty.
pub fn verify(
    rows: &mut [Vec<f32>],
    proposal: &Proposal,
    params: &SamplingParams,
    context: &mut Vec<u32>,
    sampler: &mut Sampler,
) -> Verdict {
    assert_eq!(
        rows.len(),
        proposal.tokens.len() + 1,
        "one row per guess, plus one"
    );
    let mut verdict = Verdict {
        tokens: Vec::with_capacity(rows.len()),
        accepted: 0,
    };
    for (i, row) in rows.iter_mut().enumerate() {
        let guess = proposal.tokens.get(i).copied();
        let (token, keep) = match guess {
            Some(x) if params.is_greedy() => {
                prepare_logits(row, params, context);
                let best = argmax(row) as u32;
                (best, best == x)
            }
            Some(x) => {
                prepare_logits(row, params, context);
                let p = token_distribution(row, params);
                let q = proposal.q.as_ref().map(|q| q[i].as_slice());
                let qx = q.map_or(1.0, |q| q[x as usize]);
                let px = p[x as usize];
                if qx <= 0.0 || sampler.draw() * qx < px {
                    (x, true)
                } else {
                    let residual: Vec<f64> = match q {
                        Some(q) => p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect(),
                        None => {
                            let mut r = p.clone();
                            r[x as usize] = 0.0;
                            r
                        }
                    };
                    let weights = if residual.iter().sum::<f64>() > 0.0 {
                        &residual
                    } else {
                        &p
                    };
                    (sampler.sample_weights(weights) as u32, false)
                }
            }
            None => {
                let s = sampler.sample(row, params, context);
                (s.token, false)
            }
        };
        verdict.tokens.push(describe_token(row, token, params));
        context.push(token);
        if !keep {
            break;
        }
        verdict.accepted += 1;
    }
    verdict
}

/// Greedy verification from the target's argmax per row (picked on the device): the accepted guesses and the
/// target's token after them.
pub fn verify_argmax(guesses: &[u32], argmax: &[u32]) -> (Vec<u32>, usize) {
    let accepted = guesses
        .iter()
        .zip(argmax)
        .take_while(|(g, a)| g == a)
        .count();
    let mut tokens = guesses[..accepted].to_vec();
    tokens.push(argmax[accepted]);
    (tokens, accepted)
}

/// One sequence's proposal length: grows by 2 after a step whose guesses were all accepted and shrinks by 1
/// after a rejection (the heuristic of Hugging Face's assisted generation), within `1..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveK {
    /// The current length.
    pub k: usize,
    max: usize,
    adaptive: bool,
}

impl AdaptiveK {
    /// Starts at `k` (fixed when not `adaptive`).
    pub fn new(k: usize, max: usize, adaptive: bool) -> Self {
        Self {
            k: k.clamp(1, max.max(1)),
            max: max.max(1),
            adaptive,
        }
    }

    /// Records a verified step of `proposed` guesses, `accepted` of them kept.
    pub fn observe(&mut self, proposed: usize, accepted: usize) {
        if !self.adaptive || proposed == 0 {
            return;
        }
        self.k = if accepted == proposed {
            (self.k + 2).min(self.max)
        } else {
            self.k.saturating_sub(1).max(1)
        };
    }
}

/// The engine-wide switch: the decode rate (tokens emitted per second of step) is tracked for steps that
/// speculated and steps that did not, and the faster mode is used; the other is retried once every
/// `probe_interval` decode steps, so the switch follows changes in acceptance. While speculation keeps losing,
/// the interval between its retries doubles, up to 8 times `probe_interval`. Without `adaptive` it always
/// speculates.
#[derive(Debug, Clone)]
pub struct SpeculationSwitch {
    adaptive: bool,
    probe_interval: usize,
    /// The current interval between retries of the losing mode.
    interval: usize,
    /// Exponential moving averages of tokens per second: [plain, speculative].
    rate: [Option<f64>; 2],
    since_probe: usize,
}

/// Weight of the newest step in the rate averages.
const RATE_SMOOTHING: f64 = 0.25;

impl SpeculationSwitch {
    /// A switch that first tries speculating.
    pub fn new(adaptive: bool, probe_interval: usize) -> Self {
        Self {
            adaptive,
            probe_interval: probe_interval.max(2),
            interval: probe_interval.max(2),
            rate: [None, None],
            since_probe: 0,
        }
    }

    /// Whether the next decode step speculates.
    pub fn choose(&mut self) -> bool {
        if !self.adaptive {
            return true;
        }
        let (plain, spec) = match self.rate {
            [_, None] => return true,
            [None, Some(_)] => return false,
            [Some(p), Some(s)] => (p, s),
        };
        let best = spec >= plain;
        self.since_probe += 1;
        if self.since_probe >= self.interval {
            self.since_probe = 0;
            return !best;
        }
        best
    }

    /// Records a decode-only step: whether it speculated, tokens emitted, seconds taken.
    pub fn observe(&mut self, speculated: bool, tokens: usize, secs: f64) {
        if secs <= 0.0 || tokens == 0 {
            return;
        }
        let r = tokens as f64 / secs;
        let slot = &mut self.rate[speculated as usize];
        *slot = Some(match *slot {
            None => r,
            Some(old) => old + RATE_SMOOTHING * (r - old),
        });
        if speculated {
            self.interval = if self.favours_speculation() {
                self.probe_interval
            } else {
                (self.interval * 2).min(self.probe_interval * 8)
            };
        }
    }

    /// Whether speculation is currently the faster mode (or not yet measured).
    pub fn favours_speculation(&self) -> bool {
        match self.rate {
            [Some(p), Some(s)] => s >= p,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    /// Logits whose softmax is `p`.
    fn logits_of(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    #[test]
    fn draft_weights_parse_and_apply_per_backend() {
        let c: SpeculativeConfig = serde_json::from_str(r#"{"draft_weights":"q8_0"}"#).unwrap();
        assert_eq!(c.draft_weights, DraftWeights::Q8_0);
        assert!(DraftWeights::Auto.quantize_on("cpu") && !DraftWeights::Auto.quantize_on("cuda"));
        assert!(!DraftWeights::AsStored.quantize_on("cpu"));
        assert!(serde_json::from_str::<SpeculativeConfig>(r#"{"draft_weights":"int4"}"#).is_err());
    }

    #[test]
    fn greedy_keeps_guesses_while_they_are_the_argmax() {
        let row = |best: usize| {
            let mut r = vec![0.0f32; 6];
            r[best] = 5.0;
            r
        };
        let proposal = Proposal {
            tokens: vec![2, 4, 1],
            q: None,
        };
        let mut rows = vec![row(2), row(4), row(3), row(5)];
        let mut context = vec![0];
        let v = verify(
            &mut rows,
            &proposal,
            &params(0.0),
            &mut context,
            &mut Sampler::new(1),
        );
        assert_eq!(v.accepted, 2);
        let tokens: Vec<u32> = v.tokens.iter().map(|s| s.token).collect();
        assert_eq!(tokens, vec![2, 4, 3]);
        assert_eq!(context, vec![0, 2, 4, 3]);
        // All accepted: the bonus token comes from the last row.
        let mut rows = vec![row(2), row(4), row(1), row(5)];
        let v = verify(
            &mut rows,
            &proposal,
            &params(0.0),
            &mut vec![0],
            &mut Sampler::new(1),
        );
        assert_eq!(v.accepted, 3);
        assert_eq!(v.tokens.last().unwrap().token, 5);
        assert_eq!(verify_argmax(&[2, 4, 1], &[2, 4, 3, 5]), (vec![2, 4, 3], 2));
        assert_eq!(verify_argmax(&[2, 4], &[2, 4, 5]), (vec![2, 4, 5], 2));
        assert_eq!(verify_argmax(&[], &[7]), (vec![7], 0));
    }

    /// Chi-square statistic of `counts` against `p` (cells with p = 0 must be empty).
    fn chi_square(counts: &[usize], p: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .map(|(&c, &pi)| {
                if pi == 0.0 {
                    assert_eq!(c, 0, "a token the target never picks was emitted");
                    0.0
                } else {
                    let e = pi * n as f64;
                    (c as f64 - e).powi(2) / e
                }
            })
            .sum()
    }

    #[test]
    fn rejection_sampling_keeps_the_target_distribution() {
        // Target p and a quite different draft q over 6 tokens; the guess is drawn from q as a draft would.
        let p = [0.05, 0.30, 0.10, 0.25, 0.20, 0.10];
        let q = [0.40, 0.05, 0.25, 0.05, 0.05, 0.20];
        let trials = 60_000;
        let mut first = vec![0usize; 6];
        let mut second = vec![0usize; 6];
        let mut draws = Sampler::new(99);
        let mut sampler = Sampler::new(7);
        let mut first_accepted = 0usize;
        for _ in 0..trials {
            let g1 = draws.sample_weights(&q) as u32;
            let g2 = draws.sample_weights(&q) as u32;
            let proposal = Proposal {
                tokens: vec![g1, g2],
                q: Some(vec![q.to_vec(), q.to_vec()]),
            };
            let mut rows = vec![logits_of(&p), logits_of(&p), logits_of(&p)];
            let v = verify(
                &mut rows,
                &proposal,
                &params(1.0),
                &mut vec![],
                &mut sampler,
            );
            first[v.tokens[0].token as usize] += 1;
            if let Some(t) = v.tokens.get(1) {
                second[t.token as usize] += 1;
            }
            first_accepted += (v.accepted >= 1) as usize;
        }
        // 5 degrees of freedom: the 0.999 quantile is 20.5.
        assert!(chi_square(&first, &p) < 20.5, "{first:?}");
        assert!(chi_square(&second, &p) < 20.5, "{second:?}");
        // The first guess is accepted with probability Σ min(p, q) = 0.40.
        let rate = first_accepted as f64 / trials as f64;
        assert!((rate - 0.40).abs() < 0.01, "{rate}");
    }

    #[test]
    fn one_hot_guesses_are_accepted_with_the_target_probability() {
        // Prompt lookup's guesses are deterministic: q is one-hot on the guess.
        let p = [0.5, 0.2, 0.2, 0.1];
        let trials = 40_000;
        let mut counts = vec![0usize; 4];
        let mut accepted = 0usize;
        let mut sampler = Sampler::new(3);
        for _ in 0..trials {
            let proposal = Proposal {
                tokens: vec![1],
                q: None,
            };
            let mut rows = vec![logits_of(&p), logits_of(&p)];
            let v = verify(
                &mut rows,
                &proposal,
                &params(1.0),
                &mut vec![],
                &mut sampler,
            );
            counts[v.tokens[0].token as usize] += 1;
            accepted += v.accepted;
        }
        assert!(chi_square(&counts, &p) < 16.3, "{counts:?}"); // 3 dof, 0.999
        let rate = accepted as f64 / trials as f64;
        assert!((rate - 0.2).abs() < 0.01, "{rate}");
    }

    #[test]
    fn truncation_is_respected_by_rejection_sampling() {
        // top_k = 2 leaves tokens 0 and 1; a guess outside them is always rejected.
        let p = [0.5, 0.3, 0.2];
        let params = SamplingParams {
            top_k: Some(2),
            ..params(1.0)
        };
        let mut sampler = Sampler::new(5);
        let mut counts = vec![0usize; 3];
        for _ in 0..20_000 {
            let proposal = Proposal {
                tokens: vec![2],
                q: None,
            };
            let mut rows = vec![logits_of(&p), logits_of(&p)];
            let v = verify(&mut rows, &proposal, &params, &mut vec![], &mut sampler);
            assert_eq!(v.accepted, 0);
            counts[v.tokens[0].token as usize] += 1;
        }
        assert!(chi_square(&counts, &[0.625, 0.375, 0.0]) < 10.8); // 1 dof, 0.999
    }

    #[test]
    fn adaptive_k_grows_on_full_acceptance_and_shrinks_on_rejection() {
        let mut k = AdaptiveK::new(4, 8, true);
        k.observe(4, 4);
        assert_eq!(k.k, 6);
        k.observe(6, 6);
        assert_eq!(k.k, 8);
        k.observe(8, 8);
        assert_eq!(k.k, 8);
        for _ in 0..10 {
            k.observe(8, 0);
        }
        assert_eq!(k.k, 1);
        let mut fixed = AdaptiveK::new(4, 8, false);
        fixed.observe(4, 0);
        assert_eq!(fixed.k, 4);
    }

    #[test]
    fn the_switch_keeps_the_faster_mode_and_probes_the_other() {
        let mut s = SpeculationSwitch::new(true, 4);
        assert!(s.choose(), "speculation is tried first");
        s.observe(true, 10, 1.0);
        assert!(!s.choose(), "then plain decoding is measured");
        s.observe(false, 40, 1.0);
        // Plain is faster: mostly plain, speculation once every 4 steps.
        let picks: Vec<bool> = (0..8).map(|_| s.choose()).collect();
        assert_eq!(picks.iter().filter(|&&b| b).count(), 2, "{picks:?}");
        assert!(!s.favours_speculation());
        // Each losing retry doubles the wait for the next: 4, 8, 16, then 32 (the cap, 8 x 4).
        let mut gaps = Vec::new();
        let mut since = 0;
        for _ in 0..200 {
            since += 1;
            if s.choose() {
                s.observe(true, 10, 1.0);
                gaps.push(since);
                since = 0;
            } else {
                s.observe(false, 40, 1.0);
            }
        }
        assert_eq!(&gaps[..5], &[4, 8, 16, 32, 32], "{gaps:?}");
        // Speculation becomes faster: the switch moves over.
        for _ in 0..20 {
            s.observe(true, 200, 1.0);
        }
        assert!(s.favours_speculation());
        let picks: Vec<bool> = (0..8).map(|_| s.choose()).collect();
        assert_eq!(picks.iter().filter(|&&b| !b).count(), 2, "{picks:?}");
        // Not adaptive: always on.
        let mut on = SpeculationSwitch::new(false, 4);
        on.observe(true, 1, 100.0);
        on.observe(false, 100, 1.0);
        assert!((0..10).all(|_| on.choose()));
    }

    #[test]
    fn config_validation_names_the_key() {
        assert!(SpeculativeConfig::default().validate().is_ok());
        let draft = SpeculativeConfig {
            method: SpeculationMethod::Draft,
            ..SpeculativeConfig::default()
        };
        assert_eq!(
            draft.validate().unwrap_err().0,
            "engine.speculative.draft_model"
        );
        let k = SpeculativeConfig {
            k: 9,
            ..SpeculativeConfig::default()
        };
        assert_eq!(k.validate().unwrap_err().0, "engine.speculative.k");
    }
}
