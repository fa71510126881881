//! Products on the CPU's matrix unit (Intel AMX, bf16 tiles), for [`super::qgemm`]'s dequantized panels.
//!
//! A tile multiply-add (`tdpbf16ps`) multiplies a 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32
//! accumulator: about ten times the f32 FMA rate of AVX-512 on the same core. The activations are rounded to bf16
//! once per product and the weight panel once per panel (its values come from 4- to 8-bit blocks, which bf16 holds
//! to within 0.4 %); the sums stay f32 across the whole row. The unit is used only where the CPU reports it and the
//! kernel grants the process its register state (Linux `arch_prctl`); everything else takes the f32 path.

use std::sync::OnceLock;

/// Rows of one tile (and columns of an f32 accumulator tile).
pub const TILE_ROWS: usize = 16;
/// bf16 values along `k` in one tile row (64 bytes).
pub const TILE_K: usize = 32;
/// Rows of activations and of weights one kernel step covers (two tiles of each).
pub const STEP_ROWS: usize = 2 * TILE_ROWS;

/// Whether this process may use AMX bf16 tiles: the CPU has them and Linux granted their state (asked once).
pub fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| has_amx_bf16() && request_tile_state())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, unused_unsafe)] // `__cpuid_count` is a safe function only from Rust 1.87 on.
fn has_amx_bf16() -> bool {
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this crate runs on (AVX2 is required at build time).
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    leaf7.edx & (AMX_BF16 | AMX_TILE) == AMX_BF16 | AMX_TILE
}

#[cfg(not(target_arch = "x86_64"))]
fn has_amx_bf16() -> bool {
    false
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`); false where refused.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which register state the kernel saves for this
    // process; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN). Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// Rounds `x` to bf16 into `out` (the same length).
pub fn to_bf16(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16_bits(v);
    }
}

/// Packs the `[m, k]` row-major activations (`k` a multiple of [`TILE_K`]) into bf16 tiles, padded with zero rows
/// to a multiple of [`STEP_ROWS`]. Tile `(g, kb)`, the `k` block `kb` of rows `16g..16g + 16`, lies at
/// `(g · k / 32 + kb) · 512` and holds, in its row `r`, the pairs `(x[16g + c][32kb + 2r], x[16g + c][32kb + 2r + 1])`
/// for `c` in 0..16: the layout `tdpbf16ps` reads its second operand in.
pub fn pack_activations(x: &[f32], k: usize, out: &mut Vec<u16>) {
    assert!(k > 0 && k.is_multiple_of(TILE_K), "rows of {k} values");
    let rows = x.len() / k;
    let groups = rows.next_multiple_of(STEP_ROWS) / TILE_ROWS;
    let blocks = k / TILE_K;
    out.clear();
    out.resize(groups * blocks * TILE_ROWS * TILE_K, 0);
    for (row, values) in x[..rows * k].chunks_exact(k).enumerate() {
        let (g, c) = (row / TILE_ROWS, row % TILE_ROWS);
        for (kb, block) in values.chunks_exact(TILE_K).enumerate() {
            let tile = &mut out[(g * blocks + kb) * TILE_ROWS * TILE_K..][..TILE_ROWS * TILE_K];
            for (r, pair) in block.chunks_exact(2).enumerate() {
                tile[r * TILE_K + 2 * c] = bf16_bits(pair[0]);
                tile[r * TILE_K + 2 * c + 1] = bf16_bits(pair[1]);
            }
        }
    }
}

/// `c[p_pad, m_pad] = w[p_pad, k] @ x^T` on the matrix unit: `w` bf16 weight rows, row-major, `p_pad` of them (a
/// multiple of [`STEP_ROWS`]); `x` the activations from [`pack_activations`] (`m_pad` rows); `c` row-major f32,
/// one row per weight row (the transpose of `x @ w^T`). Panics unless [`available`] and the lengths agree.
pub fn product(w: &[u16], x: &[u16], k: usize, c: &mut [f32]) {
    assert!(
        available(),
        "AMX bf16 tiles are not available to this process"
    );
    let (p_pad, m_pad) = padded_rows(w, x, k, c);
    tiles::product(w, x, k, p_pad, m_pad, c);
}

/// The padded weight and activation row counts `(p_pad, m_pad)` of a bf16 panel product's operands, as
/// [`product`] takes them; panics unless `k` is a multiple of [`TILE_K`] and the lengths agree.
pub fn padded_rows(w: &[u16], x: &[u16], k: usize, c: &[f32]) -> (usize, usize) {
    assert!(
        k > 0 && k.is_multiple_of(TILE_K),
        "k = {k} is not a multiple of {TILE_K}"
    );
    let (p_pad, m_pad) = (w.len() / k, x.len() / k);
    assert!(
        m_pad.is_multiple_of(STEP_ROWS)
            && p_pad.is_multiple_of(STEP_ROWS)
            && w.len() == p_pad * k
            && x.len() == m_pad * k,
        "operands of {} and {} values for k = {k}",
        w.len(),
        x.len()
    );
    assert_eq!(c.len(), m_pad * p_pad, "an output of {} values", c.len());
    (p_pad, m_pad)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod tiles {
    use std::arch::asm;

    use super::{STEP_ROWS, TILE_K, TILE_ROWS};

    /// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < 8 {
            bytes[16 + 2 * t] = 64;
            bytes[48 + t] = TILE_ROWS as u8;
            t += 1;
        }
        Config(bytes)
    };

    /// `k` values per chunk: the chunk's weight rows and activations stay in L2 while every pair of tile rows
    /// runs over them; the accumulators go back to `c` between chunks.
    const CHUNK_K: usize = 512;

    /// The product of [`super::product`], its shapes already checked by it.
    pub(super) fn product(
        w: &[u16],
        x: &[u16],
        k: usize,
        p_pad: usize,
        m_pad: usize,
        c: &mut [f32],
    ) {
        let blocks = k / TILE_K;
        let tile = TILE_ROWS * TILE_K;
        let (w_stride, c_stride) = (k * 2, m_pad * 4);
        // SAFETY: the process holds the tile state (checked by the caller through `available`). Every tile load
        // reads 16 rows of 64 bytes: a weight tile at rows j..j + 16 (j + 32 <= p_pad) and columns 32kb..32kb + 32
        // (kb < k / 32) of the `p_pad × k` array `w`; an activation tile is one whole 512-value tile of `x`, whose
        // `m_pad / 16 · k / 32` tiles cover it exactly. Every accumulator load and store covers 16 rows of 16 f32
        // at rows j..j + 32 and columns i..i + 32 (i + 32 <= m_pad) of the `p_pad × m_pad` array `c`. The tile
        // registers are used by no other code of this thread between `ldtilecfg` and `tilerelease`.
        unsafe {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack));
            for first in (0..blocks).step_by(CHUNK_K / TILE_K) {
                let last = (first + CHUNK_K / TILE_K).min(blocks);
                for j in (0..p_pad).step_by(STEP_ROWS) {
                    let w0 = w.as_ptr().add(j * k);
                    let w1 = w.as_ptr().add((j + TILE_ROWS) * k);
                    for i in (0..m_pad).step_by(STEP_ROWS) {
                        let g = i / TILE_ROWS;
                        let x0 = x.as_ptr().add(g * blocks * tile);
                        let x1 = x.as_ptr().add((g + 1) * blocks * tile);
                        let c0 = c.as_mut_ptr().add(j * m_pad + i);
                        let c2 = c.as_mut_ptr().add((j + TILE_ROWS) * m_pad + i);
                        if first == 0 {
                            asm!(
                                "tilezero tmm0",
                                "tilezero tmm1",
                                "tilezero tmm2",
                                "tilezero tmm3",
                                options(nostack, nomem)
                            );
                        } else {
                            asm!(
                                "tileloadd tmm0, [{c0} + {sc}*1]",
                                "tileloadd tmm1, [{c1} + {sc}*1]",
                                "tileloadd tmm2, [{c2} + {sc}*1]",
                                "tileloadd tmm3, [{c3} + {sc}*1]",
                                c0 = in(reg) c0,
                                c1 = in(reg) c0.add(TILE_ROWS),
                                c2 = in(reg) c2,
                                c3 = in(reg) c2.add(TILE_ROWS),
                                sc = in(reg) c_stride,
                                options(nostack, readonly)
                            );
                        }
                        for kb in first..last {
                            asm!(
                                "tileloadd tmm4, [{w0} + {sw}*1]",
                                "tileloadd tmm6, [{x0} + {sx}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tileloadd tmm5, [{w1} + {sw}*1]",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tileloadd tmm7, [{x1} + {sx}*1]",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                w0 = in(reg) w0.add(kb * TILE_K),
                                w1 = in(reg) w1.add(kb * TILE_K),
                                x0 = in(reg) x0.add(kb * tile),
                                x1 = in(reg) x1.add(kb * tile),
                                sw = in(reg) w_stride,
                                sx = in(reg) TILE_K * 2,
                                options(nostack, readonly)
                            );
                        }
                        asm!(
                            "tilestored [{c0} + {sc}*1], tmm0",
                            "tilestored [{c1} + {sc}*1], tmm1",
                            "tilestored [{c2} + {sc}*1], tmm2",
                            "tilestored [{c3} + {sc}*1], tmm3",
                            c0 = in(reg) c0,
                            c1 = in(reg) c0.add(TILE_ROWS),
                            c2 = in(reg) c2,
                            c3 = in(reg) c2.add(TILE_ROWS),
                            sc = in(reg) c_stride,
                            options(nostack)
                        );
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    /// Never reached: [`super::available`] is false off x86-64.
    pub(super) fn product(_: &[u16], _: &[u16], _: usize, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("AMX exists only on x86-64")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn bf16_value(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn packed_tiles_hold_activation_pairs_where_the_unit_reads_them() {
        let (rows, k) = (20, 64);
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 200) as f32).collect();
        let mut packed = Vec::new();
        pack_activations(&x, k, &mut packed);
        assert_eq!(packed.len(), 32 * k);
        // Row 17 is column 1 of group 1; its values 38 and 39 are the pair in row 3 of the tile of k block 1.
        let tile = (k / TILE_K + 1) * TILE_ROWS * TILE_K;
        assert_eq!(
            bf16_value(packed[tile + 3 * TILE_K + 2]),
            ((17 * k + 38) % 200) as f32
        );
        assert_eq!(
            bf16_value(packed[tile + 3 * TILE_K + 3]),
            ((17 * k + 39) % 200) as f32
        );
        // Rows 20..32 (columns 4..16 of group 1) are zero padding.
        let group1 = &packed[(k / TILE_K) * TILE_ROWS * TILE_K..];
        assert!(group1
            .chunks(TILE_K)
            .all(|r| r[8..].iter().all(|&v| v == 0)));
    }

    #[test]
    fn tile_products_equal_the_f32_product_of_the_rounded_values() {
        if !available() {
            eprintln!("skipped: no AMX bf16 tiles on this CPU");
            return;
        }
        check_bf16_product(product);
    }

    /// Holds a bf16 panel product with [`product`]'s contract (the matrix unit's, or AVX512-BF16's) to the f32 sums
    /// of the bf16-rounded operands.
    pub(crate) fn check_bf16_product(product: fn(&[u16], &[u16], usize, &mut [f32])) {
        // k = 2,112: two chunks of k, the second partial.
        let (m, rows, k) = (37, 45, 2112);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 31.0 - 1.5)
            .collect();
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104_729) % 89) as f32 / 29.0 - 1.4)
            .collect();
        let (m_pad, p_pad) = (64, 64);
        let mut weights = vec![0u16; p_pad * k];
        to_bf16(&w, &mut weights[..rows * k]);
        let mut packed = Vec::new();
        pack_activations(&x, k, &mut packed);
        let mut c = vec![f32::NAN; p_pad * m_pad];
        product(&weights, &packed, k, &mut c);
        for j in 0..rows {
            for i in 0..m {
                let want: f32 = (0..k)
                    .map(|t| {
                        bf16_value(bf16_bits(x[i * k + t])) * bf16_value(bf16_bits(w[j * k + t]))
                    })
                    .sum();
                let got = c[j * m_pad + i];
                assert!(
                    (want - got).abs() <= 1e-3 * (1.0 + want.abs()),
                    "c[{j}][{i}] = {got}, want {want}"
                );
            }
        }
        // Padded rows and columns multiply zeros.
        assert_eq!(c[(p_pad - 1) * m_pad], 0.0);
        assert_eq!(c[m_pad - 1], 0.0);
    }
}
