//! Products of bf16 panels with AVX-512's bf16 dot instruction (`vdpbf16ps`), for CPUs that have AVX512-BF16 but
//! no AMX (AMD Zen 4 and later, for example): [`super::qgemm`]'s third panel kernel.
//!
//! `vdpbf16ps` multiplies 16 pairs of bf16 values by 16 other pairs and adds the products to 16 f32 sums: twice the
//! multiply-adds of an f32 FMA of the same width. The operands are the ones the AMX path prepares: the weight panel
//! as bf16 rows ([`super::kdequant::row_to_bf16`]) and the activations in the tile layout of
//! [`super::amx::pack_activations`], where one 64-byte line holds the same pair of `k` positions for 16 activation
//! rows. A kernel step broadcasts one pair of one weight row against such a line, for 16 weight rows at a time, so
//! 16 accumulators hold a 16 × 16 block of the product.

use std::sync::OnceLock;

use super::amx::{TILE_K, TILE_ROWS};

/// Whether this CPU has AVX512-BF16 (checked once).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// `c[j, i] = Σ_k w[j, k] · x[i, k]` in the contract of [`super::amx::product`]: `w` holds `p_pad` bf16 rows of `k`
/// values, `x` the activations packed by [`super::amx::pack_activations`] (`m_pad` rows), `c` is `[p_pad, m_pad]`
/// f32; `p_pad` and `m_pad` are multiples of [`super::amx::STEP_ROWS`] and `k` of [`TILE_K`].
pub fn product(w: &[u16], x: &[u16], k: usize, c: &mut [f32]) {
    assert!(available(), "this CPU has no AVX512-BF16");
    let (p_pad, m_pad) = super::amx::padded_rows(w, x, k, c);
    kernel::product(w, x, k, p_pad, m_pad, c);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod kernel {
    use std::arch::x86_64::*;

    use super::{TILE_K, TILE_ROWS};

    /// Weight rows per kernel step: one accumulator each.
    const ROWS: usize = TILE_ROWS;

    pub(super) fn product(
        w: &[u16],
        x: &[u16],
        k: usize,
        p_pad: usize,
        m_pad: usize,
        c: &mut [f32],
    ) {
        // SAFETY: `super::product` checked that the CPU has AVX512F and AVX512-BF16 and that the operands have
        // the lengths the loops below index into.
        unsafe { product_bf16(w, x, k, p_pad, m_pad, c) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn product_bf16(
        w: &[u16],
        x: &[u16],
        k: usize,
        p_pad: usize,
        m_pad: usize,
        c: &mut [f32],
    ) {
        let blocks = k / TILE_K;
        let tile = TILE_ROWS * TILE_K;
        for j in (0..p_pad).step_by(ROWS) {
            for g in 0..m_pad / TILE_ROWS {
                let mut acc = [_mm512_setzero_ps(); ROWS];
                let group = x.as_ptr().add(g * blocks * tile);
                for kb in 0..blocks {
                    let lines = group.add(kb * tile);
                    for pair in 0..TILE_K / 2 {
                        // The pair (2·pair, 2·pair + 1) of this block for 16 activation rows.
                        let xs = _mm512_loadu_ps(lines.add(pair * TILE_K).cast());
                        let xs: __m512bh = std::mem::transmute(xs);
                        let at = kb * TILE_K + 2 * pair;
                        for (r, a) in acc.iter_mut().enumerate() {
                            let both = w
                                .as_ptr()
                                .add((j + r) * k + at)
                                .cast::<i32>()
                                .read_unaligned();
                            let ws: __m512bh = std::mem::transmute(_mm512_set1_epi32(both));
                            *a = _mm512_dpbf16_ps(*a, ws, xs);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(c.as_mut_ptr().add((j + r) * m_pad + g * TILE_ROWS), *a);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) fn product(_: &[u16], _: &[u16], _: usize, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("AVX512-BF16 exists only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_equals_the_sums_of_the_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        super::super::amx::tests::check_bf16_product(product);
    }
}
