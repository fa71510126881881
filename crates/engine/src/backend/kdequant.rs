//! Q4_K and Q6_K weight rows dequantized straight to bf16, for [`super::amx`]'s panels: one pass over fixed-size
//! sub-blocks that the compiler vectorizes, where candle's `to_float` followed by a rounding pass took two (the
//! dequantization of a panel cost as much as its product on the matrix unit).
//!
//! The values are exactly candle's (`to_float`, the same operations in the same order), then rounded to bf16.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::amx::bf16_bits;

/// Values per K-quant super-block.
const QK_K: usize = 256;
/// Bytes of a Q4_K block: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
const Q4K_BYTES: usize = 144;
/// Bytes of a Q6_K block: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
const Q6K_BYTES: usize = 210;

/// Whether [`row_to_bf16`] converts weights of `dtype`.
pub fn supports(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K)
}

/// Dequantizes one raw row of `dtype` into `out` as bf16; false (nothing written) for another type or when the
/// lengths disagree.
pub fn row_to_bf16(dtype: GgmlDType, raw: &[u8], out: &mut [u16]) -> bool {
    let bytes = match dtype {
        GgmlDType::Q4K => Q4K_BYTES,
        GgmlDType::Q6K => Q6K_BYTES,
        _ => return false,
    };
    if !raw.len().is_multiple_of(bytes) || raw.len() / bytes * QK_K != out.len() {
        return false;
    }
    for (block, out) in raw.chunks_exact(bytes).zip(out.chunks_exact_mut(QK_K)) {
        let out: &mut [u16; QK_K] = out.try_into().expect("a whole block");
        match dtype {
            GgmlDType::Q4K => q4k_block(block.try_into().expect("a whole block"), out),
            _ => q6k_block(block.try_into().expect("a whole block"), out),
        }
    }
    true
}

fn half(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

/// ggml's 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4k_block(block: &[u8; Q4K_BYTES], out: &mut [u16; QK_K]) {
    let d = half([block[0], block[1]]);
    let min = half([block[2], block[3]]);
    let scales: &[u8; 12] = block[4..16].try_into().expect("12 scale bytes");
    for (chunk, (qs, out)) in block[16..]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let qs: &[u8; 32] = qs.try_into().expect("32 bytes");
        let (low, high) = out.split_at_mut(32);
        let (sc, m) = scale_min(2 * chunk, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min(2 * chunk + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        for (o, q) in low.iter_mut().zip(qs) {
            *o = bf16_bits(d1 * f32::from(q & 0xF) - m1);
        }
        for (o, q) in high.iter_mut().zip(qs) {
            *o = bf16_bits(d2 * f32::from(q >> 4) - m2);
        }
    }
}

fn q6k_block(block: &[u8; Q6K_BYTES], out: &mut [u16; QK_K]) {
    let d = half([block[208], block[209]]);
    for half_block in 0..2 {
        let ql: &[u8; 64] = block[64 * half_block..][..64].try_into().expect("64 bytes");
        let qh: &[u8; 32] = block[128 + 32 * half_block..][..32]
            .try_into()
            .expect("32 bytes");
        let sc = &block[192 + 8 * half_block..][..8];
        let out = &mut out[128 * half_block..][..128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let scale = |i: usize| d * f32::from(sc[i] as i8);
            out[l] = bf16_bits(scale(is) * f32::from(q1));
            out[l + 32] = bf16_bits(scale(is + 2) * f32::from(q2));
            out[l + 64] = bf16_bits(scale(is + 4) * f32::from(q3));
            out[l + 96] = bf16_bits(scale(is + 6) * f32::from(q4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::qdot::tests::ramp;
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::Device;

    #[test]
    fn rows_equal_candles_values_rounded_to_bf16() {
        let (n, k) = (3, 512);
        // Values of both signs and several magnitudes, so every scale and min is exercised.
        let w = (ramp(n, k, 0.3) * 3.7).unwrap().sin().unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let data = q.data().unwrap();
            let mut got = vec![0u16; n * k];
            for (raw, out) in data
                .chunks_exact(data.len() / n)
                .zip(got.chunks_exact_mut(k))
            {
                assert!(row_to_bf16(dtype, raw, out));
            }
            let want: Vec<u16> = want.iter().map(|&v| bf16_bits(v)).collect();
            assert_eq!(got, want, "{dtype:?}");
        }
    }

    #[test]
    fn other_types_and_lengths_are_declined() {
        let mut out = vec![0u16; 256];
        assert!(!row_to_bf16(GgmlDType::Q8_0, &[0; 34 * 8], &mut out));
        assert!(!row_to_bf16(GgmlDType::Q4K, &[0; 143], &mut out));
        assert!(!row_to_bf16(GgmlDType::Q6K, &[0; 210], &mut out[..255]));
        assert!(row_to_bf16(GgmlDType::Q6K, &[0; 210], &mut out));
    }
}
