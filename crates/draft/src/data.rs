//! Training data: token sequences whose every token carries a weight (how much predicting it counts), cut into
//! windows of `len + 1` tokens, and served in batches whose order is a pure function of the seed and the step,
//! so a resumed run sees exactly the batches an uninterrupted one would.

use candle_core::{Device, Tensor};

use crate::DraftError;

/// One tokenized text with the weight of predicting each of its tokens (the first token's is unused).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// One weight per token.
    pub weights: Vec<f32>,
}

impl Example {
    /// Every token counts fully (plain text).
    pub fn plain(tokens: Vec<u32>) -> Self {
        let weights = vec![1.0; tokens.len()];
        Self { tokens, weights }
    }

    /// A prompt (its tokens counted at `prompt_weight`) followed by a completion (counted fully).
    pub fn completion(prompt: &[u32], completion: &[u32], prompt_weight: f32) -> Self {
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(completion);
        let mut weights = vec![prompt_weight; prompt.len()];
        weights.resize(tokens.len(), 1.0);
        Self { tokens, weights }
    }
}

/// One row of a batch: `len + 1` tokens and the weights of tokens 1..=len.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    tokens: Vec<u32>,
    weights: Vec<f32>,
}

/// Windows of a fixed length and the seeded order they are served in.
#[derive(Debug, Clone)]
pub struct Windows {
    len: usize,
    rows: Vec<Window>,
    seed: u64,
}

/// A batch as tensors: inputs, targets (the inputs shifted by one) and weights, each `[rows, len]`.
pub struct Batch {
    /// Input ids (u32).
    pub ids: Tensor,
    /// The token to predict at each position (u32).
    pub targets: Tensor,
    /// The weight of each prediction (f32).
    pub weights: Tensor,
    /// Positions with a non-zero weight.
    pub counted: usize,
}

impl Windows {
    /// Plain text: the examples joined, `separator` between them, cut into consecutive windows of `len` + 1
    /// tokens (each window starts where the previous one's inputs ended).
    pub fn packed(examples: &[Example], separator: u32, len: usize, seed: u64) -> Self {
        let mut tokens = Vec::new();
        let mut weights = Vec::new();
        for e in examples {
            tokens.extend_from_slice(&e.tokens);
            weights.extend_from_slice(&e.weights);
            tokens.push(separator);
            weights.push(1.0);
        }
        let mut rows = Vec::new();
        let mut start = 0;
        while start + len < tokens.len() {
            rows.push(Window {
                tokens: tokens[start..start + len + 1].to_vec(),
                weights: weights[start + 1..start + len + 1].to_vec(),
            });
            start += len;
        }
        Self { len, rows, seed }
    }

    /// One window per example: its last `len` + 1 tokens (where a completion ends), shorter ones padded with
    /// `pad` at weight zero. Examples with nothing weighted are dropped.
    pub fn per_example(examples: &[Example], pad: u32, len: usize, seed: u64) -> Self {
        let rows = examples
            .iter()
            .filter_map(|e| {
                let from = e.tokens.len().saturating_sub(len + 1);
                let mut tokens = e.tokens[from..].to_vec();
                let mut weights = e.weights[from..].to_vec();
                weights.remove(0);
                tokens.resize(len + 1, pad);
                weights.resize(len, 0.0);
                weights
                    .iter()
                    .any(|w| *w > 0.0)
                    .then_some(Window { tokens, weights })
            })
            .collect();
        Self { len, rows, seed }
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Tokens per window.
    pub fn window_len(&self) -> usize {
        self.len
    }

    /// The rows of batch `step` of `rows` windows: epoch after epoch, each a permutation drawn from the seed and
    /// the epoch's number.
    fn indices(&self, step: u64, rows: usize) -> Vec<usize> {
        let n = self.rows.len();
        let mut out = Vec::with_capacity(rows);
        let first = step as usize * rows;
        let mut epoch = usize::MAX;
        let mut order = Vec::new();
        for i in first..first + rows {
            if i / n != epoch {
                epoch = i / n;
                order = permutation(
                    n,
                    self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
            }
            out.push(order[i % n]);
        }
        out
    }

    /// Batch `step` of `rows` windows.
    pub fn batch(&self, step: u64, rows: usize) -> Result<Batch, DraftError> {
        if self.rows.is_empty() {
            return Err(DraftError::Invalid(format!(
                "no training window of {} tokens: give more text",
                self.len
            )));
        }
        let mut ids = Vec::with_capacity(rows * self.len);
        let mut targets = Vec::with_capacity(rows * self.len);
        let mut weights = Vec::with_capacity(rows * self.len);
        for i in self.indices(step, rows) {
            let w = &self.rows[i];
            ids.extend_from_slice(&w.tokens[..self.len]);
            targets.extend_from_slice(&w.tokens[1..]);
            weights.extend_from_slice(&w.weights);
        }
        let counted = weights.iter().filter(|w| **w > 0.0).count();
        let shape = (rows, self.len);
        Ok(Batch {
            ids: Tensor::from_vec(ids, shape, &Device::Cpu)?,
            targets: Tensor::from_vec(targets, shape, &Device::Cpu)?,
            weights: Tensor::from_vec(weights, shape, &Device::Cpu)?,
            counted,
        })
    }
}

/// A permutation of `0..n` from `seed` (Fisher–Yates on SplitMix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// SplitMix64: the next number of the stream `state`.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_windows_overlap_by_one_token_and_cover_the_text() {
        let e = Example::plain((0..10).collect());
        let w = Windows::packed(&[e], 99, 4, 1);
        // 0..10 then 99: windows [0..=4], [4..=8]; the rest cannot fill one.
        assert_eq!(w.len(), 2);
        assert_eq!(w.rows[0].tokens, vec![0, 1, 2, 3, 4]);
        assert_eq!(w.rows[1].tokens, vec![4, 5, 6, 7, 8]);
    }

    #[test]
    fn per_example_windows_keep_the_end_and_pad_at_weight_zero() {
        let long = Example::completion(&[1, 2, 3, 4, 5, 6], &[7, 8], 0.0);
        let short = Example::completion(&[1], &[2], 0.5);
        let unweighted = Example::completion(&[1, 2], &[], 0.0);
        let w = Windows::per_example(&[long, short, unweighted], 0, 4, 1);
        assert_eq!(w.len(), 2);
        assert_eq!(w.rows[0].tokens, vec![4, 5, 6, 7, 8]);
        assert_eq!(w.rows[0].weights, vec![0.0, 0.0, 1.0, 1.0]);
        assert_eq!(w.rows[1].tokens, vec![1, 2, 0, 0, 0]);
        assert_eq!(w.rows[1].weights, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn batches_depend_only_on_seed_and_step_and_cover_each_epoch() {
        let examples: Vec<Example> = (0..7).map(|i| Example::plain(vec![i; 3])).collect();
        let w = Windows::per_example(&examples, 0, 2, 5);
        let a = w.indices(3, 4);
        assert_eq!(a, w.clone().indices(3, 4));
        let mut epoch: Vec<usize> = (0..7).flat_map(|s| w.indices(s, 1)).collect();
        epoch.sort_unstable();
        assert_eq!(epoch, (0..7).collect::<Vec<_>>());
        let b = w.batch(0, 2).unwrap();
        assert_eq!(b.ids.dims(), &[2, 2]);
        assert_eq!(b.counted, 4);
    }
}
