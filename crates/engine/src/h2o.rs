//! H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023): a KV budget for long contexts. Every cached key
//! accumulates the attention probability it receives (per layer and per KV head, summed over that head's query
//! heads); a sequence over its budget keeps, per layer and KV head, its most recent tokens plus the older tokens
//! with the largest accumulated scores (the heavy hitters), and evicts the rest.
//!
//! Kept sets differ between heads, yet the paged cache has one block table per sequence: eviction compacts each
//! head's kept keys, values and scores into the sequence's first slots ([`crate::backend::Backend::compact_kv`]),
//! so every head keeps the same number of tokens in the same slots, each slot holding different tokens for
//! different heads. Keys keep the rotary position they were written with; new tokens continue at their absolute
//! position, which [`H2oState::position`] gives.
//!
//! This module holds the budget, the choice of the kept set and the per-sequence bookkeeping; the scores come from
//! the backend ([`crate::backend::Backend::accumulate_attention`]).

use serde::{Deserialize, Serialize};

/// One part of a budget: a share of the prompt's length or a number of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPart {
    /// A share (0, 1] of the prompt's tokens.
    Ratio(f64),
    /// A number of tokens (at least 1).
    Tokens(usize),
}

impl BudgetPart {
    fn tokens(self, prompt_len: usize) -> usize {
        match self {
            Self::Ratio(r) => ((r * prompt_len as f64).round() as usize).max(1),
            Self::Tokens(n) => n.max(1),
        }
    }

    fn validate(self, what: &str) -> Result<(), String> {
        match self {
            Self::Ratio(r) if !(r > 0.0 && r <= 1.0) => {
                Err(format!("{what} ratio must be in (0, 1], got {r}"))
            }
            Self::Tokens(0) => Err(format!("{what} tokens must be at least 1")),
            _ => Ok(()),
        }
    }
}

/// A sequence's KV budget: heavy hitters plus a recent window (H2O's default: 10% + 10% of the prompt).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KvBudget {
    /// Older tokens kept for their accumulated attention.
    pub heavy: BudgetPart,
    /// Most recent tokens, always kept.
    pub recent: BudgetPart,
}

impl Default for KvBudget {
    fn default() -> Self {
        Self {
            heavy: BudgetPart::Ratio(0.1),
            recent: BudgetPart::Ratio(0.1),
        }
    }
}

impl KvBudget {
    /// Checks both parts: a message naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.heavy.validate("heavy")?;
        self.recent.validate("recent")
    }

    /// Token counts for a prompt of `prompt_len` tokens.
    pub fn resolve(&self, prompt_len: usize) -> H2oBudget {
        H2oBudget {
            heavy: self.heavy.tokens(prompt_len),
            recent: self.recent.tokens(prompt_len),
        }
    }
}

/// A budget in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2oBudget {
    /// Heavy hitters kept.
    pub heavy: usize,
    /// Recent tokens kept.
    pub recent: usize,
}

impl H2oBudget {
    /// Tokens kept after an eviction.
    pub fn total(&self) -> usize {
        self.heavy + self.recent
    }
}

/// The logical indices (ascending) of the tokens one layer and KV head keeps out of `scores.len()`: the last
/// `budget.recent`, and the `budget.heavy` highest-scoring of the others (ties go to the later token). Everything
/// when the budget covers it.
pub fn keep_set(scores: &[f32], budget: H2oBudget) -> Vec<u32> {
    let n = scores.len();
    if n <= budget.total() {
        return (0..n as u32).collect();
    }
    let older = n - budget.recent;
    let mut ranked: Vec<u32> = (0..older as u32).collect();
    // Best first: higher score, then the later token; only the first `heavy` need be in place.
    let order = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(b.cmp(a))
    };
    if budget.heavy < ranked.len() {
        ranked.select_nth_unstable_by(budget.heavy, order);
    }
    let mut keep: Vec<u32> = ranked[..budget.heavy.min(ranked.len())].to_vec();
    keep.sort_unstable();
    keep.extend(older as u32..n as u32);
    keep
}

/// [`keep_set`] for every layer and head of one sequence (`scores`: `[layer][kv_head][len]` flattened), the
/// lists flattened the same way.
pub fn keep_sets(scores: &[f32], heads_total: usize, len: usize, budget: H2oBudget) -> Vec<u32> {
    debug_assert_eq!(scores.len(), heads_total * len);
    (0..heads_total)
        .flat_map(|h| keep_set(&scores[h * len..(h + 1) * len], budget))
        .collect()
}

/// One sequence's H2O bookkeeping.
#[derive(Debug, Clone)]
pub struct H2oState {
    /// The budget in tokens.
    pub budget: H2oBudget,
    /// Tokens evicted so far (per head: every head keeps the same number).
    pub evicted: usize,
    /// Tokens over the budget tolerated before evicting (evicting in batches frees whole blocks).
    pub slack: usize,
    /// Absolute positions of the tokens kept at the last eviction, per layer and KV head (`[layer * kv_heads +
    /// head]`; empty before the first). Tokens after them sit at `evicted + index`.
    kept: Vec<Vec<u32>>,
}

impl H2oState {
    /// A sequence with `budget`, evicting once it holds `budget.total() + slack` tokens.
    pub fn new(budget: H2oBudget, slack: usize) -> Self {
        Self {
            budget,
            evicted: 0,
            slack,
            kept: Vec::new(),
        }
    }

    /// The absolute position (for RoPE) of the token at cache index `index`, for tokens added after the last
    /// eviction (every head agrees on those).
    pub fn position(&self, index: usize) -> usize {
        self.evicted + index
    }

    /// Whether a sequence holding `len` tokens should evict now.
    pub fn due(&self, len: usize) -> bool {
        len >= self.budget.total() + self.slack.max(1)
    }

    /// The kept sets for a sequence of `len` tokens from its scores (`[layer][kv_head][len]`, flattened): one list
    /// of `budget.total()` ascending cache indices per layer and head, flattened the same way. Records the
    /// eviction.
    pub fn evict(&mut self, scores: &[f32], heads_total: usize, len: usize) -> Vec<u32> {
        let keep = keep_sets(scores, heads_total, len, self.budget);
        self.record(&keep, heads_total, len);
        keep
    }

    /// Records an eviction that kept `keep` ([`keep_sets`]'s lists for this sequence's `len` tokens).
    pub fn record(&mut self, keep: &[u32], heads_total: usize, len: usize) {
        let total = self.budget.total().min(len);
        debug_assert_eq!(keep.len(), heads_total * total);
        let kept = (0..heads_total)
            .map(|h| {
                keep[h * total..(h + 1) * total]
                    .iter()
                    .map(|&i| self.absolute(h, i as usize) as u32)
                    .collect()
            })
            .collect();
        self.kept = kept;
        self.evicted += len - total;
    }

    /// Absolute position of cache index `index` of layer-and-head `h` (before an eviction is recorded).
    fn absolute(&self, h: usize, index: usize) -> usize {
        match self.kept.get(h) {
            Some(k) if index < k.len() => k[index] as usize,
            _ => self.evicted + index,
        }
    }

    /// The absolute positions of the tokens layer-and-head `h` holds in a sequence of `len` tokens.
    pub fn positions(&self, h: usize, len: usize) -> Vec<u32> {
        (0..len).map(|i| self.absolute(h, i) as u32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_resolve_and_validate() {
        let b = KvBudget::default();
        assert_eq!(
            b.resolve(1000),
            H2oBudget {
                heavy: 100,
                recent: 100
            }
        );
        assert_eq!(
            b.resolve(3),
            H2oBudget {
                heavy: 1,
                recent: 1
            }
        );
        let t = KvBudget {
            heavy: BudgetPart::Tokens(7),
            recent: BudgetPart::Ratio(0.5),
        };
        assert_eq!(
            t.resolve(10),
            H2oBudget {
                heavy: 7,
                recent: 5
            }
        );
        assert!(t.validate().is_ok());
        for bad in [
            BudgetPart::Ratio(0.0),
            BudgetPart::Ratio(1.5),
            BudgetPart::Tokens(0),
        ] {
            let k = KvBudget {
                heavy: bad,
                recent: BudgetPart::Tokens(1),
            };
            assert!(k.validate().unwrap_err().contains("heavy"));
        }
        let json: KvBudget =
            serde_json::from_str(r#"{"heavy": {"ratio": 0.2}, "recent": {"tokens": 64}}"#).unwrap();
        assert_eq!(json.heavy, BudgetPart::Ratio(0.2));
        assert_eq!(json.recent, BudgetPart::Tokens(64));
    }

    #[test]
    fn the_recent_window_and_the_heaviest_older_tokens_are_kept() {
        let scores = [5.0, 0.1, 9.0, 0.2, 7.0, 0.0, 100.0, 0.0];
        let budget = H2oBudget {
            heavy: 2,
            recent: 3,
        };
        // Recent: 5, 6, 7 (index 6's large score does not matter). Heavy among 0..5: 2 (9.0) and 4 (7.0).
        assert_eq!(keep_set(&scores, budget), vec![2, 4, 5, 6, 7]);
        // Ties go to the later token; a budget that covers everything keeps everything.
        assert_eq!(
            keep_set(
                &[1.0, 1.0, 1.0, 0.0],
                H2oBudget {
                    heavy: 1,
                    recent: 1
                }
            ),
            vec![2, 3]
        );
        assert_eq!(keep_set(&[1.0, 2.0], budget), vec![0, 1]);
    }

    #[test]
    fn random_scores_never_evict_the_recent_window() {
        let mut x = 0x2545F4914F6CDD1Du64;
        for n in 1..200usize {
            let scores: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 1000) as f32
                })
                .collect();
            let budget = H2oBudget {
                heavy: 1 + n % 7,
                recent: 1 + n % 5,
            };
            let keep = keep_set(&scores, budget);
            assert_eq!(keep.len(), n.min(budget.total()));
            assert!(keep.windows(2).all(|w| w[0] < w[1]));
            for i in n.saturating_sub(budget.recent)..n {
                assert!(keep.contains(&(i as u32)), "n {n}: recent {i} evicted");
            }
            // No evicted older token outscores a kept older one.
            let older = n.saturating_sub(budget.recent);
            if n > budget.total() {
                let min_kept = keep
                    .iter()
                    .filter(|&&i| (i as usize) < older)
                    .map(|&i| scores[i as usize])
                    .fold(f32::INFINITY, f32::min);
                let max_evicted = (0..older)
                    .filter(|i| !keep.contains(&(*i as u32)))
                    .map(|i| scores[i])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert!(max_evicted <= min_kept);
            }
        }
    }

    #[test]
    fn positions_follow_the_kept_tokens_across_evictions() {
        let mut s = H2oState::new(
            H2oBudget {
                heavy: 1,
                recent: 2,
            },
            1,
        );
        assert!(!s.due(3) && s.due(4));
        // Two heads, four tokens: head 0 keeps 1 (heavy), 2, 3; head 1 keeps 0, 2, 3.
        let keep = s.evict(&[0.0, 9.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0], 2, 4);
        assert_eq!(keep, vec![1, 2, 3, 0, 2, 3]);
        assert_eq!(s.evicted, 1);
        assert_eq!(s.positions(0, 3), vec![1, 2, 3]);
        assert_eq!(s.positions(1, 3), vec![0, 2, 3]);
        // A new token lands at cache index 3, absolute position 4.
        assert_eq!(s.position(3), 4);
        assert_eq!(s.positions(0, 4), vec![1, 2, 3, 4]);
        // The next eviction: head 0 keeps its old heavy hitter (absolute 1) and the two newest.
        let keep = s.evict(&[9.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0], 2, 4);
        assert_eq!(keep, vec![0, 2, 3, 1, 2, 3]);
        assert_eq!(s.positions(0, 3), vec![1, 3, 4]);
        assert_eq!(s.positions(1, 3), vec![2, 3, 4]);
        assert_eq!(s.evicted, 2);
        assert_eq!(s.position(3), 5);
    }
}
