//! AdamW (Loshchilov & Hutter: Adam with decoupled weight decay), the learning-rate schedule (linear warm-up,
//! then cosine decay to a floor) and global-norm gradient clipping.
//!
//! candle-nn's `AdamW` keeps its moment estimates private, so a run killed mid-way could not resume where an
//! uninterrupted one would be; this one exposes them ([`AdamW::state`], [`AdamW::restore`]) for checkpoints.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::DraftError;

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only; norms are not decayed).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// AdamW over named parameters, with its moments.
pub struct AdamW {
    config: AdamWConfig,
    /// (parameter, first moment, second moment) by name.
    slots: BTreeMap<String, (Var, Tensor, Tensor)>,
    steps: u64,
}

impl AdamW {
    /// An optimizer for `params`, moments at zero.
    pub fn new(params: &BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self, DraftError> {
        let slots = params
            .iter()
            .map(|(n, v)| {
                let z = v.as_tensor().zeros_like()?;
                Ok((n.clone(), (v.clone(), z.clone(), z)))
            })
            .collect::<Result<_, DraftError>>()?;
        Ok(Self {
            config,
            slots,
            steps: 0,
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr`, each gradient multiplied by `grad_scale` first (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<(), DraftError> {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (var, m, v) in self.slots.values_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * grad_scale)?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bias1)? / ((&*v / bias2)?.sqrt()? + c.eps)?)?;
            let decay = if var.rank() >= 2 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            var.set(&((var.as_tensor() * decay)? - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as tensors named `m.NAME` and `v.NAME`, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, (_, m, v)) in &self.slots {
            out.insert(format!("m.{name}"), m.clone());
            out.insert(format!("v.{name}"), v.clone());
        }
        out
    }

    /// Restores the moments saved by [`Self::state`] after `steps` updates.
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<(), DraftError> {
        for (name, (var, m, v)) in self.slots.iter_mut() {
            for (prefix, slot) in [("m", m), ("v", v)] {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    DraftError::Invalid(format!("optimizer state `{key}` is missing"))
                })?;
                if t.dims() != var.dims() {
                    return Err(DraftError::Invalid(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.clone();
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `params`.
pub fn grad_norm(grads: &GradStore, params: &BTreeMap<String, Var>) -> Result<f64, DraftError> {
    let mut sum = 0f64;
    for var in params.values() {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sum.sqrt())
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when it is already within).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        max_norm / norm
    } else {
        1.0
    }
}

/// Linear warm-up over `warmup` steps to `peak`, then cosine decay to `peak · floor` at step `total`.
pub fn learning_rate(step: u64, warmup: u64, total: u64, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| learning_rate(s, 10, 110, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!(lr(30) > lr(31));
    }

    #[test]
    fn clipping_scales_only_large_norms() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(4.0, 1.0), 0.25);
        assert_eq!(clip_scale(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_its_state_round_trips() {
        let w = Var::from_tensor(&Tensor::new(&[[3.0f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let params: BTreeMap<String, Var> = [("w".to_string(), w.clone())].into();
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&params, config).unwrap();
        for _ in 0..300 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.05, 1.0).unwrap();
        }
        let end: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(end.iter().all(|x| x.abs() < 0.1), "{end:?}");
        let mut again = AdamW::new(&params, config).unwrap();
        again.restore(&opt.state(), opt.steps()).unwrap();
        assert_eq!(again.steps(), 300);
        let missing = again.restore(&HashMap::new(), 1).unwrap_err().to_string();
        assert!(missing.contains("m.w"), "{missing}");
    }
}
