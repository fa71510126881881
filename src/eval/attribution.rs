//! `engram eval --attribution`: how faithful each passage-attribution method is on the answers the model really
//! gave. The truth is the model itself: the log-probability of its own answer when the prompt holds only some of
//! the passages, prompts written out in full (the joint mode of `/v1/qa`). Each method ranks the passages; the
//! scores are ContextCite's:
//! - **top-k drop**: remove the k = 1, 2, 3 passages the method values most and re-score the same answer; the drop
//!   in log-probability, in nats (higher: the method found what the answer rests on);
//! - **LDS** (linear datamodeling score): over random held-out keep-masks (each passage kept with probability ½,
//!   drawn apart from any method's), the Spearman correlation between the sum of the kept passages' values and
//!   the answer's actual log-probability.
//!
//! The methods: `/v1/qa`'s Shapley estimator over joint prompts and over passages encoded once (`separate`),
//! ContextCite at `ablations` random ablations over both, leave-one-out, and two baselines without the model:
//! the retriever's scores and random values. Every game is memoized ([`Memo`]), so a coalition is scored once
//! per question however many methods ask for it; each method's cost is the number of distinct coalitions it
//! needs, and each game's measured time per coalition gives its seconds.

use crate::attribution::{
    all_players, contextcite, exact_shapley, logit_of_log_prob, permutation_shapley, Coalition,
    Game, ShapleyError, MAX_EXACT_PLAYERS,
};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Held-out random ablations the LDS is computed over.
pub const HELD_OUT_ABLATIONS: usize = 32;

/// Antithetic permutation pairs past [`MAX_EXACT_PLAYERS`] passages (as `/v1/qa` samples).
const PERMUTATION_PAIRS: usize = 64;

/// Seeds: the methods' samplers and the held-out masks never share draws.
const METHOD_SEED: u64 = 0;
const HELD_OUT_SEED: u64 = 0x0005_eed0_f1d5;
const RANDOM_BASELINE_SEED: u64 = 0x0ba5_e11e;

/// The passages removed for the top-k drops.
pub const DROP_KS: [usize; 3] = [1, 2, 3];

/// A game whose values are asked of the inner game once each; counts the distinct coalitions asked since the
/// last [`Memo::take_asked`] and the time spent valuing.
pub struct Memo<G: Game> {
    game: G,
    known: HashMap<Coalition, f64>,
    asked: HashSet<Coalition>,
    /// Seconds the inner game took, in all.
    pub seconds: f64,
}

impl<G: Game> Memo<G> {
    /// `game`, memoized.
    pub fn new(game: G) -> Self {
        Self {
            game,
            known: HashMap::new(),
            asked: HashSet::new(),
            seconds: 0.0,
        }
    }

    /// Distinct coalitions asked since the last call.
    pub fn take_asked(&mut self) -> usize {
        std::mem::take(&mut self.asked).len()
    }

    /// Coalitions the inner game valued, in all.
    pub fn valued(&self) -> usize {
        self.known.len()
    }

    /// The mean seconds per valued coalition (0 before any).
    pub fn seconds_per_coalition(&self) -> f64 {
        if self.known.is_empty() {
            0.0
        } else {
            self.seconds / self.known.len() as f64
        }
    }

    fn value(&mut self, c: Coalition) -> Result<f64, ShapleyError> {
        Ok(self.values(&[c]).map_err(ShapleyError::Game)?[0])
    }
}

impl<G: Game> Game for Memo<G> {
    fn players(&self) -> usize {
        self.game.players()
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        self.asked.extend(coalitions);
        let mut missing: Vec<Coalition> = coalitions
            .iter()
            .copied()
            .filter(|c| !self.known.contains_key(c))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let started = Instant::now();
            let got = self.game.values(&missing)?;
            self.seconds += started.elapsed().as_secs_f64();
            if got.len() != missing.len() {
                return Err(format!(
                    "{} values for {} coalitions",
                    got.len(),
                    missing.len()
                ));
            }
            self.known.extend(missing.into_iter().zip(got));
        }
        Ok(coalitions.iter().map(|c| self.known[c]).collect())
    }
}

/// One method's values for one question's passages and how faithful they are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodOutcome {
    /// The method's name.
    pub method: String,
    /// Its value for each passage, in rank order.
    pub values: Vec<f64>,
    /// The drop in the answer's log-probability (nats) without the top 1, 2, 3 passages (as many as there are
    /// passages to remove, all but one at most).
    pub drops: Vec<f64>,
    /// The linear datamodeling score.
    pub lds: f64,
    /// Distinct coalitions the method had the model score (0 for the baselines).
    pub coalitions: usize,
    /// `coalitions` times the mean time per coalition of the game it used, in seconds.
    pub seconds: f64,
}

/// Every method's outcome on one question.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionAttribution {
    /// The methods, in a fixed order.
    pub methods: Vec<MethodOutcome>,
    /// The answer's log-probability with every passage (joint prompt).
    pub full_log_prob: f64,
    /// Coalitions scored with joint prompts, and the seconds that took.
    pub joint: (usize, f64),
    /// Coalitions scored with passages encoded once, and the seconds that took.
    pub separate: (usize, f64),
}

/// Runs every method on one question. `joint` is the truth; `separate` the same game with passages encoded once;
/// `retrieval` the retriever's score of each passage; `ablations` ContextCite's random ablations; `question` the
/// question's index, which seeds the random baseline (a new order per question).
pub fn evaluate_question<J: Game, S: Game>(
    joint: J,
    separate: S,
    retrieval: &[f64],
    ablations: usize,
    question: u64,
) -> Result<QuestionAttribution, ShapleyError> {
    let (mut joint, mut separate) = (Memo::new(joint), Memo::new(separate));
    let n = joint.players();
    let mut runs: Vec<(&str, Vec<f64>, usize)> = Vec::new();
    let estimators: [(&str, bool, Estimate); 4] = [
        ("shapley_joint", true, shapley),
        ("shapley_separate", false, shapley),
        ("contextcite_joint", true, cite),
        ("contextcite_separate", false, cite),
    ];
    for (name, on_joint, estimate) in estimators {
        let values = if on_joint {
            estimate(&mut joint, ablations)?
        } else {
            estimate(&mut separate, ablations)?
        };
        let asked = if on_joint {
            joint.take_asked()
        } else {
            separate.take_asked()
        };
        runs.push((name, values, asked));
    }
    let loo = leave_one_out(&mut joint)?;
    runs.push(("leave_one_out", loo, joint.take_asked()));
    runs.push(("retrieval_score", retrieval.to_vec(), 0));
    runs.push((
        "random",
        random_values(n, RANDOM_BASELINE_SEED ^ question.wrapping_mul(0x9E37_79B9)),
        0,
    ));
    let masks = random_masks(n, HELD_OUT_ABLATIONS, HELD_OUT_SEED);
    let mut methods = Vec::with_capacity(runs.len());
    for (name, values, coalitions) in runs {
        let drops = top_k_drops(&mut joint, &values)?;
        let lds = lds(&mut joint, &values, &masks)?;
        let per = if name.ends_with("_separate") {
            separate.seconds_per_coalition()
        } else {
            joint.seconds_per_coalition()
        };
        methods.push(MethodOutcome {
            method: name.to_string(),
            values,
            drops,
            lds,
            coalitions,
            seconds: coalitions as f64 * per,
        });
    }
    Ok(QuestionAttribution {
        methods,
        full_log_prob: joint.value(all_players(n))?,
        joint: (joint.valued(), joint.seconds),
        separate: (separate.valued(), separate.seconds),
    })
}

/// An estimator: a game and ContextCite's ablation count in, one value per player out.
type Estimate = fn(&mut dyn Game, usize) -> Result<Vec<f64>, ShapleyError>;

/// `/v1/qa`'s Shapley values: exact up to [`MAX_EXACT_PLAYERS`] players, permutation sampling beyond.
fn shapley(game: &mut dyn Game, _ablations: usize) -> Result<Vec<f64>, ShapleyError> {
    let a = if game.players() <= MAX_EXACT_PLAYERS {
        exact_shapley(game)?
    } else {
        permutation_shapley(game, PERMUTATION_PAIRS, METHOD_SEED)?
    };
    Ok(a.values)
}

/// ContextCite's weights, fitted to the logit of the answer's probability.
fn cite(game: &mut dyn Game, ablations: usize) -> Result<Vec<f64>, ShapleyError> {
    Ok(contextcite(game, ablations, METHOD_SEED, logit_of_log_prob)?.values)
}

/// `v(all) − v(all but i)` for each player.
pub fn leave_one_out<G: Game + ?Sized>(game: &mut G) -> Result<Vec<f64>, ShapleyError> {
    let n = game.players();
    let all = all_players(n);
    let mut asked: Vec<Coalition> = (0..n).map(|i| all & !(1 << i)).collect();
    asked.push(all);
    let v = game.values(&asked).map_err(ShapleyError::Game)?;
    Ok(v[..n].iter().map(|without| v[n] - without).collect())
}

/// Players by decreasing value (ties: lower index first).
pub fn ranking(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

/// For each k of [`DROP_KS`] below the number of players: `v(all) − v(all but the top k by `values`)`.
pub fn top_k_drops<G: Game + ?Sized>(
    game: &mut G,
    values: &[f64],
) -> Result<Vec<f64>, ShapleyError> {
    let all = all_players(values.len());
    let order = ranking(values);
    let ks: Vec<usize> = DROP_KS.into_iter().filter(|&k| k < values.len()).collect();
    let mut asked = vec![all];
    asked.extend(
        ks.iter()
            .map(|&k| order[..k].iter().fold(all, |c, &i| c & !(1 << i))),
    );
    let v = game.values(&asked).map_err(ShapleyError::Game)?;
    Ok(v[1..].iter().map(|without| v[0] - without).collect())
}

/// The Spearman correlation, over `masks`, between the summed `values` of each mask's players and the game's
/// value of the mask.
pub fn lds<G: Game + ?Sized>(
    game: &mut G,
    values: &[f64],
    masks: &[Coalition],
) -> Result<f64, ShapleyError> {
    let actual = game.values(masks).map_err(ShapleyError::Game)?;
    let predicted: Vec<f64> = masks
        .iter()
        .map(|&m| {
            (0..values.len())
                .filter(|i| m & (1 << i) != 0)
                .map(|i| values[i])
                .sum()
        })
        .collect();
    Ok(spearman(&predicted, &actual))
}

/// Spearman's rank correlation (ties get their mean rank); 0 when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// The rank of each value (1-based; tied values share their mean rank).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut out = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = mean;
        }
        i = j + 1;
    }
    out
}

/// splitmix64: the next value of the stream `state`.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `count` keep-masks over `n` players, each kept with probability ½ (seeded).
pub fn random_masks(n: usize, count: usize, seed: u64) -> Vec<Coalition> {
    let mut state = seed;
    (0..count)
        .map(|_| next(&mut state) & all_players(n))
        .collect()
}

/// `n` values uniform in `[0, 1)` (seeded): the random baseline.
fn random_values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| (next(&mut state) >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passage 0 carries the answer, passage 1 helps a little, the rest are noise; `separate` halves every effect.
    struct Planted {
        scale: f64,
        calls: usize,
    }

    impl Game for Planted {
        fn players(&self) -> usize {
            5
        }

        fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
            self.calls += 1;
            Ok(coalitions
                .iter()
                .map(|&c| {
                    let has = |i: u32| f64::from(u8::from(c & (1 << i) != 0));
                    -6.0 + self.scale * (4.0 * has(0) + 1.0 * has(1) + 0.5 * has(0) * has(1))
                })
                .collect())
        }
    }

    fn outcome<'a>(q: &'a QuestionAttribution, name: &str) -> &'a MethodOutcome {
        q.methods.iter().find(|m| m.method == name).unwrap()
    }

    #[test]
    fn model_methods_find_the_planted_passage_and_beat_the_baselines() {
        let retrieval = [0.1, 0.2, 0.9, 0.8, 0.7];
        let q = evaluate_question(
            Planted {
                scale: 1.0,
                calls: 0,
            },
            Planted {
                scale: 0.5,
                calls: 0,
            },
            &retrieval,
            32,
            0,
        )
        .unwrap();
        assert_eq!(q.full_log_prob, -0.5);
        // The whole table of 32 joint coalitions, every one scored once.
        assert_eq!(q.joint.0, 32);
        for name in [
            "shapley_joint",
            "shapley_separate",
            "contextcite_joint",
            "contextcite_separate",
            "leave_one_out",
        ] {
            let m = outcome(&q, name);
            assert_eq!(ranking(&m.values)[..2], [0, 1], "{name}: {:?}", m.values);
            assert_eq!(m.drops, vec![4.5, 5.5, 5.5], "{name}");
            assert!(m.lds > 0.8, "{name}: {}", m.lds);
        }
        assert_eq!(outcome(&q, "shapley_joint").coalitions, 32);
        assert_eq!(outcome(&q, "leave_one_out").coalitions, 6);
        // The retriever put the noise first: nothing drops.
        let r = outcome(&q, "retrieval_score");
        assert_eq!((r.drops.clone(), r.coalitions), (vec![0.0, 0.0, 0.0], 0));
        assert!(r.lds < 0.5);
    }

    #[test]
    fn spearman_ranks_with_ties_and_constant_sides() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // One tie: the classic textbook value.
        let r = spearman(&[1.0, 2.0, 2.0, 4.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((r - 0.9486832980505138).abs() < 1e-9, "{r}");
    }

    #[test]
    fn the_memo_scores_each_coalition_once_and_counts_what_each_asker_needed() {
        let mut m = Memo::new(Planted {
            scale: 1.0,
            calls: 0,
        });
        m.values(&[1, 2, 1]).unwrap();
        assert_eq!(m.take_asked(), 2);
        m.values(&[2, 3]).unwrap();
        assert_eq!((m.take_asked(), m.valued(), m.game.calls), (2, 3, 2));
        m.values(&[3]).unwrap();
        assert_eq!(m.game.calls, 2);
        let masks = random_masks(5, 200, 1);
        assert!(masks.iter().all(|&c| c < 32));
        let kept = masks.iter().map(|c| c.count_ones()).sum::<u32>() as f64 / 200.0;
        assert!((kept - 2.5).abs() < 0.3, "{kept}");
    }
}
