//! Quantized products for the GGUF block types whose candle kernels are scalar loops: Q5_0 (most linear layers of
//! Qwen2.5-0.5B, whose width 896 is no multiple of the K-quants' 256) and Q4_1 (every layer of SmolLM2), plus Q8_0.
//!
//! The activations are quantized to 8 bits per 32-element block ([`ActBlock`]); each weight row is unpacked once to
//! signed bytes ([`WeightBlock`]) and dotted with every activation row, so a prefill of many rows pays the unpacking
//! once per weight row. The dot product uses AVX2 when the build targets it (x86-64-v3, `.cargo/config.toml`) and a
//! portable loop otherwise, which is also the reference the tests hold the AVX2 path to.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block, in every type here.
pub const BLOCK: usize = 32;

/// The quantized weight layouts this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKind {
    /// `d: f16, qh: [u8; 4], qs: [u8; 16]`: x = d · (q − 16), q of 5 bits.
    Q5_0,
    /// `d: f16, m: f16, qs: [u8; 16]`: x = d · q + m, q of 4 bits.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`: x = d · q.
    Q8_0,
}

impl QKind {
    /// The kind of a GGUF type, when this module handles it.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q5_0 => 22,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// 32 activations as `d · qs`, with `s = d · Σ qs` for the offset term of Q4_1.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActBlock {
    /// The scale.
    pub d: f32,
    /// `d · Σ qs`.
    pub s: f32,
    /// The quantized values.
    pub qs: [i8; BLOCK],
}

/// 32 weights unpacked as `d · qs + m`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct WeightBlock {
    /// The scale.
    pub d: f32,
    /// The offset (0 but for Q4_1).
    pub m: f32,
    /// The quantized values, signed.
    pub qs: [i8; BLOCK],
}

const EMPTY_WEIGHT: WeightBlock = WeightBlock {
    d: 0.0,
    m: 0.0,
    qs: [0; BLOCK],
};

/// Quantizes one row of activations (its length a multiple of [`BLOCK`]) to 8-bit blocks, appended to `out`.
pub fn quantize_row(x: &[f32], out: &mut Vec<ActBlock>) {
    for chunk in x.chunks_exact(BLOCK) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let exact = amax / 127.0;
        let inv = if exact > 0.0 { 1.0 / exact } else { 0.0 };
        // The scale rounded to f16, as ggml's Q8_0 stores it.
        let d = f16::from_f32(exact).to_f32();
        let mut qs = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(chunk) {
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            sum += i32::from(*q);
        }
        out.push(ActBlock {
            d,
            s: d * sum as f32,
            qs,
        });
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Unpacks one weight row (`out.len()` blocks of `kind`) into `out`.
pub fn unpack_row(kind: QKind, row: &[u8], out: &mut [WeightBlock]) {
    simd::unpack_row(kind, row, out)
}

/// [`unpack_row`] without SIMD: the reference.
pub fn unpack_row_portable(kind: QKind, row: &[u8], out: &mut [WeightBlock]) {
    for (b, raw) in out.iter_mut().zip(row.chunks_exact(kind.block_bytes())) {
        match kind {
            QKind::Q5_0 => {
                let qh = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
                let qs = &raw[6..22];
                b.d = half_at(raw, 0);
                b.m = 0.0;
                for (j, &q) in qs.iter().enumerate() {
                    let lo = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                    let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                    b.qs[j] = lo as i8 - 16;
                    b.qs[j + 16] = hi as i8 - 16;
                }
            }
            QKind::Q4_1 => {
                b.d = half_at(raw, 0);
                b.m = half_at(raw, 2);
                for j in 0..16 {
                    b.qs[j] = (raw[4 + j] & 0x0F) as i8;
                    b.qs[j + 16] = (raw[4 + j] >> 4) as i8;
                }
            }
            QKind::Q8_0 => {
                b.d = half_at(raw, 0);
                b.m = 0.0;
                for (q, &r) in b.qs.iter_mut().zip(&raw[2..34]) {
                    *q = r as i8;
                }
            }
        }
    }
}

/// `Σ_j w_j · a_j` over matching blocks, portable.
pub fn dot_portable(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let int: i32 =
                w.qs.iter()
                    .zip(&a.qs)
                    .map(|(&x, &y)| i32::from(x) * i32::from(y))
                    .sum();
            w.d * a.d * int as f32 + w.m * a.s
        })
        .sum()
}

/// `Σ_j w_j · a_j` over matching blocks, with AVX2 where the build has it.
#[inline]
pub fn dot(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
    simd::dot(w, a)
}

// The implementation this build uses: AVX2 where the build targets it, else `portable`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use avx2 as simd;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
use portable as simd;

/// The operations of the AVX2 module without SIMD: the fallback on other CPUs.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
mod portable {
    use super::{
        dot_portable, unpack_row_portable, ActBlock, QKind, WeightBlock, BLOCK, EMPTY_WEIGHT,
    };

    pub use super::dot_portable as dot;
    pub use super::unpack_row_portable as unpack_row;

    pub fn dot4(w: &[WeightBlock], a: [&[ActBlock]; 4]) -> [f32; 4] {
        a.map(|a| dot_portable(w, a))
    }

    pub fn dot_raw(kind: QKind, row: &[u8], a: &[ActBlock]) -> f32 {
        let mut unpacked = vec![EMPTY_WEIGHT; a.len()];
        unpack_row_portable(kind, row, &mut unpacked);
        dot_portable(&unpacked, a)
    }

    pub fn dequantize_row(kind: QKind, row: &[u8], out: &mut [f32]) {
        let mut unpacked = vec![EMPTY_WEIGHT; out.len() / BLOCK];
        unpack_row_portable(kind, row, &mut unpacked);
        for (b, out) in unpacked.iter().zip(out.chunks_exact_mut(BLOCK)) {
            for (o, &q) in out.iter_mut().zip(&b.qs) {
                *o = b.d * f32::from(q) + b.m;
            }
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[allow(unsafe_code)]
mod avx2 {
    //! SAFETY (every `unsafe` block here): the build targets AVX2 and FMA (the module's cfg), so the intrinsics
    //! exist on this CPU; every load reads 16 or 32 bytes inside a block of a slice whose length was checked.
    use super::{ActBlock, QKind, WeightBlock};
    use std::arch::x86_64::*;

    /// How far ahead of the current block the weight stream is prefetched, in bytes.
    const PREFETCH_AHEAD: usize = 2048;

    /// The 32 values of one raw weight block as signed bytes in element order, and its scale and offset.
    #[inline(always)]
    unsafe fn expand(kind: QKind, raw: &[u8]) -> (__m256i, f32, f32) {
        let d = super::half_at(raw, 0);
        match kind {
            QKind::Q5_0 => {
                let qh = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
                let low = nibbles(raw.as_ptr().add(6));
                // 0x10 in byte j where bit j of qh is set, then x = (nibble | that) − 16.
                let high = _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(0x10));
                let x = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(16));
                (x, d, 0.0)
            }
            QKind::Q4_1 => (nibbles(raw.as_ptr().add(4)), d, super::half_at(raw, 2)),
            QKind::Q8_0 => (_mm256_loadu_si256(raw.as_ptr().add(2).cast()), d, 0.0),
        }
    }

    /// 16 bytes of nibbles as 32 bytes: the low nibbles (elements 0–15), then the high ones (16–31).
    #[inline(always)]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        let q = _mm_loadu_si128(qs.cast());
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// 0xFF in byte j where bit j of `bits` is set, else 0.
    #[inline(always)]
    unsafe fn bit_bytes(bits: u32) -> __m256i {
        // Byte j takes byte j / 8 of `bits` (each 128-bit lane holds all four), then tests bit j % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
    }

    /// Σ x_j · y_j of 32 signed bytes, as eight f32 partial sums.
    #[inline(always)]
    unsafe fn products(x: __m256i, y: __m256i) -> __m256 {
        // |x| · (y with x's sign) = x · y, as the unsigned × signed bytes maddubs takes.
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn sum(acc: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// The dot product of [`super::dot`].
    pub fn dot(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut offsets = 0f32;
            for (wb, ab) in w.iter().zip(a) {
                let x = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                let y = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), products(x, y), acc);
                offsets += wb.m * ab.s;
            }
            sum(acc) + offsets
        }
    }

    /// The dot products of one unpacked weight row with four activation rows, four accumulators in flight.
    pub fn dot4(w: &[WeightBlock], a: [&[ActBlock]; 4]) -> [f32; 4] {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offsets = [0f32; 4];
            for (i, wb) in w.iter().enumerate() {
                let x = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                let ax = _mm256_sign_epi8(x, x);
                for r in 0..4 {
                    let ab = a[r].get_unchecked(i);
                    let y = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                    let pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                    let quads = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), quads, acc[r]);
                    offsets[r] += wb.m * ab.s;
                }
            }
            std::array::from_fn(|r| sum(acc[r]) + offsets[r])
        }
    }

    /// The dot product of a raw weight row of `kind` with activation blocks, unpacking as it goes.
    pub fn dot_raw(kind: QKind, row: &[u8], a: &[ActBlock]) -> f32 {
        match kind {
            QKind::Q5_0 => {
                dot_raw_of::<22, false>(row, a, |raw| unsafe { expand(QKind::Q5_0, raw) })
            }
            QKind::Q4_1 => {
                dot_raw_of::<20, true>(row, a, |raw| unsafe { expand(QKind::Q4_1, raw) })
            }
            QKind::Q8_0 => {
                dot_raw_of::<34, false>(row, a, |raw| unsafe { expand(QKind::Q8_0, raw) })
            }
        }
    }

    /// [`dot_raw`] for blocks of `BYTES` bytes, two blocks at a time into two accumulators; `OFFSET` when the
    /// blocks carry an offset (Q4_1).
    #[inline(always)]
    fn dot_raw_of<const BYTES: usize, const OFFSET: bool>(
        row: &[u8],
        a: &[ActBlock],
        expand: impl Fn(&[u8]) -> (__m256i, f32, f32),
    ) -> f32 {
        // One block into an accumulator and an offset sum.
        let step = |raw: &[u8], ab: &ActBlock, acc: &mut __m256, offset: &mut f32| unsafe {
            let (x, d, m) = expand(raw);
            let y = _mm256_loadu_si256(ab.qs.as_ptr().cast());
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), products(x, y), *acc);
            if OFFSET {
                *offset += m * ab.s;
            }
        };
        unsafe {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut off0, mut off1) = (0f32, 0f32);
            let n = (row.len() / BYTES).min(a.len());
            let pairs = row[..n / 2 * 2 * BYTES]
                .chunks_exact(2 * BYTES)
                .zip(a.chunks_exact(2));
            for (raw, ab) in pairs {
                // The weights stream from memory once per token: ask for them well ahead.
                _mm_prefetch::<_MM_HINT_T0>(raw.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
                step(&raw[..BYTES], &ab[0], &mut acc0, &mut off0);
                step(&raw[BYTES..], &ab[1], &mut acc1, &mut off1);
            }
            if n % 2 == 1 {
                step(
                    &row[(n - 1) * BYTES..n * BYTES],
                    &a[n - 1],
                    &mut acc0,
                    &mut off0,
                );
            }
            sum(_mm256_add_ps(acc0, acc1)) + off0 + off1
        }
    }

    /// Dequantizes one raw weight row into `out` (whole blocks), as [`super::dequantize_row`].
    pub fn dequantize_row(kind: QKind, row: &[u8], out: &mut [f32]) {
        for (raw, out) in row
            .chunks_exact(kind.block_bytes())
            .zip(out.chunks_exact_mut(super::BLOCK))
        {
            unsafe {
                let (x, d, m) = expand(kind, raw);
                let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
                let halves = [_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1)];
                for (h, half) in halves.into_iter().enumerate() {
                    let wide = [half, _mm_unpackhi_epi64(half, half)];
                    for (q, eight) in wide.into_iter().enumerate() {
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight));
                        let at = out.as_mut_ptr().add(h * 16 + q * 8);
                        _mm256_storeu_ps(at, _mm256_fmadd_ps(f, d, m));
                    }
                }
            }
        }
    }

    /// Unpacks one raw weight row, as [`super::unpack_row`].
    pub fn unpack_row(kind: QKind, row: &[u8], out: &mut [WeightBlock]) {
        for (b, raw) in out.iter_mut().zip(row.chunks_exact(kind.block_bytes())) {
            unsafe {
                let (x, d, m) = expand(kind, raw);
                _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), x);
                b.d = d;
                b.m = m;
            }
        }
    }
}

/// [`dot`] of one weight row with four activation rows (each at least `w.len()` blocks).
#[inline]
pub fn dot4(w: &[WeightBlock], a: [&[ActBlock]; 4]) -> [f32; 4] {
    assert!(
        a.iter().all(|a| a.len() >= w.len()),
        "activation rows shorter than the weight row"
    );
    simd::dot4(w, a)
}

/// The dot product of a raw weight row of `kind` (whole blocks) with activation blocks.
#[inline]
pub fn dot_raw(kind: QKind, row: &[u8], a: &[ActBlock]) -> f32 {
    simd::dot_raw(kind, row, a)
}

/// Dequantizes one raw weight row of `kind` into `out` (its length the row's element count).
pub fn dequantize_row(kind: QKind, row: &[u8], out: &mut [f32]) {
    simd::dequantize_row(kind, row, out)
}

/// Rows of weights per parallel task.
const ROWS_PER_TASK: usize = 128;

/// `x @ w^T` for `x` of `[m, k]` (row-major) and `w` a quantized `[n, k]` weight of `kind`, as `[m, n]`.
pub fn matmul_t(kind: QKind, w: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let blocks = k / BLOCK;
    let m = x.len() / k.max(1);
    let row_bytes = blocks * kind.block_bytes();
    debug_assert_eq!(w.len(), n * row_bytes);
    let mut acts = Vec::with_capacity(m * blocks);
    for row in x.chunks_exact(k) {
        quantize_row(row, &mut acts);
    }
    // Results per weight row (`[n, m]`), so each task writes a contiguous slice.
    let mut by_weight = vec![0f32; n * m];
    by_weight
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            if m == 1 {
                for (r, o) in out.iter_mut().enumerate() {
                    let at = (first + r) * row_bytes;
                    *o = dot_raw(kind, &w[at..at + row_bytes], &acts);
                }
                return;
            }
            let mut unpacked = vec![EMPTY_WEIGHT; blocks];
            for (r, out_row) in out.chunks_exact_mut(m).enumerate() {
                let at = (first + r) * row_bytes;
                unpack_row(kind, &w[at..at + row_bytes], &mut unpacked);
                let rows: Vec<&[ActBlock]> = acts.chunks_exact(blocks).collect();
                let mut fours = out_row.chunks_exact_mut(4);
                for (o, r) in (&mut fours).zip(rows.chunks_exact(4)) {
                    o.copy_from_slice(&dot4(&unpacked, [r[0], r[1], r[2], r[3]]));
                }
                let done = m / 4 * 4;
                for (o, act) in fours.into_remainder().iter_mut().zip(&rows[done..]) {
                    *o = dot(&unpacked, act);
                }
            }
        });
    if m == 1 {
        return by_weight;
    }
    let mut out = vec![0f32; m * n];
    for (j, row) in by_weight.chunks_exact(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// `w` quantized to `dtype`, and `x @ w^T` with the dequantized weight (the reference of the fast products).
    pub(crate) fn quantized_and_reference_product(
        w: &Tensor,
        dtype: GgmlDType,
        x: &Tensor,
    ) -> (QTensor, Vec<f32>) {
        let q = QTensor::quantize(w, dtype).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let want = x
            .matmul(&deq.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q, want)
    }

    /// The largest |want − got| and the largest |want|.
    pub(crate) fn worst_gap(want: &[f32], got: &[f32]) -> (f32, f32) {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (worst, scale)
    }

    /// A `[rows, cols]` test weight or activation: a sine ramp whose magnitude varies, so blocks get unlike scales.
    pub(crate) fn ramp(rows: usize, cols: usize, shift: f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37 + shift).sin() * (1.0 + (i % 7) as f32))
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn unpacked_rows_equal_candles_dequantization() {
        let t = ramp(4, 128, 0.3);
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let kind = QKind::of(dtype).unwrap();
            let data = q.data().unwrap();
            let mut blocks = vec![EMPTY_WEIGHT; 4 * 128 / BLOCK];
            let mut reference = blocks.clone();
            for ((row, out), slow) in data
                .chunks_exact(4 * kind.block_bytes())
                .zip(blocks.chunks_exact_mut(4))
                .zip(reference.chunks_exact_mut(4))
            {
                unpack_row(kind, row, out);
                unpack_row_portable(kind, row, slow);
                let mut acts = Vec::new();
                quantize_row(&want[..128], &mut acts);
                let (fused, plain) = (dot_raw(kind, row, &acts), dot_portable(slow, &acts));
                assert!(
                    (fused - plain).abs() <= 1e-4 * plain.abs().max(1.0),
                    "{dtype:?}"
                );
            }
            for (a, b) in blocks.iter().zip(&reference) {
                assert_eq!((a.d, a.m, a.qs), (b.d, b.m, b.qs), "{dtype:?}");
            }
            let got: Vec<f32> = blocks
                .iter()
                .flat_map(|b| b.qs.map(|q| b.d * f32::from(q) + b.m))
                .collect();
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{dtype:?}: {worst}");
        }
    }

    #[test]
    fn the_fast_dot_equals_the_portable_one() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
            .collect();
        let mut acts = Vec::new();
        quantize_row(&x, &mut acts);
        let w: Vec<WeightBlock> = (0..8)
            .map(|b| WeightBlock {
                d: 0.01 * (b + 1) as f32,
                m: if b % 2 == 0 { -0.05 } else { 0.0 },
                qs: std::array::from_fn(|j| ((j * 7 + b * 3) % 32) as i8 - 16),
            })
            .collect();
        let (fast, slow) = (dot(&w, &acts), dot_portable(&w, &acts));
        assert!(
            (fast - slow).abs() <= 1e-4 * slow.abs().max(1.0),
            "{fast} vs {slow}"
        );
    }

    #[test]
    fn products_match_the_dequantized_weights() {
        let (n, k) = (40, 256);
        let w = ramp(n, k, 0.0);
        for m in [1, 3, 17] {
            let x = ramp(m, k, 1.0);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for dtype in [GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let (q, want) = quantized_and_reference_product(&w, dtype, &x);
                let got = matmul_t(QKind::of(dtype).unwrap(), &q.data().unwrap(), n, k, &xs);
                assert_eq!(got.len(), m * n);
                let (worst, scale) = worst_gap(&want, &got);
                // Only the activations' 8-bit rounding separates the two.
                assert!(worst < 0.02 * scale, "{dtype:?} m={m}: {worst} of {scale}");
            }
        }
    }
}
