//! Products of many activation rows (a prefill, a scoring pass) with a quantized GGUF weight.
//!
//! The weight is dequantized a panel of [`PANEL_ROWS`] rows at a time into a per-thread buffer that stays in the
//! core's cache, and each panel is multiplied by the `gemm` crate's f32 kernels (AVX-512 where the CPU has it,
//! chosen at run time). The whole weight is never written out as f32: no 17 MB buffer per product, no page faults
//! on it, no second pass over it from memory. The cores split the panels between them.

use std::cell::RefCell;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_1, BlockQ6K, BlockQ8K, GgmlType,
};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::amx;
use super::bf16dot;
use super::kdequant;
use super::qdot::{self, QKind};

/// Weight rows per panel: 128 rows of a 4,864-wide layer are 2.4 MB of f32, about one core's L2.
pub const PANEL_ROWS: usize = 128;

/// Why a product cannot go through this module (the caller then takes another path).
#[derive(Debug, thiserror::Error)]
pub enum QgemmError {
    /// A GGUF type this module does not dequantize (the float types are not quantized weights).
    #[error("no panel dequantization for {0:?}")]
    Unsupported(GgmlDType),
    /// The raw bytes are not whole, aligned blocks of the type.
    #[error("{0:?} weight bytes are not whole aligned blocks")]
    Layout(GgmlDType),
    /// A bf16 kernel (AMX tiles or AVX512-BF16) was asked for where the CPU, the kernel or the shape does not
    /// allow it.
    #[error("the bf16 panel kernel asked for is not available for this product")]
    NoTiles,
    /// The shapes do not agree with the buffers.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Whether [`matmul_t`] multiplies weights of `dtype`.
pub fn supports(dtype: GgmlDType) -> bool {
    QKind::of(dtype).is_some()
        || matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q5_1
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
                | GgmlDType::Q8K
        )
}

/// Which kernel multiplies the dequantized panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKernel {
    /// The `gemm` crate's f32 kernels (AVX-512 or AVX2).
    F32,
    /// The AMX bf16 tiles ([`amx`]), where the CPU has them and `k` is a multiple of 32.
    Tiles,
    /// AVX-512's bf16 dot products ([`bf16dot`]) on the same bf16 operands, where the CPU has AVX512-BF16 and
    /// `k` is a multiple of 32.
    Bf16,
}

impl PanelKernel {
    /// The fastest kernel this process can use for rows of `k` values.
    pub fn best(k: usize) -> Self {
        if !k.is_multiple_of(amx::TILE_K) {
            Self::F32
        } else if amx::available() {
            Self::Tiles
        } else if bf16dot::available() {
            Self::Bf16
        } else {
            Self::F32
        }
    }

    /// Whether this process can use this kernel for rows of `k` values.
    pub fn usable(self, k: usize) -> bool {
        match self {
            Self::F32 => true,
            Self::Tiles => k.is_multiple_of(amx::TILE_K) && amx::available(),
            Self::Bf16 => k.is_multiple_of(amx::TILE_K) && bf16dot::available(),
        }
    }
}

/// `x @ w^T` for `x` of `[m, k]` (row-major f32) and `w` the raw blocks of a quantized `[n, k]` weight of `dtype`,
/// as `[m, n]` row-major, with the best [`PanelKernel`].
pub fn matmul_t(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Result<Vec<f32>, QgemmError> {
    matmul_t_with(PanelKernel::best(k), dtype, w, n, k, x)
}

/// [`matmul_t`] with the given kernel, refused where it is not [`PanelKernel::usable`].
pub fn matmul_t_with(
    kernel: PanelKernel,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Result<Vec<f32>, QgemmError> {
    if !kernel.usable(k) {
        return Err(QgemmError::NoTiles);
    }
    if !supports(dtype) {
        return Err(QgemmError::Unsupported(dtype));
    }
    let (block, bytes) = (dtype.block_size(), dtype.type_size());
    if k == 0
        || !k.is_multiple_of(block)
        || !x.len().is_multiple_of(k)
        || w.len() != n * k / block * bytes
    {
        return Err(QgemmError::Shape(format!(
            "weight [{n}, {k}] of {dtype:?} in {} bytes, activations of {} values",
            w.len(),
            x.len()
        )));
    }
    let m = x.len() / k;
    let row_bytes = k / block * bytes;
    let tiles = kernel != PanelKernel::F32;
    let mut activations = Vec::new();
    if tiles {
        amx::pack_activations(x, k, &mut activations);
    }
    let panels: Vec<Vec<f32>> = w
        .par_chunks(PANEL_ROWS * row_bytes)
        .map(|raw| {
            let rows = raw.len() / row_bytes;
            let mut out = vec![0f32; m * rows];
            if tiles {
                tile_product(kernel, &mut out, &activations, m, dtype, raw, rows, k)?;
                return Ok(out);
            }
            PANEL.with(|panel| {
                let mut panel = panel.borrow_mut();
                panel.resize(rows * k, 0.0);
                dequantize_rows(dtype, raw, k, &mut panel)?;
                gemm_nt(&mut out, x, &panel, m, rows, k);
                Ok(out)
            })
        })
        .collect::<Result<_, QgemmError>>()?;
    let mut out = vec![0f32; m * n];
    for (p, panel) in panels.iter().enumerate() {
        let (first, rows) = (p * PANEL_ROWS, panel.len() / m.max(1));
        for (dst, src) in out.chunks_exact_mut(n).zip(panel.chunks_exact(rows.max(1))) {
            dst[first..first + rows].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// `out[m, rows] = x @ w^T` with a bf16 `kernel` (the matrix unit or AVX512-BF16) for one panel: `raw` holds
/// `rows` quantized weight rows of `k` values, each dequantized and rounded to bf16 in turn; `x_packed` is the
/// activations from [`amx::pack_activations`].
#[allow(clippy::too_many_arguments)]
fn tile_product(
    kernel: PanelKernel,
    out: &mut [f32],
    x_packed: &[u16],
    m: usize,
    dtype: GgmlDType,
    raw: &[u8],
    rows: usize,
    k: usize,
) -> Result<(), QgemmError> {
    TILES.with(|cell| {
        let (row, weights, product) = &mut *cell.borrow_mut();
        row.resize(k, 0.0);
        let p_pad = rows.next_multiple_of(amx::STEP_ROWS);
        weights.resize(p_pad * k, 0);
        // Every row below `rows` is overwritten; the padding rows must be zero.
        weights[rows * k..].fill(0);
        for (r, dst) in raw
            .chunks_exact(raw.len() / rows)
            .zip(weights.chunks_exact_mut(k))
        {
            if !kdequant::row_to_bf16(dtype, r, dst) {
                dequantize_rows(dtype, r, k, row)?;
                amx::to_bf16(row, dst);
            }
        }
        let m_pad = x_packed.len() / k;
        product.resize(p_pad * m_pad, 0.0);
        if kernel == PanelKernel::Tiles {
            amx::product(weights, x_packed, k, product);
        } else {
            bf16dot::product(weights, x_packed, k, product);
        }
        // The unit's rows are weight rows; `out`'s are activation rows.
        for (j, column) in product.chunks_exact(m_pad).take(rows).enumerate() {
            for (i, &v) in column[..m].iter().enumerate() {
                out[i * rows + j] = v;
            }
        }
        Ok(())
    })
}

thread_local! {
    /// Each thread's dequantized panel, kept between products so it is allocated once.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's buffers for the matrix unit: one dequantized row, the panel's bf16 rows, the padded product.
    static TILES: RefCell<(Vec<f32>, Vec<u16>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Dequantizes whole rows of `k` values of `dtype` from `raw` into `out` (its length rows × k).
fn dequantize_rows(
    dtype: GgmlDType,
    raw: &[u8],
    k: usize,
    out: &mut [f32],
) -> Result<(), QgemmError> {
    if let Some(kind) = QKind::of(dtype) {
        let row_bytes = k / qdot::BLOCK * kind.block_bytes();
        for (r, o) in raw.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
            qdot::dequantize_row(kind, r, o);
        }
        return Ok(());
    }
    match dtype {
        GgmlDType::Q4_0 => to_float::<BlockQ4_0>(raw, out),
        GgmlDType::Q5_1 => to_float::<BlockQ5_1>(raw, out),
        GgmlDType::Q2K => to_float::<BlockQ2K>(raw, out),
        GgmlDType::Q3K => to_float::<BlockQ3K>(raw, out),
        GgmlDType::Q4K => to_float::<BlockQ4K>(raw, out),
        GgmlDType::Q5K => to_float::<BlockQ5K>(raw, out),
        GgmlDType::Q6K => to_float::<BlockQ6K>(raw, out),
        GgmlDType::Q8K => to_float::<BlockQ8K>(raw, out),
        other => Err(QgemmError::Unsupported(other)),
    }
}

/// candle's dequantization of the blocks of type `T` in `raw`.
fn to_float<T: GgmlType>(raw: &[u8], out: &mut [f32]) -> Result<(), QgemmError> {
    let blocks = as_blocks::<T>(raw).ok_or(QgemmError::Layout(T::DTYPE))?;
    if blocks.len() * T::BLCK_SIZE != out.len() {
        return Err(QgemmError::Shape(format!(
            "{} blocks of {:?} for {} values",
            blocks.len(),
            T::DTYPE,
            out.len()
        )));
    }
    T::to_float(blocks, out);
    Ok(())
}

/// `raw` as blocks of `T`, when its length is a whole number of blocks and its address is aligned for `T`.
#[allow(unsafe_code)]
pub(super) fn as_blocks<T: GgmlType>(raw: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if size == 0
        || !raw.len().is_multiple_of(size)
        || raw.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
    {
        return None;
    }
    // SAFETY: `T` is one of candle's `#[repr(C)]` GGUF block structs, made only of f16 and byte arrays, so any bit
    // pattern is a valid value; the length is a whole number of blocks and the address aligned (checked above),
    // and the borrow of `raw` bounds the result's lifetime.
    Some(unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<T>(), raw.len() / size) })
}

/// `out[m, p] = x[m, k] @ w[p, k]^T`, all row-major, on this thread.
#[allow(unsafe_code)]
fn gemm_nt(out: &mut [f32], x: &[f32], w: &[f32], m: usize, p: usize, k: usize) {
    assert!(out.len() >= m * p && x.len() >= m * k && w.len() >= p * k);
    // SAFETY: each pointer with its strides reaches only elements inside its slice (lengths checked above); `out`
    // is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            p,
            k,
            out.as_mut_ptr(),
            1,
            p as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::qdot::tests::{quantized_and_reference_product, ramp, worst_gap};
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn panel_products_equal_the_dequantized_weights_product() {
        // 300 rows: two whole panels and a partial one.
        let (n, k) = (300, 512);
        let w = ramp(n, k, 0.0);
        for m in [1, 17, 40] {
            let x = ramp(m, k, 1.0);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for dtype in [
                GgmlDType::Q4_0,
                GgmlDType::Q4_1,
                GgmlDType::Q5_0,
                GgmlDType::Q8_0,
                GgmlDType::Q4K,
                GgmlDType::Q5K,
                GgmlDType::Q6K,
            ] {
                let (q, want) = quantized_and_reference_product(&w, dtype, &x);
                let data = q.data().unwrap();
                let got = matmul_t_with(PanelKernel::F32, dtype, &data, n, k, &xs).unwrap();
                assert_eq!(got.len(), m * n);
                let (worst, scale) = worst_gap(&want, &got);
                // Both are exact in the weights: only the order of f32 sums separates them.
                assert!(worst <= 1e-4 * scale, "{dtype:?} m={m}: {worst} of {scale}");
                for kernel in [PanelKernel::Tiles, PanelKernel::Bf16] {
                    if !kernel.usable(k) {
                        continue;
                    }
                    let got = matmul_t_with(kernel, dtype, &data, n, k, &xs).unwrap();
                    let (worst, scale) = worst_gap(&want, &got);
                    // bf16 operands (8 significant bits) summed in f32.
                    assert!(
                        worst <= 4e-3 * scale,
                        "{kernel:?} {dtype:?} m={m}: {worst} of {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_float_types_are_refused() {
        let q = QTensor::quantize(&ramp(4, 256, 0.0), GgmlDType::Q4K).unwrap();
        let data = q.data().unwrap();
        let x = vec![0f32; 256];
        assert!(matches!(
            matmul_t(GgmlDType::Q4K, &data, 5, 256, &x),
            Err(QgemmError::Shape(_))
        ));
        assert!(matches!(
            matmul_t(GgmlDType::Q4K, &data, 4, 256, &x[..100]),
            Err(QgemmError::Shape(_))
        ));
        assert!(matches!(
            matmul_t(GgmlDType::F16, &data, 4, 256, &x),
            Err(QgemmError::Unsupported(GgmlDType::F16))
        ));
        assert_eq!(
            matmul_t(GgmlDType::Q4K, &data, 4, 256, &x).unwrap().len(),
            4
        );
    }
}
