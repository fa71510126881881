//! Prepacking (arXiv 2404.09529): prompts of a batch are bin-packed into rows so a prefill pass computes no
//! padding. Each row concatenates whole prompts; positions restart at 0 for every prompt and attention is
//! block-diagonal causal, described by the row's cumulative sequence lengths (the `cu_seqlens` of varlen attention
//! kernels). Rows are filled by first-fit decreasing, the greedy constant-volume packing of the paper.
//!
//! The paper's reference keeps each prompt's last token out of the packed prefill and feeds it as the first decode
//! step; that choice belongs to the caller, which passes the lengths it wants packed.

/// One packed row: whole prompts laid end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    /// Indices into the input lengths, in the order the prompts are laid out in the row.
    pub prompts: Vec<usize>,
    /// Cumulative lengths: `prompts.len() + 1` entries, starting at 0 and ending at `tokens`; prompt `j` of the
    /// row occupies `cu_seqlens[j]..cu_seqlens[j + 1]`.
    pub cu_seqlens: Vec<u32>,
    /// Position of every token of the row inside its own prompt (restarting at 0 per prompt).
    pub positions: Vec<u32>,
    /// Tokens in the row (no padding).
    pub tokens: usize,
}

/// The rows of a packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// The rows, in creation order.
    pub rows: Vec<PackedRow>,
    /// Token capacity of every row.
    pub capacity: usize,
}

/// Why a batch could not be packed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// No prompts were given.
    #[error("no prompts to pack")]
    Empty,
    /// A prompt is longer than the row capacity.
    #[error("prompt {index} has {len} tokens, more than the row capacity {capacity}")]
    TooLong {
        /// Index of the prompt.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The row capacity.
        capacity: usize,
    },
    /// A prompt has no tokens.
    #[error("prompt {index} is empty")]
    EmptyPrompt {
        /// Index of the prompt.
        index: usize,
    },
}

/// First-fit decreasing: sorts the prompts by length, longest first (ties by index), and puts each in the first
/// row with room, opening a row when none has. `capacity` is the row size in tokens; `None` uses the longest
/// prompt, as the paper does. Uses at most `11/9 * OPT + 6/9` rows (Dósa, 2007).
pub fn pack_first_fit_decreasing(
    lengths: &[usize],
    capacity: Option<usize>,
) -> Result<Packing, PackError> {
    if lengths.is_empty() {
        return Err(PackError::Empty);
    }
    if let Some(index) = lengths.iter().position(|&len| len == 0) {
        return Err(PackError::EmptyPrompt { index });
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let capacity = capacity.unwrap_or(longest);
    if let Some(index) = lengths.iter().position(|&len| len > capacity) {
        return Err(PackError::TooLong {
            index,
            len: lengths[index],
            capacity,
        });
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // A stable sort keeps equal lengths in index order.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));

    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    for index in order {
        let len = lengths[index];
        match used.iter().position(|&u| u + len <= capacity) {
            Some(row) => {
                members[row].push(index);
                used[row] += len;
            }
            None => {
                members.push(vec![index]);
                used.push(len);
            }
        }
    }
    let rows = members
        .into_iter()
        .map(|prompts| build_row(prompts, lengths))
        .collect();
    Ok(Packing { rows, capacity })
}

/// Lays out one row's prompts: cumulative lengths and restarted positions.
fn build_row(prompts: Vec<usize>, lengths: &[usize]) -> PackedRow {
    let tokens: usize = prompts.iter().map(|&i| lengths[i]).sum();
    let mut cu_seqlens = Vec::with_capacity(prompts.len() + 1);
    let mut positions = Vec::with_capacity(tokens);
    let mut offset = 0usize;
    cu_seqlens.push(0);
    for &i in &prompts {
        positions.extend((0..lengths[i]).map(|p| p as u32));
        offset += lengths[i];
        cu_seqlens.push(offset as u32);
    }
    PackedRow {
        prompts,
        cu_seqlens,
        positions,
        tokens,
    }
}

impl Packing {
    /// Tokens of all rows (the prompts' total length: packing adds no padding).
    pub fn total_tokens(&self) -> usize {
        self.rows.iter().map(|row| row.tokens).sum()
    }

    /// Fraction of a `rows × capacity` rectangle that would be padding if every row were padded to the capacity
    /// (0 for no rows).
    pub fn padding_ratio(&self) -> f64 {
        let area = self.rows.len() * self.capacity;
        if area == 0 {
            return 0.0;
        }
        (area - self.total_tokens()) as f64 / area as f64
    }
}

/// Tokens the padded baseline computes: every prompt padded to the longest (0 for no prompts).
pub fn padded_tokens(lengths: &[usize]) -> usize {
    lengths.len() * lengths.iter().copied().max().unwrap_or(0)
}

/// SplitMix64: the small seeded generator of the engine's property tests.
#[cfg(test)]
pub(crate) struct TestRng(pub(crate) u64);

#[cfg(test)]
impl TestRng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every structural invariant of a packing of `lengths`.
    fn check(lengths: &[usize], packing: &Packing) {
        let mut seen = vec![0usize; lengths.len()];
        for row in &packing.rows {
            assert!(!row.prompts.is_empty());
            assert!(row.tokens <= packing.capacity, "row over capacity");
            assert_eq!(row.cu_seqlens.len(), row.prompts.len() + 1);
            assert_eq!(row.cu_seqlens[0], 0);
            assert_eq!(*row.cu_seqlens.last().unwrap() as usize, row.tokens);
            assert_eq!(row.positions.len(), row.tokens);
            for (j, &p) in row.prompts.iter().enumerate() {
                seen[p] += 1;
                let (a, b) = (row.cu_seqlens[j] as usize, row.cu_seqlens[j + 1] as usize);
                assert_eq!(b - a, lengths[p]);
                let expected: Vec<u32> = (0..lengths[p] as u32).collect();
                assert_eq!(&row.positions[a..b], &expected[..]);
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "each prompt exactly once");
        assert_eq!(packing.total_tokens(), lengths.iter().sum::<usize>());
    }

    /// Exact minimum number of rows by exhaustive search (small inputs only).
    fn optimum(lengths: &[usize], capacity: usize) -> usize {
        fn go(items: &[usize], cap: usize, bins: &mut Vec<usize>, best: &mut usize) {
            if bins.len() >= *best {
                return;
            }
            let Some((&item, rest)) = items.split_first() else {
                *best = bins.len();
                return;
            };
            for b in 0..bins.len() {
                if bins[b] + item <= cap {
                    bins[b] += item;
                    go(rest, cap, bins, best);
                    bins[b] -= item;
                }
            }
            bins.push(item);
            go(rest, cap, bins, best);
            bins.pop();
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let mut best = usize::MAX;
        go(&sorted, capacity, &mut Vec::new(), &mut best);
        best
    }

    #[test]
    fn errors() {
        assert_eq!(pack_first_fit_decreasing(&[], None), Err(PackError::Empty));
        assert_eq!(
            pack_first_fit_decreasing(&[3, 0, 2], None),
            Err(PackError::EmptyPrompt { index: 1 })
        );
        assert_eq!(
            pack_first_fit_decreasing(&[3, 9, 2], Some(8)),
            Err(PackError::TooLong {
                index: 1,
                len: 9,
                capacity: 8
            })
        );
        assert!(pack_first_fit_decreasing(&[1], Some(0)).is_err());
    }

    #[test]
    fn example_layout() {
        let lengths = [5, 3, 8, 2, 1];
        let packing = pack_first_fit_decreasing(&lengths, None).unwrap();
        check(&lengths, &packing);
        assert_eq!(packing.capacity, 8);
        let prompts: Vec<&[usize]> = packing.rows.iter().map(|r| &r.prompts[..]).collect();
        assert_eq!(prompts, vec![&[2][..], &[0, 1][..], &[3, 4][..]]);
        assert_eq!(packing.rows[1].cu_seqlens, vec![0, 5, 8]);
        assert_eq!(packing.rows[1].positions, vec![0, 1, 2, 3, 4, 0, 1, 2]);
        assert_eq!(packing.rows[2].tokens, 3);
        assert!((packing.padding_ratio() - 5.0 / 24.0).abs() < 1e-12);
        assert_eq!(padded_tokens(&lengths), 40);
        assert_eq!(padded_tokens(&[]), 0);
    }

    #[test]
    fn ties_keep_index_order() {
        let packing = pack_first_fit_decreasing(&[2, 2, 2, 2], Some(4)).unwrap();
        let prompts: Vec<Vec<usize>> = packing.rows.iter().map(|r| r.prompts.clone()).collect();
        assert_eq!(prompts, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(packing.padding_ratio(), 0.0);
    }

    #[test]
    fn single_tokens_and_full_rows() {
        let ones = vec![1; 10];
        let packing = pack_first_fit_decreasing(&ones, Some(4)).unwrap();
        check(&ones, &packing);
        assert_eq!(packing.rows.len(), 3);
        assert!(packing.rows[0].positions.iter().all(|&p| p == 0));
        assert_eq!(packing.rows[0].cu_seqlens, vec![0, 1, 2, 3, 4]);

        let full = [7, 7, 7];
        let packing = pack_first_fit_decreasing(&full, Some(7)).unwrap();
        check(&full, &packing);
        assert_eq!(packing.rows.len(), 3);
        assert_eq!(packing.padding_ratio(), 0.0);

        let one = pack_first_fit_decreasing(&[1], None).unwrap();
        check(&[1], &one);
        assert_eq!(one.rows.len(), 1);
    }

    #[test]
    fn random_batches_are_valid_and_near_optimal() {
        let mut rng = TestRng(7);
        for case in 0..400 {
            let n = rng.range(1, 60);
            let max = rng.range(1, 300);
            let lengths: Vec<usize> = (0..n).map(|_| rng.range(1, max)).collect();
            let capacity = if case % 2 == 0 {
                None
            } else {
                Some(max + rng.range(0, 200))
            };
            let packing = pack_first_fit_decreasing(&lengths, capacity).unwrap();
            check(&lengths, &packing);
            let cap = packing.capacity;
            let sum: usize = lengths.iter().sum();
            let lower = sum.div_ceil(cap);
            assert!(packing.rows.len() >= lower);
            // First fit leaves at most one row at most half full.
            assert!(packing.rows.len() <= (2 * sum).div_ceil(cap).max(1));
            assert!(packing.total_tokens() <= padded_tokens(&lengths));
        }
    }

    #[test]
    fn ffd_within_its_worst_case_bound_of_the_optimum() {
        let mut rng = TestRng(11);
        for _ in 0..300 {
            let n = rng.range(1, 9);
            let cap = rng.range(2, 40);
            let lengths: Vec<usize> = (0..n).map(|_| rng.range(1, cap)).collect();
            let packing = pack_first_fit_decreasing(&lengths, Some(cap)).unwrap();
            check(&lengths, &packing);
            let opt = optimum(&lengths, cap);
            let sum: usize = lengths.iter().sum();
            assert!(sum.div_ceil(cap) <= opt && opt <= packing.rows.len());
            // rows <= 11/9 OPT + 6/9, in integers.
            assert!(
                9 * packing.rows.len() <= 11 * opt + 6,
                "{lengths:?} cap {cap}"
            );
        }
    }
}
