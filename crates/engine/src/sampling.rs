//! Sampling: request parameters and their validation, a seeded sampler (repetition penalty, temperature, top-k,
//! top-p), and stop-string matching over incrementally decoded text.
//!
//! Order of operations, as in Hugging Face `generate`: repetition penalty, temperature, then top-k and top-p
//! truncation (top-p measured on the distribution left after top-k). The reported log-probabilities are those of
//! the distribution after the penalty and temperature but before truncation, as OpenAI-style `logprobs`; with
//! temperature 0 (greedy) they use temperature 1.

/// Most alternatives `logprobs` may ask for.
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 4;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature in `[0, 2]`; 0 is greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`k >= 1`; 1 is greedy).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`, in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Seed of the request's sampler (the engine picks one when absent).
    pub seed: Option<u64>,
    /// Hugging Face repetition penalty in `(0, 2]`: logits of tokens already in the context are divided by it when
    /// positive and multiplied by it otherwise.
    pub repetition_penalty: Option<f32>,
    /// Most tokens to generate (at least 1, at most the context window).
    pub max_tokens: usize,
    /// Tokens that end generation (besides the model's end-of-sequence tokens).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the text is cut before them. Up to 4, none empty.
    pub stop_strings: Vec<String>,
    /// How many most likely alternatives to report with each token, `0..=20`.
    pub logprobs: Option<usize>,
}

impl SamplingParams {
    /// Whether the token is the plain argmax of the logits with nothing else to report (greedy, no repetition
    /// penalty, no logprobs), so a backend can pick it on the device ([`crate::backend::Backend::select_tokens`]).
    pub fn greedy_on_device(&self) -> bool {
        self.is_greedy()
            && self.logprobs.is_none()
            && self.repetition_penalty.is_none_or(|r| r == 1.0)
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: None,
            repetition_penalty: None,
            max_tokens: 256,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            logprobs: None,
        }
    }
}

/// A sampling parameter out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplingError {
    /// The named parameter (its OpenAI-style request name) is invalid.
    #[error("invalid `{param}`: {message}")]
    Invalid {
        /// The parameter.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(param: &'static str, message: impl Into<String>) -> Result<(), SamplingError> {
    Err(SamplingError::Invalid {
        param,
        message: message.into(),
    })
}

impl SamplingParams {
    /// Checks every parameter against its range, for a model of `vocab` tokens and a context of `max_context`.
    pub fn validate(&self, vocab: usize, max_context: usize) -> Result<(), SamplingError> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return invalid("temperature", "must be between 0 and 2");
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "must be at least 1");
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return invalid("top_p", "must be greater than 0 and at most 1");
        }
        if self
            .repetition_penalty
            .is_some_and(|r| !(r > 0.0 && r <= 2.0))
        {
            return invalid("repetition_penalty", "must be greater than 0 and at most 2");
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1");
        }
        if self.max_tokens > max_context {
            return invalid(
                "max_tokens",
                format!("must be at most the context window, {max_context}"),
            );
        }
        if self.logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return invalid("logprobs", format!("must be at most {MAX_LOGPROBS}"));
        }
        if let Some(t) = self.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return invalid(
                "stop_token_ids",
                format!("token {t} is outside the vocabulary of {vocab}"),
            );
        }
        if self.stop_strings.len() > MAX_STOP_STRINGS {
            return invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings"));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return invalid("stop", "stop strings must not be empty");
        }
        Ok(())
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: u32,
    /// Its log-probability (after penalty and temperature, before truncation).
    pub logprob: f32,
    /// The `logprobs` most likely tokens and their log-probabilities, most likely first (lowest id on ties).
    pub top: Vec<(u32, f32)>,
}

/// A seeded token sampler (SplitMix64): the same seed, logits and parameters give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    state: u64,
}

impl Sampler {
    /// A sampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` (one per vocabulary entry, not empty), given the context tokens
    /// `previous` for the repetition penalty. `logits` is rewritten in place by [`prepare_logits`].
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        previous: &[u32],
    ) -> Sampled {
        prepare_logits(logits, params, previous);
        let token = if params.is_greedy() {
            argmax(logits)
        } else {
            let kept = candidates(logits, params.top_k, params.top_p);
            let total: f64 = kept.iter().map(|c| c.1).sum();
            let mut u = self.uniform() * total;
            let mut token = kept[0].0;
            for &(i, w) in kept.iter().filter(|c| c.1 > 0.0) {
                token = i;
                if u < w {
                    break;
                }
                u -= w;
            }
            token
        };
        describe_token(logits, token as u32, params)
    }

    /// Draws an index from `weights` (non-negative, not all zero; unnormalised).
    pub fn sample_weights(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut u = self.uniform() * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate().filter(|(_, &w)| w > 0.0) {
            last = i;
            if u < w {
                return i;
            }
            u -= w;
        }
        last
    }

    /// A uniform draw in `[0, 1)` from the request's stream (speculative decoding's acceptance test).
    pub fn draw(&mut self) -> f64 {
        self.uniform()
    }
}

impl SamplingParams {
    /// Whether tokens are the argmax (temperature 0 or `top_k` 1).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }
}

/// What [`Sampler::sample`] does to logits before choosing: the repetition penalty over `previous`, division by
/// the temperature (1 when greedy), NaN made `-inf` and `+inf` the largest finite value.
pub fn prepare_logits(logits: &mut [f32], params: &SamplingParams, previous: &[u32]) {
    assert!(!logits.is_empty(), "no logits to sample from");
    if let Some(penalty) = params.repetition_penalty.filter(|&r| r != 1.0) {
        apply_repetition_penalty(logits, previous, penalty);
    }
    let temperature = if params.temperature > 0.0 {
        params.temperature
    } else {
        1.0
    };
    for l in logits.iter_mut() {
        *l /= temperature;
        if l.is_nan() {
            *l = f32::NEG_INFINITY;
        } else if *l == f32::INFINITY {
            *l = f32::MAX;
        }
    }
}

/// The distribution [`Sampler::sample`] draws from, over the whole vocabulary (0 outside top-k/top-p), summing
/// to 1; one-hot on the argmax when greedy. `logits` must have been through [`prepare_logits`].
pub fn token_distribution(logits: &[f32], params: &SamplingParams) -> Vec<f64> {
    let mut p = vec![0.0; logits.len()];
    if params.is_greedy() {
        p[argmax(logits)] = 1.0;
        return p;
    }
    let kept = candidates(logits, params.top_k, params.top_p);
    let total: f64 = kept.iter().map(|c| c.1).sum();
    for (i, w) in kept {
        p[i] = w / total;
    }
    p
}

/// `token`'s report: its log-probability and the `params.logprobs` most likely alternatives, from logits that
/// have been through [`prepare_logits`].
pub fn describe_token(logits: &[f32], token: u32, params: &SamplingParams) -> Sampled {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    // All -inf: every log-probability is -inf.
    let lse = if max == f64::NEG_INFINITY {
        f64::INFINITY
    } else {
        max + sum.ln()
    };
    let logprob = |i: usize| (logits[i] as f64 - lse) as f32;
    let top = top_n(logits, params.logprobs.unwrap_or(0))
        .into_iter()
        .map(|i| (i as u32, logprob(i)))
        .collect();
    Sampled {
        token,
        logprob: logprob(token as usize),
        top,
    }
}

/// Hugging Face repetition penalty, once per distinct context token inside the vocabulary.
fn apply_repetition_penalty(logits: &mut [f32], previous: &[u32], penalty: f32) {
    let mut seen = previous.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for t in seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit, lowest index on ties.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Orders indices by logit, largest first, lowest index on ties.
fn by_logit(logits: &[f32]) -> impl Fn(&usize, &usize) -> std::cmp::Ordering + '_ {
    |&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
}

/// The `n` most likely indices, most likely first.
fn top_n(logits: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, by_logit(logits));
        idx.truncate(n);
    }
    idx.sort_unstable_by(by_logit(logits));
    idx
}

/// Tokens left after top-k and top-p, with unnormalised weights `exp(logit - max)`. Without truncation they are
/// all tokens in index order; otherwise the most likely first. Never empty.
fn candidates(logits: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<(usize, f64)> {
    let top_p = top_p.filter(|&p| p < 1.0);
    let k = top_k.unwrap_or(usize::MAX).clamp(1, logits.len());
    let order: Vec<usize> = if k == logits.len() && top_p.is_none() {
        (0..logits.len()).collect()
    } else {
        top_n(logits, k)
    };
    let max = order
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        // Every logit is -inf: fall back to the first token.
        return vec![(order[0], 1.0)];
    }
    let mut kept: Vec<(usize, f64)> = order
        .into_iter()
        .map(|i| (i, (logits[i] as f64 - max).exp()))
        .collect();
    if let Some(p) = top_p {
        let target = p as f64 * kept.iter().map(|c| c.1).sum::<f64>();
        let mut cum = 0.0;
        let keep = kept
            .iter()
            .position(|c| {
                cum += c.1;
                cum >= target
            })
            .map_or(kept.len(), |i| i + 1);
        kept.truncate(keep);
    }
    kept
}

/// Finds stop strings in text that arrives in pieces, holding back any tail that could start one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds decoded text; returns the text now safe to emit and whether a stop string was reached. On a stop the
    /// text is cut just before the stop string that ends first (the longest one ending there), and everything
    /// after is dropped, now and later. The result does not depend on how the text is split into pieces.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        // The stop string that ends first (the longest of those ending there), as in a token-by-token scan.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|p| (p + s.len(), p)));
        if let Some((_, pos)) = hit.min() {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.stopped = true;
            return (out, true);
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let from = self.held.len() - self.held.len().min(longest.saturating_sub(1));
        let keep = (from..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }

    /// Text held back, at the end of generation without a stop (empty after a stop).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop string was reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Default parameters changed by `f`.
    fn with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_on_device_only_without_anything_else_to_compute() {
        assert!(with(|p| p.temperature = 0.0).greedy_on_device());
        assert!(with(|p| p.top_k = Some(1)).greedy_on_device());
        assert!(with(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = Some(1.0);
        })
        .greedy_on_device());
        assert!(!with(|_| {}).greedy_on_device());
        assert!(!with(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(0);
        })
        .greedy_on_device());
        assert!(!with(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = Some(1.2);
        })
        .greedy_on_device());
    }

    #[test]
    fn greedy_sampling_equals_backend_token_selection() {
        // The runner takes either path for greedy requests; they must pick the same token, ties, NaN and
        // infinities included.
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = crate::backend::mix64(state);
            state
        };
        let params = with(|p| p.temperature = 0.0);
        for trial in 0..200 {
            let n = 1 + (next() % 300) as usize;
            let mut logits: Vec<f32> = (0..n).map(|_| ((next() % 7) as f32) - 3.0).collect();
            if trial % 3 == 0 {
                logits[(next() % n as u64) as usize] = f32::NAN;
            }
            if trial % 5 == 0 {
                logits[(next() % n as u64) as usize] = f32::INFINITY;
            }
            let on_device = crate::backend::select_row(&logits, 0, 0.0, 0);
            let sampled = Sampler::new(trial).sample(&mut logits.clone(), &params, &[]);
            assert_eq!(sampled.token, on_device, "trial {trial}: {logits:?}");
        }
    }

    fn temp(t: f32) -> SamplingParams {
        with(|p| p.temperature = t)
    }

    /// Samples a copy of `logits` with a fresh sampler.
    fn draw(seed: u64, logits: &[f32], params: &SamplingParams) -> Sampled {
        Sampler::new(seed).sample(&mut logits.to_vec(), params, &[])
    }

    fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
        let e: Vec<f64> = logits
            .iter()
            .map(|&l| (l as f64 / t as f64).exp())
            .collect();
        e.iter().map(|x| x / e.iter().sum::<f64>()).collect()
    }

    /// Chi-square statistic of `counts` against probabilities `p`.
    fn chi_square(counts: &[usize], p: &[f64]) -> f64 {
        let n = counts.iter().sum::<usize>() as f64;
        let terms = counts
            .iter()
            .zip(p)
            .map(|(&c, &q)| (c as f64 - n * q).powi(2) / (n * q));
        terms.sum()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let out = draw(1, &[1.0, 3.0, 3.0, 2.0], &temp(0.0));
        assert_eq!(out.token, 1);
        let p = softmax(&[1.0, 3.0, 3.0, 2.0], 1.0);
        assert!((out.logprob as f64 - p[1].ln()).abs() < 1e-6);
        assert!(out.top.is_empty());
    }

    #[test]
    fn low_temperature_and_top_k_one_equal_greedy() {
        let mut r = Sampler::new(3);
        for case in 0..200u64 {
            // Distinct logits, 0.1 apart, shuffled.
            let n = 2 + case as usize % 50;
            let mut logits: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 2.0).collect();
            for i in (1..n).rev() {
                logits.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
            }
            let want = argmax(&logits) as u32;
            assert_eq!(draw(case, &logits, &temp(0.002)).token, want);
            let top1 = with(|p| (p.top_k, p.temperature) = (Some(1), 1.7));
            assert_eq!(draw(case, &logits, &top1).token, want);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let logits: Vec<f32> = [0.15f32, 0.5, 0.05, 0.3].iter().map(|p| p.ln()).collect();
        let kept = |k: Option<usize>, p: Option<f32>| -> Vec<usize> {
            candidates(&logits, k, p).into_iter().map(|c| c.0).collect()
        };
        assert_eq!(kept(None, Some(0.45)), vec![1]);
        assert_eq!(kept(None, Some(0.75)), vec![1, 3]);
        assert_eq!(kept(None, Some(0.81)), vec![1, 3, 0]);
        assert_eq!(kept(None, Some(0.96)), vec![1, 3, 0, 2]);
        assert_eq!(kept(None, Some(1.0)), vec![0, 1, 2, 3]);
        assert_eq!(kept(Some(2), None), vec![1, 3]);
        // top-p applies to what top-k left: 0.5 / 0.8 < 0.7 needs both.
        assert_eq!(kept(Some(2), Some(0.7)), vec![1, 3]);
        assert_eq!(kept(Some(99), Some(0.6)), vec![1, 3]);
    }

    #[test]
    fn seeded_samples_follow_the_tempered_softmax() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 0.0];
        let counts = |seed: u64, params: &SamplingParams| {
            let mut s = Sampler::new(seed);
            let mut counts = [0usize; 6];
            for _ in 0..20_000 {
                counts[s.sample(&mut logits.to_vec(), params, &[]).token as usize] += 1;
            }
            counts
        };
        for (t, seed) in [(0.8f32, 1u64), (1.0, 2), (1.6, 3)] {
            let c = counts(seed, &temp(t));
            // 5 degrees of freedom: P(chi2 > 25) is about 1.4e-4.
            let chi2 = chi_square(&c, &softmax(&logits, t));
            assert!(chi2 < 25.0, "T={t}: chi2 {chi2}, counts {c:?}");
        }
        // Truncated to the top 3 and renormalised.
        let c = counts(9, &with(|p| p.top_k = Some(3)));
        assert_eq!(c[2] + c[3] + c[5], 0);
        let p = softmax(&[3.0, 2.0, 1.0], 1.0);
        assert!(chi_square(&[c[4], c[1], c[0]], &p) < 20.0);
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(seed);
            let mut one = || {
                s.sample(&mut [0.1, 0.2, 0.3, 0.4, 0.5], &temp(1.0), &[])
                    .token
            };
            (0..64).map(|_| one()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repetition_penalty_as_hugging_face() {
        let mut logits = [2.0f32, -1.0, 0.5, 0.0];
        let p = with(|p| (p.repetition_penalty, p.temperature) = (Some(2.0), 0.0));
        let out = Sampler::new(0).sample(&mut logits, &p, &[0, 1, 1, 99]);
        assert_eq!(logits, [1.0, -2.0, 0.5, 0.0], "once per distinct token");
        assert_eq!(out.token, 0);
        let out = Sampler::new(0).sample(&mut [2.0, 1.5], &p, &[0]);
        assert_eq!(out.token, 1, "penalised 2.0 becomes 1.0 < 1.5");
    }

    #[test]
    fn logprobs_and_alternatives() {
        let logits = [0.0f32, 2.0, 1.0, 2.0, -3.0];
        let out = draw(
            5,
            &logits,
            &with(|p| (p.logprobs, p.temperature) = (Some(3), 0.5)),
        );
        let q = softmax(&logits, 0.5);
        assert!((out.logprob as f64 - q[out.token as usize].ln()).abs() < 1e-5);
        let ids: Vec<u32> = out.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        for (id, lp) in out.top {
            assert!((lp as f64 - q[id as usize].ln()).abs() < 1e-5);
        }
        let out = draw(5, &logits, &with(|p| p.logprobs = Some(20)));
        let total: f64 = out.top.iter().map(|t| (t.1 as f64).exp()).sum();
        assert_eq!(out.top.len(), 5);
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn non_finite_logits_do_not_panic() {
        for seed in 0..50 {
            assert_eq!(draw(seed, &[f32::NAN, 1.0, f32::NAN], &temp(1.0)).token, 1);
        }
        assert_eq!(draw(0, &[0.0, f32::INFINITY, 1.0], &temp(1.0)).token, 1);
        let dead = [f32::NEG_INFINITY; 3];
        for p in [temp(0.0), temp(1.0), with(|p| p.top_p = Some(0.5))] {
            let out = draw(0, &dead, &p);
            assert_eq!((out.token, out.logprob), (0, f32::NEG_INFINITY));
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        assert_eq!(SamplingParams::default().validate(100, 512), Ok(()));
        let cases = [
            (temp(2.5), "temperature"),
            (temp(-0.1), "temperature"),
            (temp(f32::NAN), "temperature"),
            (with(|p| p.top_k = Some(0)), "top_k"),
            (with(|p| p.top_p = Some(0.0)), "top_p"),
            (with(|p| p.top_p = Some(1.1)), "top_p"),
            (
                with(|p| p.repetition_penalty = Some(0.0)),
                "repetition_penalty",
            ),
            (
                with(|p| p.repetition_penalty = Some(2.5)),
                "repetition_penalty",
            ),
            (with(|p| p.max_tokens = 0), "max_tokens"),
            (with(|p| p.max_tokens = 513), "max_tokens"),
            (with(|p| p.logprobs = Some(21)), "logprobs"),
            (with(|p| p.stop_token_ids = vec![100]), "stop_token_ids"),
            (with(|p| p.stop_strings = vec![String::new()]), "stop"),
            (with(|p| p.stop_strings = vec!["a".into(); 5]), "stop"),
        ];
        for (p, name) in cases {
            match p.validate(100, 512) {
                Err(SamplingError::Invalid { param, .. }) => assert_eq!(param, name),
                Ok(()) => panic!("{name} accepted"),
            }
        }
        let edges = SamplingParams {
            temperature: 2.0,
            top_k: Some(1),
            top_p: Some(1.0),
            repetition_penalty: Some(2.0),
            max_tokens: 512,
            logprobs: Some(20),
            stop_token_ids: vec![99],
            stop_strings: vec!["x".into(); 4],
            seed: Some(0),
        };
        assert_eq!(edges.validate(100, 512), Ok(()));
    }

    #[test]
    fn stop_strings_across_pushes() {
        let out = |s: &str, stopped| (s.to_string(), stopped);
        let mut m = StopMatcher::new(vec!["world".into()]);
        assert_eq!(m.push("Hello wor"), out("Hello ", false));
        assert_eq!(m.push("ld! more"), out("", true));
        assert_eq!(m.push("x"), out("", true));
        assert!(m.stopped());
        assert_eq!(m.flush(), "");
        let mut m = StopMatcher::new(vec!["abc".into()]);
        assert_eq!(m.push("ab"), out("", false));
        assert_eq!(m.push("x"), out("abx", false));
        assert_eq!(m.push("zab"), out("z", false));
        assert_eq!(m.flush(), "ab");
        let mut m = StopMatcher::new(vec!["cd".into(), "bcde".into()]);
        assert_eq!(m.push("abcdef"), out("ab", true), "cd ends first");
        let mut m = StopMatcher::new(vec!["😀x".into(), String::new()]);
        assert_eq!(m.push("é😀"), out("é", false));
        assert_eq!(m.push("y"), out("😀y", false));
        let mut none = StopMatcher::new(Vec::new());
        assert_eq!(none.push("all of it"), out("all of it", false));
    }

    impl Sampler {
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    #[test]
    fn random_splits_emit_exactly_the_text_before_the_first_stop() {
        fn word(r: &mut Sampler, len: usize) -> String {
            (0..len).map(|_| ['a', 'b', 'c', 'ü'][r.below(4)]).collect()
        }
        let mut r = Sampler::new(17);
        for _ in 0..500 {
            let stops: Vec<String> = (0..1 + r.below(3))
                .map(|_| {
                    let len = 1 + r.below(4);
                    word(&mut r, len)
                })
                .collect();
            let len = r.below(30);
            let text = word(&mut r, len);
            // Reference: cut at the occurrence that ends first (longest on ties).
            let ends = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|p| (p + s.len(), p)));
            let cut = ends.min().map(|hit| hit.1);
            let mut m = StopMatcher::new(stops.clone());
            let (mut got, mut stopped) = (String::new(), false);
            let chars: Vec<char> = text.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                let j = (i + 1 + r.below(4)).min(chars.len());
                let (o, s) = m.push(&chars[i..j].iter().collect::<String>());
                assert!(!stopped || o.is_empty());
                got.push_str(&o);
                stopped |= s;
                i = j;
            }
            got.push_str(&m.flush());
            assert_eq!(stopped, cut.is_some(), "{text:?} {stops:?}");
            assert_eq!(got, text[..cut.unwrap_or(text.len())], "{text:?} {stops:?}");
        }
    }
}
