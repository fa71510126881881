//! Decode-sized products (a few activation rows) with K-quant weights (Q4_K, Q5_K, Q6_K): candle's block dot
//! products, with the weight stream prefetched a row ahead and the rows split into equal tasks over the cores.
//!
//! A decode step reads every weight once; candle's own loop leaves the memory system idle while a row's blocks are
//! multiplied. Asking for the next row's cache lines while this one is multiplied keeps the stream going.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, GgmlType};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Bytes ahead of the block being multiplied whose cache line is asked for.
const PREFETCH_AHEAD: usize = 2048;

/// Whether [`matmul_t`] multiplies weights of `dtype`.
pub fn supports(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

/// `x @ w^T` for `x` of `[m, k]` (row-major f32, `k` a multiple of 256) and `w` the raw blocks of a K-quant
/// `[n, k]` weight of `dtype`, as `[m, n]`; `None` when the type, shape or alignment does not fit.
pub fn matmul_t(dtype: GgmlDType, w: &[u8], n: usize, k: usize, x: &[f32]) -> Option<Vec<f32>> {
    match dtype {
        GgmlDType::Q4K => product::<BlockQ4K>(w, n, k, x),
        GgmlDType::Q5K => product::<BlockQ5K>(w, n, k, x),
        GgmlDType::Q6K => product::<BlockQ6K>(w, n, k, x),
        _ => None,
    }
}

fn product<T: GgmlType<VecDotType = BlockQ8K> + Sync>(
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Option<Vec<f32>> {
    let blocks_per_row = k / T::BLCK_SIZE;
    if k == 0 || !k.is_multiple_of(T::BLCK_SIZE) || !x.len().is_multiple_of(k) {
        return None;
    }
    let weights = super::qgemm::as_blocks::<T>(w).filter(|b| b.len() == n * blocks_per_row)?;
    let m = x.len() / k;
    let mut acts = vec![BlockQ8K::zeros(); m * blocks_per_row];
    for (row, out) in x.chunks_exact(k).zip(acts.chunks_exact_mut(blocks_per_row)) {
        BlockQ8K::from_float(row, out);
    }
    // Results per weight row (`[n, m]`), so each task writes a contiguous slice.
    let mut by_weight = vec![0f32; n * m];
    by_weight
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            for (r, out_row) in out.chunks_exact_mut(m).enumerate() {
                let row = first + r;
                let blocks = &weights[row * blocks_per_row..(row + 1) * blocks_per_row];
                for (o, a) in out_row.iter_mut().zip(acts.chunks_exact(blocks_per_row)) {
                    *o = dot(blocks, a);
                }
            }
        });
    if m == 1 {
        return Some(by_weight);
    }
    let mut out = vec![0f32; m * n];
    for (j, row) in by_weight.chunks_exact(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
    Some(out)
}

/// The dot product of one weight row with one row of 8-bit activation blocks, block by block, the cache lines
/// [`PREFETCH_AHEAD`] bytes on asked for first.
fn dot<T: GgmlType<VecDotType = BlockQ8K>>(w: &[T], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let ahead = (wb as *const T).cast::<u8>().wrapping_add(PREFETCH_AHEAD);
        for line in (0..std::mem::size_of::<T>()).step_by(64) {
            prefetch(ahead.wrapping_add(line));
        }
        sum += T::vec_dot(
            T::BLCK_SIZE,
            std::slice::from_ref(wb),
            std::slice::from_ref(ab),
        );
    }
    sum
}

/// Asks for the cache line holding `at`.
#[allow(unsafe_code)]
#[inline(always)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and reads nothing into the program.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::super::qdot::tests::{quantized_and_reference_product, ramp, worst_gap};
    use super::*;

    #[test]
    fn products_equal_the_dequantized_weights_product() {
        // 150 rows: two tasks, the second partial.
        let (n, k) = (150, 512);
        let w = ramp(n, k, 0.0);
        for m in [1, 3] {
            let x = ramp(m, k, 1.0);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
                let (q, want) = quantized_and_reference_product(&w, dtype, &x);
                let got = matmul_t(dtype, &q.data().unwrap(), n, k, &xs).unwrap();
                assert_eq!(got.len(), m * n);
                let (worst, scale) = worst_gap(&want, &got);
                // 8-bit activations, as candle's own product.
                assert!(worst <= 2e-2 * scale, "{dtype:?} m={m}: {worst} of {scale}");
            }
        }
    }

    #[test]
    fn other_types_and_bad_shapes_are_declined() {
        let q =
            candle_core::quantized::QTensor::quantize(&ramp(4, 256, 0.0), GgmlDType::Q4K).unwrap();
        let data = q.data().unwrap();
        assert!(matmul_t(GgmlDType::Q8_0, &data, 4, 256, &[0.0; 256]).is_none());
        assert!(matmul_t(GgmlDType::Q4K, &data, 5, 256, &[0.0; 256]).is_none());
        assert!(matmul_t(GgmlDType::Q4K, &data, 4, 256, &[0.0; 100]).is_none());
        assert_eq!(
            matmul_t(GgmlDType::Q4K, &data, 4, 256, &[0.0; 512])
                .unwrap()
                .len(),
            8
        );
    }
}
