//! Benchmark workloads shared with the Python baseline (`benches/baselines/hf_llama8b.py`): long-tailed prompt
//! lengths and deterministic token ids, the same formulas on both sides.

/// Prompt lengths: `n` Pareto-like (α = 1.2) lengths in `[lo, hi]` from a 64-bit LCG; the same formula as the
/// Python baseline's `lengths`.
pub fn prompt_lengths(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
            ((lo as f64 / u.powf(1.0 / 1.2)) as usize).clamp(lo, hi)
        })
        .collect()
}

/// Deterministic token ids for prompts of `lens`, as the Python baseline's `prompts`.
pub fn prompt_tokens(lens: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| ((i as u64 * 7919 + j as u64 * 104729) % (vocab as u64 - 10) + 5) as u32)
                .collect()
        })
        .collect()
}
