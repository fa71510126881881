//! Sentence-transformers' pooling: the mean of the token vectors over non-padded positions, then L2 normalisation.

use candle_core::{Result, Tensor, D};

/// Mean of `hidden` (`[batch, seq, dim]`) over the positions where `mask` (`[batch, seq]`, 1 for real tokens and 0
/// for padding) is 1, as sentence-transformers' `Pooling(pooling_mode_mean_tokens)`: the count is clamped at 1e-9.
pub(crate) fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    summed.broadcast_div(&counts)
}

/// Divides each row of `x` (`[batch, dim]`) by its Euclidean norm, clamped at 1e-12 as `torch.nn.functional.normalize`
/// does, so that an all-zero row stays zero.
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn mean_pool_ignores_padded_positions() {
        let dev = Device::Cpu;
        let hidden = Tensor::from_vec(
            vec![
                1f32, 2., 3., 4., 100., -100., /* second */ 5., 6., 1000., 1000., 1000., 1000.,
            ],
            (2, 3, 2),
            &dev,
        )
        .unwrap();
        let mask = Tensor::from_vec(vec![1u32, 1, 0, 1, 0, 0], (2, 3), &dev).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![2., 3.], vec![5., 6.]]);
    }

    #[test]
    fn mean_pool_of_fully_masked_row_is_zero() {
        let dev = Device::Cpu;
        let hidden = Tensor::ones((1, 2, 3), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 2), DType::F32, &dev).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![0., 0., 0.]]);
    }

    #[test]
    fn l2_normalize_gives_unit_rows_and_keeps_zero_rows() {
        let dev = Device::Cpu;
        let x =
            Tensor::from_vec(vec![3f32, 4., 0., 0., 0., 0., 1., -1., 1.], (3, 3), &dev).unwrap();
        let y = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[0], vec![0.6, 0.8, 0.0]);
        assert_eq!(y[1], vec![0.0, 0.0, 0.0]);
        let norm: f32 = y[2].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{norm}");
    }
}
