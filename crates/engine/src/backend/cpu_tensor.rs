//! The CPU backend's tensor: a dense candle tensor (activations, float weights) or a GGUF weight kept in its
//! quantized blocks, multiplied by candle's quantized matmul (`QMatMul`) without being dequantized up front.

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::qdot::{self, QKind};
use super::qgemm;
use super::BackendError;
use super::{kchoice, kdot};

/// From this many rows of activations on, a quantized product dequantizes the weight (a panel at a time, [`qgemm`])
/// and runs the dense GEMM: a prefill's or a scoring pass's products are then exact in the weights, and faster.
pub const DENSE_PRODUCT_ROWS: usize = 16;

/// A tensor of the CPU backend.
#[derive(Debug, Clone)]
pub enum CpuTensor {
    /// A dense f32 tensor.
    Dense(Tensor),
    /// A quantized `[out, in]` weight, as one or more blocks of rows stacked (parts of different quantization
    /// types, e.g. a fused q/k/v whose v is Q6_K and q, k Q4_K, stay separate and their products are joined).
    Quantized(Vec<Arc<QTensor>>),
}

impl From<Tensor> for CpuTensor {
    fn from(t: Tensor) -> Self {
        Self::Dense(t)
    }
}

pub(crate) fn op_err(op: &'static str) -> impl Fn(candle_core::Error) -> BackendError {
    move |e| BackendError::Op {
        backend: "cpu",
        op,
        reason: e.to_string(),
    }
}

impl CpuTensor {
    /// The dense tensor; a quantized weight where a dense one is needed is an error naming `op`.
    pub fn dense(&self, op: &'static str) -> Result<&Tensor, BackendError> {
        match self {
            Self::Dense(t) => Ok(t),
            Self::Quantized(_) => Err(BackendError::Shape {
                op,
                reason: "a quantized weight where a dense tensor is needed".into(),
            }),
        }
    }

    /// A quantized weight, or a dense f32 tensor for the float GGUF types (F32, F16, BF16).
    pub fn from_qtensor(q: &Arc<QTensor>) -> Result<Self, BackendError> {
        match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => q
                .dequantize(&Device::Cpu)
                .map(Self::Dense)
                .map_err(op_err("weight")),
            _ => Ok(Self::Quantized(vec![q.clone()])),
        }
    }

    /// `x @ self^T` for `x` of `[rows, in]` and `self` of `[out, in]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor, BackendError> {
        let err = op_err("linear");
        match self {
            Self::Dense(w) => x.matmul(&w.t().map_err(&err)?).map_err(err),
            Self::Quantized(parts) => {
                let x = x.contiguous().map_err(&err)?;
                // candle's quantized product walks the whole weight once per row of `x`: right for decode, slow
                // for a prefill of hundreds of rows, where dequantizing panels of the weight into cache and
                // running the dense GEMM on them wins (`qgemm`).
                let rows = x.dims().first().copied().unwrap_or(1);
                let outs = parts
                    .iter()
                    .map(|q| {
                        if rows >= DENSE_PRODUCT_ROWS && qgemm::supports(q.dtype()) {
                            panel_product(q, &x)
                        } else if let Some(kind) = QKind::of(q.dtype()) {
                            quantized_product(kind, q, &x)
                        } else if kdot::supports(q.dtype()) {
                            k_quant_product(q, &x)
                        } else if rows >= DENSE_PRODUCT_ROWS {
                            let w = q.dequantize(&Device::Cpu)?;
                            x.matmul(&w.t()?)
                        } else {
                            QMatMul::QTensor(q.clone()).forward(&x)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(&err)?;
                match outs.len() {
                    1 => Ok(outs.into_iter().next().expect("one part")),
                    _ => Tensor::cat(&outs, 1).map_err(err),
                }
            }
        }
    }

    /// Rows `ids` of a `[rows, cols]` table, dequantized to f32 when the table is quantized (only those rows).
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor, BackendError> {
        let err = op_err("embed");
        match self {
            Self::Dense(t) => {
                let index = Tensor::from_slice(ids, ids.len(), &Device::Cpu).map_err(&err)?;
                t.index_select(&index, 0).map_err(err)
            }
            Self::Quantized(parts) => {
                let [q] = parts.as_slice() else {
                    return Err(BackendError::Shape {
                        op: "embed",
                        reason: "an embedding table in several parts".into(),
                    });
                };
                let (rows, cols) = q.shape().dims2().map_err(&err)?;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= rows) {
                    return Err(BackendError::Shape {
                        op: "embed",
                        reason: format!("token {bad} outside a table of {rows} rows"),
                    });
                }
                let picked = select_rows(q, ids.iter().map(|&i| i as usize)).map_err(&err)?;
                debug_assert_eq!(picked.shape().dims2().ok(), Some((ids.len(), cols)));
                picked.dequantize(&Device::Cpu).map_err(err)
            }
        }
    }

    /// The rows of `parts` stacked: dense tensors concatenated; quantized weights kept quantized, parts of one
    /// quantization type joined block row by block row, parts of different types kept side by side.
    pub fn concat_rows(parts: &[&CpuTensor]) -> Result<CpuTensor, BackendError> {
        let err = op_err("concat_rows");
        if parts.iter().all(|p| matches!(p, Self::Dense(_))) {
            let dense = parts
                .iter()
                .map(|p| p.dense("concat_rows").cloned())
                .collect::<Result<Vec<_>, _>>()?;
            return Tensor::cat(&dense, 0).map(Self::Dense).map_err(err);
        }
        let mut out: Vec<Arc<QTensor>> = Vec::new();
        for part in parts {
            let Self::Quantized(qs) = part else {
                return Err(BackendError::Shape {
                    op: "concat_rows",
                    reason: "dense and quantized weights mixed".into(),
                });
            };
            for q in qs {
                match out.last_mut() {
                    Some(last) if last.dtype() == q.dtype() => {
                        *last = Arc::new(join_rows(last, q).map_err(&err)?);
                    }
                    _ => out.push(q.clone()),
                }
            }
        }
        Ok(Self::Quantized(out))
    }
}

/// `x @ q^T` for many rows of `x`, through [`qgemm`]'s cached panels and f32 GEMM.
fn panel_product(q: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = q.shape().dims2()?;
    let rows = x.elem_count() / k.max(1);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let out = qgemm::matmul_t(q.dtype(), &q.data()?, n, k, &xs)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Tensor::from_vec(out, (rows, n), &Device::Cpu)
}

/// `x @ q^T` for few rows of `x` and K-quant weights: through [`kdot`] or candle's product, whichever
/// [`kchoice`] found faster on this CPU (candle's also where `kdot` declines).
fn k_quant_product(q: &Arc<QTensor>, x: &Tensor) -> candle_core::Result<Tensor> {
    let (which, timed) = kchoice::next_loop();
    let started = timed.then(std::time::Instant::now);
    let out = match which {
        kchoice::KLoop::Kdot => kdot_product(q, x)?,
        kchoice::KLoop::Candle => None,
    };
    let out = match out {
        Some(out) => out,
        None => QMatMul::QTensor(q.clone()).forward(x)?,
    };
    if let Some(started) = started {
        let nanos = started.elapsed().as_nanos() as f64;
        kchoice::report(which, nanos, q.storage_size_in_bytes() as f64);
    }
    Ok(out)
}

/// `x @ q^T` through [`kdot`]; `None` where it declines the type, shape or alignment.
fn kdot_product(q: &QTensor, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (n, k) = q.shape().dims2()?;
    let rows = x.elem_count() / k.max(1);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    kdot::matmul_t(q.dtype(), &q.data()?, n, k, &xs)
        .map(|out| Tensor::from_vec(out, (rows, n), &Device::Cpu))
        .transpose()
}

/// `x @ q^T` through [`qdot`], for the block types candle multiplies with scalar loops (few rows of `x`).
fn quantized_product(kind: QKind, q: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = q.shape().dims2()?;
    let rows = x.elem_count() / k.max(1);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let out = qdot::matmul_t(kind, &q.data()?, n, k, &xs);
    Tensor::from_vec(out, (rows, n), &Device::Cpu)
}

/// Bytes of one row of a quantized `[rows, cols]` tensor (its columns a whole number of blocks).
pub fn row_bytes(q: &QTensor) -> candle_core::Result<usize> {
    let (_, cols) = q.shape().dims2()?;
    let (block, size) = (q.dtype().block_size(), q.dtype().type_size());
    if cols % block != 0 {
        candle_core::bail!("{cols} columns are not a whole number of {block}-element blocks")
    }
    Ok(cols / block * size)
}

/// A new quantized tensor of the rows `rows` of `q` (raw blocks copied, nothing requantized).
pub fn select_rows(q: &QTensor, rows: impl Iterator<Item = usize>) -> candle_core::Result<QTensor> {
    let (_, cols) = q.shape().dims2()?;
    let per_row = row_bytes(q)?;
    let data = q.data()?;
    let mut out = Vec::new();
    let mut n = 0;
    for r in rows {
        out.extend_from_slice(&data[r * per_row..(r + 1) * per_row]);
        n += 1;
    }
    qtensor_from_ggml(q.dtype(), &out, vec![n, cols], &Device::Cpu)
}

/// `a`'s rows then `b`'s, both of one quantization type and width.
fn join_rows(a: &QTensor, b: &QTensor) -> candle_core::Result<QTensor> {
    let ((ra, ca), (rb, cb)) = (a.shape().dims2()?, b.shape().dims2()?);
    if ca != cb {
        candle_core::bail!("joining rows of widths {ca} and {cb}")
    }
    let mut bytes = a.data()?.into_owned();
    bytes.extend_from_slice(&b.data()?);
    qtensor_from_ggml(a.dtype(), &bytes, vec![ra + rb, ca], &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, cols: usize, shift: f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37 + shift).sin())
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    fn quantized(t: &Tensor, dtype: GgmlDType) -> CpuTensor {
        CpuTensor::Quantized(vec![Arc::new(QTensor::quantize(t, dtype).unwrap())])
    }

    /// `t` with every value rounded to bf16 (and held as f32), as the AMX panels see it.
    fn bf16_rounded(t: &Tensor) -> Tensor {
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rounded: Vec<f32> = values
            .iter()
            .map(|&v| f32::from_bits(u32::from(super::super::amx::bf16_bits(v)) << 16))
            .collect();
        Tensor::from_vec(rounded, t.dims(), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn quantized_product_is_close_to_the_dequantized_one() {
        let w = ramp(64, 256, 0.0);
        let x = ramp(3, 256, 1.0);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = quantized(&w, dtype);
            let Some(deq) = (match &q {
                CpuTensor::Quantized(p) => Some(p[0].dequantize(&Device::Cpu).unwrap()),
                _ => None,
            }) else {
                unreachable!()
            };
            let want = CpuTensor::Dense(deq).matmul_t(&x).unwrap();
            let got = q.matmul_t(&x).unwrap();
            // The quantized path also quantizes the activations (to Q8), hence a small difference.
            assert!(max_diff(&want, &got) < 0.5, "{dtype:?}");
            assert_eq!(got.dims(), &[3, 64]);
            // Many rows take the dequantize-then-GEMM path: the dequantized product, with both operands rounded
            // to bf16 first where a bf16 kernel (AMX tiles or AVX512-BF16) multiplies the panels.
            let many = ramp(DENSE_PRODUCT_ROWS, 256, 1.0);
            let deq = match &q {
                CpuTensor::Quantized(p) => p[0].dequantize(&Device::Cpu).unwrap(),
                _ => unreachable!(),
            };
            let tiles = qgemm::PanelKernel::best(256) != qgemm::PanelKernel::F32;
            let operand = |t: &Tensor| if tiles { bf16_rounded(t) } else { t.clone() };
            let want = CpuTensor::Dense(operand(&deq))
                .matmul_t(&operand(&many))
                .unwrap();
            let d = max_diff(&want, &q.matmul_t(&many).unwrap());
            // The tiles sum pairs of bf16 products in their own order: f32 rounding of 256-term sums, far below
            // the ~0.06 that unrounded operands would show.
            let bound = if tiles { 1e-3 } else { 1e-4 };
            assert!(d < bound, "{dtype:?} (tiles: {tiles}): {d}");
        }
    }

    #[test]
    fn concat_rows_joins_same_types_and_keeps_mixed_ones_apart() {
        let (a, b, c) = (ramp(32, 256, 0.0), ramp(32, 256, 2.0), ramp(64, 256, 3.0));
        let x = ramp(2, 256, 1.0);
        let (qa, qb, qc) = (
            quantized(&a, GgmlDType::Q4K),
            quantized(&b, GgmlDType::Q4K),
            quantized(&c, GgmlDType::Q6K),
        );
        let joined = CpuTensor::concat_rows(&[&qa, &qb, &qc]).unwrap();
        let CpuTensor::Quantized(parts) = &joined else {
            panic!("dense")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].shape().dims2().unwrap(), (64, 256));
        let want = Tensor::cat(
            &[
                qa.matmul_t(&x).unwrap(),
                qb.matmul_t(&x).unwrap(),
                qc.matmul_t(&x).unwrap(),
            ],
            1,
        )
        .unwrap();
        assert_eq!(max_diff(&want, &joined.matmul_t(&x).unwrap()), 0.0);
        assert!(CpuTensor::concat_rows(&[&qa, &CpuTensor::Dense(a)]).is_err());
    }

    #[test]
    fn rows_of_a_quantized_table_equal_the_dequantized_rows() {
        let t = ramp(10, 64, 0.5);
        let q = quantized(&t, GgmlDType::Q8_0);
        let CpuTensor::Quantized(p) = &q else {
            unreachable!()
        };
        let full = CpuTensor::Dense(p[0].dequantize(&Device::Cpu).unwrap());
        let ids = [7u32, 0, 7, 3];
        assert_eq!(
            max_diff(&full.rows(&ids).unwrap(), &q.rows(&ids).unwrap()),
            0.0
        );
        assert!(q.rows(&[10]).is_err());
    }
}
