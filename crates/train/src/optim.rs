//! AdamW (decoupled weight decay, as `torch.optim.AdamW`) with inspectable moments, gradient
//! clipping by global norm, and the learning-rate schedules.
use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW over named variables; `m` and `v` can be saved and restored for exact resumption.
pub struct AdamW {
    pub params: AdamWParams,
    pub vars: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Number of steps taken.
    pub t: usize,
    /// Each variable's learning rate as a multiple of the schedule's (LoRA+); 1 by default.
    pub lr_scales: Vec<f64>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let m = vars.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        let lr_scales = vec![1.0; vars.len()];
        Ok(Self { params, vars, m, v, t: 0, lr_scales })
    }

    /// Gives variable `i` the learning rate `scales[i] · lr` (one per variable).
    pub fn with_lr_scales(mut self, scales: Vec<f64>) -> Result<Self> {
        if scales.len() != self.vars.len() {
            return Err(crate::error::TrainError::Invalid(format!("{} learning-rate scales for {} variables", scales.len(), self.vars.len())));
        }
        self.lr_scales = scales;
        Ok(self)
    }

    /// The parameters' values and the optimizer state, to go back to with [`AdamW::restore`]
    /// (a skipped step).
    pub fn snapshot(&self) -> Result<AdamWSnapshot> {
        let values = self.vars.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamWSnapshot { values, m: self.m.clone(), v: self.v.clone(), t: self.t })
    }

    /// Puts back what [`AdamW::snapshot`] took.
    pub fn restore(&mut self, s: AdamWSnapshot) -> Result<()> {
        for ((_, var), value) in self.vars.iter().zip(&s.values) {
            var.set(value)?;
        }
        self.m = s.m;
        self.v = s.v;
        self.t = s.t;
        Ok(())
    }

    /// One update with gradients `grads[i]` for `vars[i]` (None: no gradient, skipped) at `lr`:
    /// `p ← p·(1 − lr·wd) − lr · m̂ / (sqrt(v̂) + eps)`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.t += 1;
        let AdamWParams { beta1, beta2, eps, weight_decay, .. } = self.params;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            let lr = lr * self.lr_scales[i];
            let g = g.detach().to_dtype(DType::F32)?;
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + eps)?;
            let update = ((&m / bc1)? / denom)?;
            let p = var.as_tensor().detach();
            let decayed = (&p * (1.0 - lr * weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// What [`AdamW::snapshot`] keeps.
pub struct AdamWSnapshot {
    values: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

/// Gradients of `vars` from a backward pass (None where a variable got no gradient).
pub fn collect_grads(vars: &[(String, Var)], store: &GradStore) -> Vec<Option<Tensor>> {
    vars.iter().map(|(_, v)| store.get(v.as_tensor()).cloned()).collect()
}

/// Adds `more` into `acc` element-wise (gradient accumulation over micro-batches).
pub fn accumulate(acc: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
    for (a, m) in acc.iter_mut().zip(more) {
        *a = match (a.take(), m) {
            (Some(x), Some(y)) => Some((x + y)?),
            (x, None) => x,
            (None, y) => y,
        };
    }
    Ok(())
}

/// Global L2 norm of the gradients; when above `max_norm`, scales them down to it
/// (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: Option<f64>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Learning rate for optimizer step `step` (0-based) of `total`: linear warm-up over `warmup`
/// steps from 0, then constant, linear decay to 0, or cosine decay to 0 (as transformers'
/// `get_*_schedule_with_warmup`).
pub fn learning_rate(base: f64, step: usize, total: usize, warmup: usize, schedule: Schedule) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers_formulas() {
        // get_linear_schedule_with_warmup(warmup=10, total=110): step 5 -> 0.5, step 60 -> 0.5
        assert!((learning_rate(1.0, 5, 110, 10, Schedule::Linear) - 0.5).abs() < 1e-12);
        assert!((learning_rate(1.0, 60, 110, 10, Schedule::Linear) - 0.5).abs() < 1e-12);
        assert!((learning_rate(1.0, 60, 110, 10, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 110, 110, 10, Schedule::Cosine).abs() < 1e-12);
        assert_eq!(learning_rate(1.0, 0, 110, 10, Schedule::Constant), 0.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![Some(Tensor::new(&[3f32, 4.0], &dev).unwrap()), None];
        let n = clip_grad_norm(&mut g, Some(1.0)).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let v = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
