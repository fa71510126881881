//! Fused, multi-threaded CPU kernels for the encoder's element-wise steps, as candle in-place custom ops.
//!
//! candle-core runs matrix products on all cores but its element-wise operations on one, and materialises every
//! intermediate; on a small encoder such as MiniLM the soft-max, GELU and LayerNorm passes then take about as long
//! as the matrix products. These kernels do each step in one pass over freshly computed (unshared) tensors, split by
//! rows over as many threads as candle's matrix products use (`RAYON_NUM_THREADS`, or one per core).

use candle_core::{bail, CpuStorage, InplaceOp1, InplaceOp2, Layout, Result};

/// Below this many elements a kernel runs on the calling thread (spawning would cost more than it saves).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// The contiguous f32 data of a storage, or an error.
fn f32_data<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => bail!("{op}: expected a contiguous f32 tensor"),
    }
}

fn f32_data_ref<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => bail!("{op}: expected a contiguous f32 tensor"),
    }
}

/// Calls `f(first_row, rows)` on consecutive groups of `row_len`-element rows of `data`, in parallel.
fn for_row_chunks(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / row_len.max(1);
    let threads = candle_core::utils::get_num_threads().min(rows).max(1);
    if threads == 1 || data.len() < PARALLEL_MIN_ELEMENTS {
        f(0, data);
        return;
    }
    let per_chunk = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = data.chunks_mut(per_chunk * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * per_chunk, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

/// erf for f32 with an absolute error below 5e-7 (a few f32 ulps of 1): the rational minimax approximation Eigen uses
/// for float (`generic_fast_erf_float`), with the input clamped to [-4, 4], beyond which erf is ±1 in f32.
pub(crate) fn erf(x: f32) -> f32 {
    // Plain multiply-adds: `mul_add` becomes a slow library call unless FMA is enabled at compile time.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// GELU in its exact (erf) form, `x·Φ(x)`, as Hugging Face's `"gelu"` activation.
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x[r, :] += bias`, optionally followed by GELU, on a `[rows, bias.len()]` tensor.
pub(crate) struct AddBias<'a> {
    /// The bias added to every row.
    pub bias: &'a [f32],
    /// Whether GELU follows.
    pub gelu: bool,
}

impl InplaceOp1 for AddBias<'_> {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = f32_data(storage, layout, self.name())?;
        let width = self.bias.len();
        if width == 0 || data.len() % width != 0 {
            bail!("add-bias: {} elements are not rows of {width}", data.len());
        }
        for_row_chunks(data, width, |_, rows| {
            for row in rows.chunks_exact_mut(width) {
                for (v, b) in row.iter_mut().zip(self.bias) {
                    *v = if self.gelu { gelu(*v + b) } else { *v + b };
                }
            }
        });
        Ok(())
    }
}

/// `x = LayerNorm(x + bias + residual)` over rows of `weight.len()`: the end of a BERT attention or feed-forward
/// block (dense bias, residual connection, LayerNorm with biased variance and `eps` inside the square root).
/// As an [`InplaceOp1`] there is no residual (the embeddings' LayerNorm); `bias` may be empty.
pub(crate) struct AddLayerNorm<'a> {
    /// The preceding dense layer's bias, or empty.
    pub bias: &'a [f32],
    /// LayerNorm scale.
    pub weight: &'a [f32],
    /// LayerNorm shift.
    pub shift: &'a [f32],
    /// LayerNorm epsilon.
    pub eps: f64,
}

impl AddLayerNorm<'_> {
    fn run(&self, data: &mut [f32], residual: Option<&[f32]>) -> Result<()> {
        let width = self.weight.len();
        let shapes_ok = width > 0
            && data.len().is_multiple_of(width)
            && self.shift.len() == width
            && (self.bias.is_empty() || self.bias.len() == width)
            && residual.is_none_or(|r| r.len() == data.len());
        if !shapes_ok {
            bail!("add-layer-norm: mismatched shapes");
        }
        let eps = self.eps as f32;
        for_row_chunks(data, width, |first_row, rows| {
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                if let Some(residual) = residual {
                    let start = (first_row + i) * width;
                    row.iter_mut()
                        .zip(&residual[start..start + width])
                        .for_each(|(v, r)| *v += r);
                }
                if !self.bias.is_empty() {
                    row.iter_mut().zip(self.bias).for_each(|(v, b)| *v += b);
                }
                let mean = row.iter().sum::<f32>() / width as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for ((v, w), s) in row.iter_mut().zip(self.weight).zip(self.shift) {
                    *v = (*v - mean) * inv * w + s;
                }
            }
        });
        Ok(())
    }
}

impl InplaceOp1 for AddLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        self.run(f32_data(storage, layout, "layer-norm")?, None)
    }
}

impl InplaceOp2 for AddLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let residual = f32_data_ref(s2, l2, "add-layer-norm")?;
        self.run(f32_data(s1, l1, "add-layer-norm")?, Some(residual))
    }
}

/// Soft-max over the last dimension of attention scores `[batch, heads, queries, keys]`, with `mask`
/// (`[batch, keys]`, 0 for padding) applied to the keys. Masked keys get a weight of exactly zero, which is what Hugging
/// Face's additive `f32::MIN` bias yields after `exp`; a row whose keys are all masked (no real token at all) gets
/// the plain soft-max of its scores, as adding the same bias to every score would.
pub(crate) struct MaskedSoftmax;

impl InplaceOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let dims = l1.dims().to_vec();
        let [batch, heads, queries, keys] = dims[..] else {
            bail!("masked-softmax: scores must be 4-dimensional")
        };
        if l2.dims() != [batch, keys] {
            bail!(
                "masked-softmax: mask is {:?}, expected [{batch}, {keys}]",
                l2.dims()
            );
        }
        let mask = f32_data_ref(s2, l2, self.name())?;
        let scores = f32_data(s1, l1, self.name())?;
        let rows_per_item = heads * queries;
        for_row_chunks(scores, keys, |first_row, rows| {
            for (i, row) in rows.chunks_exact_mut(keys).enumerate() {
                let item = (first_row + i) / rows_per_item;
                let row_mask = &mask[item * keys..(item + 1) * keys];
                let any = row_mask.iter().any(|&m| m != 0.0);
                let keep = |j: usize| !any || row_mask[j] != 0.0;
                let max = (0..keys)
                    .filter(|&j| keep(j))
                    .map(|j| row[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if keep(j) { (*v - max).exp() } else { 0.0 };
                    sum += *v;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, D};

    #[test]
    fn erf_is_accurate_to_5e_7() {
        let worst = (-80_000..=80_000)
            .map(|i| i as f64 / 10_000.0)
            .map(|x| (f64::from(erf(x as f32)) - candle_core::cpu::erf::erf_f64(x)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "max |erf error| {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(10.0) - 1.0).abs() < 5e-7 && (erf(-10.0) + 1.0).abs() < 5e-7);
        assert_eq!(erf(-0.5), -erf(0.5));
    }

    #[test]
    fn masked_softmax_matches_additive_bias_softmax() {
        let dev = Device::Cpu;
        let (b, h, q, k) = (2, 3, 4, 5);
        let data: Vec<f32> = (0..b * h * q * k)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
            .collect();
        let scores = Tensor::from_vec(data, (b, h, q, k), &dev).unwrap();
        let mask =
            Tensor::from_vec(vec![1f32, 1., 1., 0., 0., 1., 1., 1., 1., 1.], (b, k), &dev).unwrap();
        let bias = mask
            .affine(-(f32::MIN as f64), f32::MIN as f64)
            .unwrap()
            .reshape((b, 1, 1, k))
            .unwrap();
        let biased = scores.broadcast_add(&bias).unwrap();
        let e = biased
            .broadcast_sub(&biased.max_keepdim(D::Minus1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let expected = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let got = scores.copy().unwrap();
        got.inplace_op2(&mask, &MaskedSoftmax).unwrap();
        let diff = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn add_layer_norm_matches_reference_and_splits_rows_over_threads() {
        let (rows, width) = (300, 128); // above PARALLEL_MIN_ELEMENTS
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 13) % 17) as f32 * 0.3 - 2.0)
            .collect();
        let residual: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7) % 5) as f32 * 0.1)
            .collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 * 0.01).collect();
        let weight: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 * 0.001).collect();
        let shift: Vec<f32> = (0..width).map(|i| -(i as f32) * 0.002).collect();
        let dev = Device::Cpu;
        let t = Tensor::from_vec(x.clone(), (rows, width), &dev).unwrap();
        let r = Tensor::from_vec(residual.clone(), (rows, width), &dev).unwrap();
        let op = AddLayerNorm {
            bias: &bias,
            weight: &weight,
            shift: &shift,
            eps: 1e-12,
        };
        t.inplace_op2(&r, &op).unwrap();
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for row in [0, 149, 150, 299] {
            let v: Vec<f64> = (0..width)
                .map(|j| f64::from(x[row * width + j] + residual[row * width + j] + bias[j]))
                .collect();
            let mean = v.iter().sum::<f64>() / width as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = (v[j] - mean) / (var + 1e-12).sqrt() * f64::from(weight[j])
                    + f64::from(shift[j]);
                assert!(
                    (f64::from(got[row * width + j]) - want).abs() < 1e-5,
                    "row {row} col {j}"
                );
            }
        }
    }

    #[test]
    fn add_bias_with_gelu() {
        let t = Tensor::from_vec(vec![-1f32, 0., 1., 2.], (2, 2), &Device::Cpu).unwrap();
        t.inplace_op1(&AddBias {
            bias: &[0.5, -0.5],
            gelu: true,
        })
        .unwrap();
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let exact = |x: f64| 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
        for (g, x) in got.iter().zip([-0.5, -0.5, 1.5, 1.5]) {
            assert!((f64::from(*g) - exact(x)).abs() < 1e-6);
        }
    }
}
