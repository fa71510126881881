//! ContextCite (Cohen-Wang et al., 2024) as an estimator over the same batched games as the Shapley estimators:
//! `ablations` random keep-masks, each player kept with probability ½, valued by the game, then a sparse linear
//! surrogate fitted to them (LASSO, `linfa-elasticnet`'s coordinate descent; penalty [`LASSO_PENALTY`] on the
//! sample-mean squared error, as scikit-learn's `Lasso(alpha=0.01)` that ContextCite uses). A player's attribution
//! is its weight in the surrogate. The paper fits the logit of the answer's probability; [`logit_of_log_prob`]
//! turns a log-probability game's values into it. The empty and the full coalition are valued too (the report
//! carries them, as the other estimators' do) but are not fitted, and a mask drawn twice is valued once.

use super::shapley::{all_players, check_players, Attribution, Cache, Coalition, Game, Rng};
use super::shapley::{ShapleyError, MAX_PLAYERS};
use linfa::prelude::*;
use linfa_elasticnet::ElasticNet;
use ndarray::{Array1, Array2};

/// Random ablations ContextCite fits by default (the paper's smallest setting).
pub const DEFAULT_ABLATIONS: usize = 32;

/// The LASSO penalty (scikit-learn's `alpha`; ContextCite's default).
pub const LASSO_PENALTY: f64 = 0.01;

/// Largest log-probability [`logit_of_log_prob`] takes as it is; closer to 0 the logit is that of this value.
const LOG_PROB_CEILING: f64 = -1e-6;

/// `log(p / (1 - p))` for `p = exp(lp)`, computed without losing precision near either end.
pub fn logit_of_log_prob(lp: f64) -> f64 {
    let lp = lp.min(LOG_PROB_CEILING);
    lp - (-lp.exp_m1()).ln()
}

/// ContextCite's attributions of `game`'s players from `ablations` random keep-masks (seeded), each mask's value
/// passed through `target` before the fit. Standard errors are zero: the LASSO fit gives none.
pub fn contextcite<G: Game + ?Sized>(
    game: &mut G,
    ablations: usize,
    seed: u64,
    target: fn(f64) -> f64,
) -> Result<Attribution, ShapleyError> {
    let n = game.players();
    check_players(n, MAX_PLAYERS, "ContextCite")?;
    if ablations < 2 {
        return Err(ShapleyError::Invalid {
            what: "ablations",
            reason: format!("{ablations}: at least two random ablations are needed"),
        });
    }
    let mut rng = Rng(seed);
    let masks: Vec<Coalition> = (0..ablations)
        .map(|_| (0..n).fold(0u64, |c, i| if rng.unit() < 0.5 { c | 1 << i } else { c }))
        .collect();
    let mut asked = masks.clone();
    asked.extend([0, all_players(n)]);
    let mut cache = Cache::new(game);
    cache.fill(&asked)?;
    let targets: Vec<f64> = masks.iter().map(|&m| target(cache.get(m))).collect();
    let values = fit_lasso(n, &masks, &targets)?;
    Ok(cache.attribution(n, values, vec![0.0; n]))
}

/// The LASSO weights of `n` 0/1 features (the masks' bits) against `targets`, with an intercept.
fn fit_lasso(n: usize, masks: &[Coalition], targets: &[f64]) -> Result<Vec<f64>, ShapleyError> {
    if targets.iter().any(|t| !t.is_finite()) {
        return Err(ShapleyError::Game(
            "a coalition's value is not finite, so no surrogate can be fitted".into(),
        ));
    }
    // Centred features, as scikit-learn centres them before fitting an intercept (linfa centres only the
    // targets): the weights are then those of the uncentred problem with a free intercept.
    let bit = |r: usize, i: usize| f64::from(u8::from(masks[r] & (1 << i) != 0));
    let means: Vec<f64> = (0..n)
        .map(|i| (0..masks.len()).map(|r| bit(r, i)).sum::<f64>() / masks.len() as f64)
        .collect();
    let features = Array2::from_shape_fn((masks.len(), n), |(r, i)| bit(r, i) - means[i]);
    let dataset = Dataset::new(features, Array1::from(targets.to_vec()));
    let model = ElasticNet::<f64>::lasso()
        .penalty(LASSO_PENALTY)
        .fit(&dataset)
        .map_err(|e| ShapleyError::Invalid {
            what: "surrogate fit",
            reason: e.to_string(),
        })?;
    Ok(model.hyperplane().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A game whose value is a fixed linear function of the coalition.
    struct Linear {
        weights: Vec<f64>,
        bias: f64,
        asked: usize,
    }

    impl Game for Linear {
        fn players(&self) -> usize {
            self.weights.len()
        }

        fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
            self.asked += coalitions.len();
            Ok(coalitions
                .iter()
                .map(|&c| {
                    let kept = (0..self.weights.len()).filter(|i| c & (1 << i) != 0);
                    self.bias + kept.map(|i| self.weights[i]).sum::<f64>()
                })
                .collect())
        }
    }

    #[test]
    fn a_linear_game_is_recovered_up_to_the_penalty() {
        let weights = vec![3.0, 0.0, -1.5, 0.0, 0.8, 0.0, 0.0, 2.0];
        let mut game = Linear {
            weights: weights.clone(),
            bias: -4.0,
            asked: 0,
        };
        let a = contextcite(&mut game, 64, 7, |v| v).unwrap();
        for (got, want) in a.values.iter().zip(&weights) {
            assert!((got - want).abs() < 0.1, "{:?} vs {weights:?}", a.values);
        }
        // Sparse: the zero weights stay (nearly) zero.
        for i in [1, 3, 5, 6] {
            assert!(a.values[i].abs() < 0.05, "{:?}", a.values);
        }
        assert_eq!(a.full, -4.0 + 4.3);
        assert_eq!(a.empty, -4.0);
        assert_eq!(a.std_errors, vec![0.0; 8]);
        // Each distinct coalition once, the empty and full ones included.
        assert_eq!(a.evaluations, game.asked);
        assert!(a.evaluations <= 66);
    }

    #[test]
    fn the_same_seed_gives_the_same_values_and_bad_settings_are_refused() {
        let mut game = Linear {
            weights: vec![1.0, 2.0, 3.0],
            bias: 0.0,
            asked: 0,
        };
        let a = contextcite(&mut game, 32, 3, |v| v).unwrap();
        let b = contextcite(&mut game, 32, 3, |v| v).unwrap();
        assert_eq!(a, b);
        let err = contextcite(&mut game, 1, 3, |v| v).unwrap_err().to_string();
        assert!(err.contains("ablations"), "{err}");
        let err = contextcite(&mut game, 32, 3, |_| f64::NAN)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not finite"), "{err}");
    }

    #[test]
    fn the_logit_of_a_log_probability() {
        assert!((logit_of_log_prob(0.5f64.ln())).abs() < 1e-12);
        let p: f64 = 0.2;
        assert!((logit_of_log_prob(p.ln()) - (p / (1.0 - p)).ln()).abs() < 1e-12);
        // Near certainty the logit stays finite and grows as the log-probability nears 0.
        assert!(logit_of_log_prob(0.0).is_finite());
        assert!(logit_of_log_prob(-1e-3) > logit_of_log_prob(-1e-1));
        // Far below, the logit is about the log-probability itself.
        assert!((logit_of_log_prob(-40.0) + 40.0).abs() < 1e-9);
    }
}
