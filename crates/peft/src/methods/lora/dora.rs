//! DoRA (PEFT's `use_dora = true`): LoRA whose adapted weight `W + s·B·A` is split into a
//! direction (normalised per output row) and a trained magnitude `m: (d_out)`, initialised to
//! the rows' norms so the adapter starts as a no-op:
//! `y = (m / ‖W + s·B·A‖_row) ⊙ (W x + s·B A x) + b`, the norm detached from the gradient.
//! With adapter dropout in training, PEFT's form: `y = W x + b + (m/n − 1) ⊙ W x_d +
//! (m/n) ⊙ s·B A x_d` for the dropped input `x_d`. Merge: `W ← (m/n)·(W + s·B·A)`.
//!
//! The row norms are computed without forming `W + s·B·A`: `‖W_o + s·(BA)_o‖² = ‖W_o‖² +
//! 2s·B_o·(W Aᵀ)_o + s²·B_o (A Aᵀ) B_oᵀ`, where `‖W_o‖²` is computed once and `W Aᵀ` is one
//! frozen product of `r` rows.
use super::LoraModule;
use candle_core::{DType, Tensor};
use lowrank_models::ops::frozen_linear::frozen_weight_matmul;
use lowrank_models::FrozenWeight;

/// What a DoRA layer keeps of its frozen weight: the squared row norms `‖W_o‖²: (d_out)`, f32.
#[derive(Clone)]
pub struct DoraNorms {
    pub w_sq: Tensor,
}

impl DoraNorms {
    /// The squared row norms of `weight: (d_out, d_in)`, on `device`.
    pub fn of(weight: &FrozenWeight, device: &candle_core::Device) -> candle_core::Result<Self> {
        let w = weight.to_dense()?.to_dtype(DType::F32)?;
        Ok(Self { w_sq: w.sqr()?.sum(1)?.to_device(device)? })
    }

    /// `‖W + s·B·A‖_row: (d_out)`, f32, outside the autograd graph.
    pub fn row_norms(&self, weight: &FrozenWeight, m: &LoraModule) -> candle_core::Result<Tensor> {
        let a = m.a.as_tensor().detach().to_dtype(DType::F32)?;
        let b = m.b.as_tensor().detach().to_dtype(DType::F32)?;
        let s = m.scale;
        // W Aᵀ: (d_out, r), from the frozen product A · Wᵀ: (r, d_out), in W's dtype.
        let wa = frozen_weight_matmul(&a.to_dtype(weight.dtype())?, weight)?.detach().to_dtype(DType::F32)?.t()?;
        let cross = (&b * &wa)?.sum(1)?; // B_o · (W Aᵀ)_o
        let gram = a.matmul(&a.t()?)?; // A Aᵀ: (r, r)
        let ba_sq = (b.matmul(&gram)? * &b)?.sum(1)?; // B_o (A Aᵀ) B_oᵀ
        let sq = ((&self.w_sq + (cross * (2.0 * s))?)? + (ba_sq * (s * s))?)?;
        sq.relu()?.sqrt()
    }
}

/// `m / ‖W + s·B·A‖_row` as a row vector `(1, d_out)` in `dtype`: the gradient reaches `m` only.
pub fn magnitude_scale(norms: &DoraNorms, weight: &FrozenWeight, m: &LoraModule, dtype: DType) -> candle_core::Result<Tensor> {
    let magnitude = m.magnitude.as_ref().ok_or_else(|| candle_core::Error::Msg(format!("DoRA layer `{}` has no magnitude", m.path)))?;
    let n = norms.row_norms(weight, m)?.to_device(magnitude.device())?;
    (magnitude.as_tensor().to_dtype(DType::F32)? / n)?.unsqueeze(0)?.to_dtype(dtype)
}

/// `(m/n)·(W + s·B·A)`: the merged weight, f32.
pub fn merged_weight(w: &Tensor, m: &LoraModule) -> candle_core::Result<Tensor> {
    let magnitude = m.magnitude.as_ref().ok_or_else(|| candle_core::Error::Msg(format!("DoRA layer `{}` has no magnitude", m.path)))?;
    let full = (w.to_dtype(DType::F32)? + m.delta_weight()?.to_device(w.device())?)?;
    let n = full.sqr()?.sum_keepdim(1)?.sqrt()?;
    let factor = (magnitude.as_tensor().to_dtype(DType::F32)?.to_device(w.device())?.unsqueeze(1)? / n)?;
    full.broadcast_mul(&factor)
}
