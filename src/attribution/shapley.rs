//! Shapley and Banzhaf value estimators over a batched cooperative game.
//!
//! Players are numbered `0..n` (`n` ≤ [`MAX_PLAYERS`]); a coalition is a bit set. The game answers the values of
//! many coalitions at once ([`Game::values`]), and every estimator asks each distinct coalition at most once (a
//! cache keyed by the bit set), so a model-backed game scores a batch of coalition prompts per call.
//!
//! - [`exact_shapley`]: all `2^n` coalitions, `n` ≤ [`MAX_EXACT_PLAYERS`]; standard errors are zero.
//! - [`permutation_shapley`]: marginal contributions along random permutations, each drawn with its reverse
//!   (antithetic pairs); the pair's mean is one sample, so the standard error is the sample deviation of the pair
//!   means over √pairs. Every permutation's contributions sum to `v(all) − v(none)`, so the estimates do too.
//! - [`banzhaf`]: coalitions drawn with each player in independently with probability `p`; a player's value is
//!   the mean value of the drawn coalitions that hold it minus the mean of those that do not (maximum sample
//!   reuse), with the two-sample standard error. With `p = 1/2` this estimates the Banzhaf value.

use std::collections::HashMap;

/// Most players a game may have (coalitions are 64-bit sets).
pub const MAX_PLAYERS: usize = 64;

/// Most players [`exact_shapley`] takes (it evaluates all `2^n` coalitions).
pub const MAX_EXACT_PLAYERS: usize = 10;

/// A set of players, bit `i` for player `i`.
pub type Coalition = u64;

/// Errors of the estimators.
#[derive(Debug, thiserror::Error)]
pub enum ShapleyError {
    /// Too many players for the estimator.
    #[error("{players} players: the {estimator} estimator takes at most {most}")]
    TooManyPlayers {
        /// Players in the game.
        players: usize,
        /// The estimator's limit.
        most: usize,
        /// The estimator.
        estimator: &'static str,
    },
    /// A parameter is out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The game could not value a batch of coalitions.
    #[error("the game could not value its coalitions: {0}")]
    Game(String),
    /// The game answered a batch with the wrong number of values.
    #[error("the game returned {got} values for {asked} coalitions")]
    BatchSize {
        /// Coalitions asked for.
        asked: usize,
        /// Values returned.
        got: usize,
    },
}

/// A cooperative game over `players()` players, valued in batches.
pub trait Game {
    /// Number of players.
    fn players(&self) -> usize;

    /// The value of each coalition, in order. Errors are reported as [`ShapleyError::Game`].
    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String>;
}

/// Per-player values with their standard errors, and what it took to get them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// The value of each player.
    pub values: Vec<f64>,
    /// The standard error of each value (zero for exact values).
    pub std_errors: Vec<f64>,
    /// `v(all players)`.
    pub full: f64,
    /// `v(no player)`.
    pub empty: f64,
    /// Distinct coalitions the game valued.
    pub evaluations: usize,
}

/// Values of coalitions, each asked of the game once.
pub(super) struct Cache<'g, G: Game + ?Sized> {
    game: &'g mut G,
    known: HashMap<Coalition, f64>,
}

impl<'g, G: Game + ?Sized> Cache<'g, G> {
    pub(super) fn new(game: &'g mut G) -> Self {
        Self {
            game,
            known: HashMap::new(),
        }
    }

    /// Values `coalitions` the game has not been asked yet, in one batch.
    pub(super) fn fill(&mut self, coalitions: &[Coalition]) -> Result<(), ShapleyError> {
        let mut missing: Vec<Coalition> = Vec::new();
        for &c in coalitions {
            if !self.known.contains_key(&c) && !missing.contains(&c) {
                missing.push(c);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let got = self.game.values(&missing).map_err(ShapleyError::Game)?;
        if got.len() != missing.len() {
            return Err(ShapleyError::BatchSize {
                asked: missing.len(),
                got: got.len(),
            });
        }
        self.known.extend(missing.into_iter().zip(got));
        Ok(())
    }

    pub(super) fn get(&self, c: Coalition) -> f64 {
        self.known[&c]
    }

    /// The result over `n` players (the cache holds the empty and the full coalition).
    pub(super) fn attribution(
        &self,
        n: usize,
        values: Vec<f64>,
        std_errors: Vec<f64>,
    ) -> Attribution {
        Attribution {
            values,
            std_errors,
            full: self.get(all_players(n)),
            empty: self.get(0),
            evaluations: self.known.len(),
        }
    }
}

/// The coalition of all `n` players (`n` ≤ [`MAX_PLAYERS`]).
pub fn all_players(n: usize) -> Coalition {
    if n == 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

pub(super) fn check_players(
    n: usize,
    most: usize,
    estimator: &'static str,
) -> Result<(), ShapleyError> {
    if n > most {
        return Err(ShapleyError::TooManyPlayers {
            players: n,
            most,
            estimator,
        });
    }
    Ok(())
}

/// Exact Shapley values: `φ_i = Σ_{S ⊆ N∖{i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S))`.
pub fn exact_shapley<G: Game + ?Sized>(game: &mut G) -> Result<Attribution, ShapleyError> {
    let n = game.players();
    check_players(n, MAX_EXACT_PLAYERS, "exact Shapley")?;
    let all: Vec<Coalition> = (0..=all_players(n)).collect();
    let mut cache = Cache::new(game);
    cache.fill(&all)?;
    // weight[s] = s! (n - s - 1)! / n!, for coalitions of size s not holding the player.
    let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
    let weight: Vec<f64> = (0..n)
        .map(|s| fact(s) * fact(n - s - 1) / fact(n))
        .collect();
    let mut values = vec![0.0; n];
    for &c in &all {
        let size = c.count_ones() as usize;
        for (i, v) in values.iter_mut().enumerate() {
            if c & (1 << i) == 0 {
                *v += weight[size] * (cache.get(c | (1 << i)) - cache.get(c));
            }
        }
    }
    Ok(cache.attribution(n, values, vec![0.0; n]))
}

/// A small deterministic generator (splitmix64) for the samplers.
pub(super) struct Rng(pub(super) u64);

/// splitmix64's finaliser: a bijective 64-bit mix of `z` plus the golden-ratio increment.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle(&mut self, xs: &mut [usize]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
}

/// Mean and standard error of the mean of `xs` (zero error for fewer than two samples).
fn mean_and_error(xs: &[f64]) -> (f64, f64) {
    let k = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / k;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0);
    (mean, (var / k).sqrt())
}

/// Shapley values by `pairs` antithetic pairs of random permutations (seeded; `2 · pairs` permutations in all).
pub fn permutation_shapley<G: Game + ?Sized>(
    game: &mut G,
    pairs: usize,
    seed: u64,
) -> Result<Attribution, ShapleyError> {
    let n = game.players();
    check_players(n, MAX_PLAYERS, "permutation Shapley")?;
    if pairs == 0 {
        return Err(ShapleyError::Invalid {
            what: "permutations",
            reason: "at least one antithetic pair is needed".into(),
        });
    }
    let mut rng = Rng(seed);
    let mut orders: Vec<Vec<usize>> = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let reverse: Vec<usize> = order.iter().rev().copied().collect();
        orders.push(order);
        orders.push(reverse);
    }
    // Every prefix of every permutation, valued in one batch.
    let mut prefixes: Vec<Coalition> = vec![0];
    for order in &orders {
        let mut c = 0u64;
        for &p in order {
            c |= 1 << p;
            prefixes.push(c);
        }
    }
    let mut cache = Cache::new(game);
    cache.fill(&prefixes)?;
    // samples[i][pair]: player i's mean marginal contribution over the pair's two permutations.
    let mut samples = vec![vec![0.0; pairs]; n];
    for (k, order) in orders.iter().enumerate() {
        let mut c = 0u64;
        let mut before = cache.get(0);
        for &p in order {
            c |= 1 << p;
            let after = cache.get(c);
            samples[p][k / 2] += 0.5 * (after - before);
            before = after;
        }
    }
    let (values, std_errors) = samples.iter().map(|s| mean_and_error(s)).unzip();
    Ok(cache.attribution(n, values, std_errors))
}

/// Banzhaf-style values from `samples` random coalitions, each player in with probability `p` (0 < p < 1;
/// `p = 0.5` gives the Banzhaf value). Players that land on one side in every sample get value 0 and an
/// infinite standard error.
pub fn banzhaf<G: Game + ?Sized>(
    game: &mut G,
    samples: usize,
    p: f64,
    seed: u64,
) -> Result<Attribution, ShapleyError> {
    let n = game.players();
    check_players(n, MAX_PLAYERS, "Banzhaf")?;
    if !(p > 0.0 && p < 1.0) {
        return Err(ShapleyError::Invalid {
            what: "inclusion probability",
            reason: format!("{p} is not strictly between 0 and 1"),
        });
    }
    if samples < 2 {
        return Err(ShapleyError::Invalid {
            what: "samples",
            reason: "at least two coalitions are needed".into(),
        });
    }
    let mut rng = Rng(seed);
    let drawn: Vec<Coalition> = (0..samples)
        .map(|_| (0..n).fold(0u64, |c, i| if rng.unit() < p { c | 1 << i } else { c }))
        .collect();
    let mut asked = drawn.clone();
    asked.extend([0, all_players(n)]);
    let mut cache = Cache::new(game);
    cache.fill(&asked)?;
    let mut values = Vec::with_capacity(n);
    let mut std_errors = Vec::with_capacity(n);
    for i in 0..n {
        let (with, without): (Vec<f64>, Vec<f64>) = {
            let (a, b): (Vec<Coalition>, Vec<Coalition>) =
                drawn.iter().partition(|&&c| c & (1 << i) != 0);
            (
                a.iter().map(|&c| cache.get(c)).collect(),
                b.iter().map(|&c| cache.get(c)).collect(),
            )
        };
        if with.is_empty() || without.is_empty() {
            values.push(0.0);
            std_errors.push(f64::INFINITY);
            continue;
        }
        let (m1, e1) = mean_and_error(&with);
        let (m0, e0) = mean_and_error(&without);
        values.push(m1 - m0);
        std_errors.push((e1 * e1 + e0 * e0).sqrt());
    }
    Ok(cache.attribution(n, values, std_errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A game from a closure over coalitions, counting the coalitions it was asked.
    struct FnGame<F: Fn(Coalition) -> f64> {
        n: usize,
        f: F,
        asked: usize,
        batches: usize,
    }

    impl<F: Fn(Coalition) -> f64> FnGame<F> {
        fn new(n: usize, f: F) -> Self {
            Self {
                n,
                f,
                asked: 0,
                batches: 0,
            }
        }
    }

    impl<F: Fn(Coalition) -> f64> Game for FnGame<F> {
        fn players(&self) -> usize {
            self.n
        }
        fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
            self.asked += coalitions.len();
            self.batches += 1;
            Ok(coalitions.iter().map(|&c| (self.f)(c)).collect())
        }
    }

    fn members(c: Coalition, n: usize) -> impl Iterator<Item = usize> {
        (0..n).filter(move |i| c & (1 << i) != 0)
    }

    /// v(S) = Σ_{i∈S} w_i: every estimator's value of i is w_i.
    fn additive(weights: &'static [f64]) -> FnGame<impl Fn(Coalition) -> f64> {
        FnGame::new(weights.len(), move |c| {
            members(c, weights.len()).map(|i| weights[i]).sum()
        })
    }

    /// The unanimity game of T: v(S) = 1 when T ⊆ S. Shapley: 1/|T| for i ∈ T, else 0; Banzhaf: 2^(1−|T|).
    fn unanimity(n: usize, t: Coalition) -> FnGame<impl Fn(Coalition) -> f64> {
        FnGame::new(n, move |c| if c & t == t { 1.0 } else { 0.0 })
    }

    /// The airport game: v(S) = max cost of S's members; Shapley values are known in closed form.
    fn airport(costs: &'static [f64]) -> FnGame<impl Fn(Coalition) -> f64> {
        FnGame::new(costs.len(), move |c| {
            members(c, costs.len())
                .map(|i| costs[i])
                .fold(0.0, f64::max)
        })
    }

    /// Littlechild–Owen: with sorted costs c_1 ≤ … ≤ c_n, φ_k = Σ_{j ≤ k} (c_j − c_{j−1}) / (n − j + 1).
    fn airport_shapley(costs: &[f64]) -> Vec<f64> {
        let n = costs.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]));
        let mut out = vec![0.0; n];
        let mut share = 0.0;
        let mut prev = 0.0;
        for (j, &i) in order.iter().enumerate() {
            share += (costs[i] - prev) / (n - j) as f64;
            prev = costs[i];
            out[i] = share;
        }
        out
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < tol, "player {i}: {x} vs {y}");
        }
    }

    #[test]
    fn exact_values_match_known_games() {
        let r = exact_shapley(&mut additive(&[1.0, -2.0, 0.5, 3.0])).unwrap();
        close(&r.values, &[1.0, -2.0, 0.5, 3.0], 1e-12);
        assert_eq!(r.evaluations, 16);

        let r = exact_shapley(&mut unanimity(6, 0b101100)).unwrap();
        close(
            &r.values,
            &[0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0],
            1e-12,
        );

        const COSTS: &[f64] = &[4.0, 1.0, 7.0, 2.0, 2.0, 9.0, 3.0];
        let r = exact_shapley(&mut airport(COSTS)).unwrap();
        close(&r.values, &airport_shapley(COSTS), 1e-12);
        // Efficiency: the values share out v(all) − v(none).
        assert!((r.values.iter().sum::<f64>() - (r.full - r.empty)).abs() < 1e-12);
    }

    #[test]
    fn exact_refuses_large_games_and_asks_each_coalition_once() {
        let mut g = additive(&[1.0; 11]);
        assert!(matches!(
            exact_shapley(&mut g),
            Err(ShapleyError::TooManyPlayers { players: 11, .. })
        ));
        let mut g = unanimity(10, 0b11);
        exact_shapley(&mut g).unwrap();
        assert_eq!((g.asked, g.batches), (1024, 1));
    }

    #[test]
    fn permutation_sampling_is_exact_on_additive_games_and_always_efficient() {
        let r = permutation_shapley(&mut additive(&[1.0, -2.0, 0.5, 3.0, 0.25]), 8, 1).unwrap();
        close(&r.values, &[1.0, -2.0, 0.5, 3.0, 0.25], 1e-12);
        close(&r.std_errors, &[0.0; 5], 1e-12);

        const COSTS: &[f64] = &[4.0, 1.0, 7.0, 2.0, 2.0, 9.0, 3.0, 5.0, 6.0, 8.0, 1.5, 2.5];
        let r = permutation_shapley(&mut airport(COSTS), 64, 7).unwrap();
        assert!((r.values.iter().sum::<f64>() - (r.full - r.empty)).abs() < 1e-9);
    }

    #[test]
    fn permutation_estimates_land_within_their_stated_error() {
        // 12 players: exact values from the closed form; the estimate should be within 4 standard errors of
        // each (a failure by chance has probability below 1e-3 over the 12 players), for several seeds.
        const COSTS: &[f64] = &[4.0, 1.0, 7.0, 2.0, 2.0, 9.0, 3.0, 5.0, 6.0, 8.0, 1.5, 2.5];
        let truth = airport_shapley(COSTS);
        for seed in 0..5 {
            let r = permutation_shapley(&mut airport(COSTS), 64, seed).unwrap();
            for (i, ((v, t), se)) in r.values.iter().zip(&truth).zip(&r.std_errors).enumerate() {
                assert!(
                    (v - t).abs() <= 4.0 * se + 1e-12,
                    "seed {seed} player {i}: {v} vs {t} (se {se})"
                );
            }
        }
        // More permutations, smaller errors.
        let few = permutation_shapley(&mut airport(COSTS), 16, 3).unwrap();
        let many = permutation_shapley(&mut airport(COSTS), 256, 3).unwrap();
        let mean = |r: &Attribution| r.std_errors.iter().sum::<f64>() / r.std_errors.len() as f64;
        assert!(mean(&many) < 0.5 * mean(&few));
    }

    #[test]
    fn banzhaf_matches_known_values_within_error() {
        let r = banzhaf(&mut additive(&[1.0, -2.0, 0.5]), 400, 0.5, 3).unwrap();
        // Additive games have Banzhaf value w_i; the sampler's error is from the other players' spread.
        for (i, w) in [1.0, -2.0, 0.5].iter().enumerate() {
            assert!((r.values[i] - w).abs() <= 4.0 * r.std_errors[i] + 1e-12);
        }
        let t = 0b0111;
        let r = banzhaf(&mut unanimity(8, t), 2000, 0.5, 11).unwrap();
        for i in 0..8 {
            let want = if t & (1 << i) != 0 { 0.25 } else { 0.0 };
            assert!(
                (r.values[i] - want).abs() <= 4.0 * r.std_errors[i] + 1e-12,
                "player {i}: {} vs {want} (se {})",
                r.values[i],
                r.std_errors[i]
            );
        }
    }

    #[test]
    fn estimators_reject_bad_parameters() {
        let mut g = additive(&[1.0, 2.0]);
        assert!(matches!(
            permutation_shapley(&mut g, 0, 1),
            Err(ShapleyError::Invalid { .. })
        ));
        assert!(matches!(
            banzhaf(&mut g, 10, 1.0, 1),
            Err(ShapleyError::Invalid { .. })
        ));
        assert!(matches!(
            banzhaf(&mut g, 1, 0.5, 1),
            Err(ShapleyError::Invalid { .. })
        ));
        struct Short;
        impl Game for Short {
            fn players(&self) -> usize {
                3
            }
            fn values(&mut self, c: &[Coalition]) -> Result<Vec<f64>, String> {
                Ok(vec![0.0; c.len() - 1])
            }
        }
        assert!(matches!(
            exact_shapley(&mut Short),
            Err(ShapleyError::BatchSize { .. })
        ));
    }
}
