//! What the loop checks every step so that nothing goes silently wrong: a NaN or infinite loss,
//! gradient or parameter (an error naming the step and the tensor, or the step skipped by
//! `train.on_nonfinite = "skip"`), and a collapse (the loss stuck at `ln(vocab)`, the level of a
//! uniform prediction, with a vanishing gradient), which is warned about once.
use crate::error::{Result, TrainError};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// What a non-finite loss, gradient or parameter does (`train.on_nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop with an error naming the step and the tensor (default).
    #[default]
    Error,
    /// Skip the step (no update: parameters and optimizer state as before it), with a warning;
    /// the run stops after [`MAX_SKIPPED_IN_A_ROW`] skipped steps in a row.
    Skip,
}

/// Consecutive skipped steps after which a run stops anyway.
pub const MAX_SKIPPED_IN_A_ROW: usize = 10;

/// Steps in a row at the uniform level (with no gradient) before the collapse warning.
pub const COLLAPSE_STEPS: usize = 3;

/// A non-finite value found in step `step`: `what` names it ("the loss", "the gradient of
/// `x`", "parameter `x` after the update").
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub step: usize,
    pub what: String,
}

impl Fault {
    pub fn error(&self) -> TrainError {
        TrainError::NonFinite { step: self.step, what: self.what.clone() }
    }
}

/// The loss, when it is not finite.
pub fn check_loss(step: usize, loss: f64) -> Option<Fault> {
    (!loss.is_finite()).then(|| Fault { step, what: format!("the loss is {loss}") })
}

/// The first gradient holding NaN or infinity, by its variable's name.
pub fn check_grads(step: usize, names: &[(String, Var)], grads: &[Option<Tensor>]) -> Result<Option<Fault>> {
    for ((name, _), g) in names.iter().zip(grads) {
        if let Some(g) = g {
            let n = lowrank_models::finite::count_nonfinite(g)?;
            if n > 0 {
                return Ok(Some(Fault { step, what: format!("the gradient of `{name}` holds {n} NaN or infinite value(s)") }));
            }
        }
    }
    Ok(None)
}

/// A gradient norm that overflowed although every gradient is finite.
pub fn check_grad_norm(step: usize, norm: f64) -> Option<Fault> {
    (!norm.is_finite()).then(|| Fault { step, what: format!("the gradient norm is {norm}") })
}

/// The first parameter holding NaN or infinity after the update.
pub fn check_params(step: usize, vars: &[(String, Var)]) -> Result<Option<Fault>> {
    for (name, v) in vars {
        let n = lowrank_models::finite::count_nonfinite(v.as_tensor())?;
        if n > 0 {
            return Ok(Some(Fault { step, what: format!("parameter `{name}` holds {n} NaN or infinite value(s) after the update (learning rate too high?)") }));
        }
    }
    Ok(None)
}

/// Watches for a collapse: the loss within 0.5 % of `ln(vocab)` with a gradient norm under
/// `1e-6` for [`COLLAPSE_STEPS`] steps in a row. Warns once.
pub struct CollapseWatch {
    uniform_loss: f64,
    in_a_row: usize,
    warned: bool,
}

impl CollapseWatch {
    pub fn new(vocab_size: usize) -> Self {
        Self { uniform_loss: (vocab_size.max(2) as f64).ln(), in_a_row: 0, warned: false }
    }

    /// The warning to give after step `step`, if this is the moment.
    pub fn observe(&mut self, step: usize, loss: f64, grad_norm: f64) -> Option<String> {
        let stuck = (loss - self.uniform_loss).abs() <= 0.005 * self.uniform_loss && grad_norm < 1e-6;
        self.in_a_row = if stuck { self.in_a_row + 1 } else { 0 };
        if self.in_a_row >= COLLAPSE_STEPS && !self.warned {
            self.warned = true;
            return Some(format!(
                "warning: the model has collapsed: for {} steps up to step {step} the loss has stayed at {loss:.4} ≈ ln(vocab) = {:.4} (a uniform prediction) with a gradient norm of {grad_norm:.2e}, so it can no longer learn (learning rate too high?)",
                self.in_a_row, self.uniform_loss
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_is_warned_once_after_three_stuck_steps() {
        let mut w = CollapseWatch::new(1000);
        let u = 1000f64.ln();
        assert!(w.observe(1, u, 0.0).is_none());
        assert!(w.observe(2, u + 0.001, 0.0).is_none());
        let msg = w.observe(3, u, 1e-9).expect("warning");
        assert!(msg.contains("collapsed") && msg.contains("step 3"), "{msg}");
        assert!(w.observe(4, u, 0.0).is_none());
        // A model learning at the uniform level (tiny random models start there) is not a collapse.
        let mut w = CollapseWatch::new(1000);
        for s in 1..10 {
            assert!(w.observe(s, u, 0.3).is_none());
        }
    }

    #[test]
    fn faults_name_the_tensor() {
        let dev = candle_core::Device::Cpu;
        let v = Var::from_tensor(&Tensor::new(&[1f32, f32::NAN], &dev).unwrap()).unwrap();
        let vars = vec![("ok".to_string(), Var::from_tensor(&Tensor::new(&[1f32], &dev).unwrap()).unwrap()), ("layer.lora_A".to_string(), v)];
        let f = check_params(7, &vars).unwrap().unwrap();
        assert_eq!(f.step, 7);
        assert!(f.what.contains("layer.lora_A"), "{}", f.what);
        let grads = vec![None, Some(Tensor::new(&[f32::INFINITY, 0.0], &dev).unwrap())];
        assert!(check_grads(2, &vars, &grads).unwrap().unwrap().what.contains("gradient of `layer.lora_A`"));
        assert!(check_loss(1, f64::NAN).is_some() && check_loss(1, 2.0).is_none());
    }
}
