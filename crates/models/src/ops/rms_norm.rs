//! Fused RMSNorm with an explicit backward: `x: (..., d)`, frozen `w: (d)` → `(..., d)` (a
//! trainable `w` gets its gradient through [`rms_norm`]'s split, see there).
//! Forward `y = x · r · w` with `r = 1/sqrt(mean(x²) + eps)`; backward
//! `dx = r · (g⊙w − x · r² · mean(g⊙w⊙x))`. Saves nothing but `x` for the backward.
use super::cpu_util::{cuda_ok, f32_slice, fused_ok, msg, with_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

struct RmsNormGrad {
    weight: Tensor,
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rms-norm")?;
        let d = l.dims().last().copied().ok_or_else(|| msg("rms-norm on a scalar"))?;
        let out = with_f32(&self.weight, "rms-norm", |w| {
            if w.len() != d {
                return Err(msg(format!("rms-norm: weight has {} values for rows of {d}", w.len())));
            }
            let mut y = vec![0f32; x.len()];
            y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
                let r = inv_rms(xr, self.eps);
                for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * r * wv;
                }
            });
            Ok(y)
        })?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = super::cuda_kernels::with_cuda(&self.weight, "rms-norm", |ws, wl| super::cuda_kernels::rms_norm_fwd(s, l, ws, wl, self.eps))?;
        Ok((y, l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &RmsNormGrad { weight: self.weight.clone(), eps: self.eps })?))
    }
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms-norm-grad")?;
        let g = f32_slice(s2, l2, "rms-norm-grad")?;
        let d = l1.dims().last().copied().ok_or_else(|| msg("rms-norm-grad on a scalar"))?;
        let out = with_f32(&self.weight, "rms-norm-grad", |w| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(d).zip(x.par_chunks(d).zip(g.par_chunks(d))).for_each(|(o, (xr, gr))| {
                let r = inv_rms(xr, self.eps);
                let dot: f32 = xr.iter().zip(gr).zip(w).map(|((xv, gv), wv)| xv * gv * wv).sum::<f32>() / d as f32;
                let k = r * r * dot;
                for i in 0..d {
                    o[i] = r * (gr[i] * w[i] - xr[i] * k);
                }
            });
            Ok(dx)
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dx = super::cuda_kernels::with_cuda(&self.weight, "rms-norm-grad", |ws, wl| super::cuda_kernels::rms_norm_bwd(s1, l1, ws, wl, s2, l2, self.eps))?;
        Ok((dx, l1.shape().clone()))
    }
}

/// RMSNorm: fused on CPU f32, the differentiable composition elsewhere.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if weight.is_variable() || weight.track_op() {
        // A trainable weight (LN tuning): the fused op normalises with a weight of ones (its
        // backward gives dx), and the product with the weight is a plain op whose backward
        // gives `dw = Σ_rows g ⊙ x·r`: the fused op alone would return no gradient for it.
        let d = weight.dim(0)?;
        let normed = rms_norm(x, &Tensor::ones(d, x.dtype(), x.device())?, eps)?;
        return normed.broadcast_mul(weight);
    }
    if (fused_ok(x) && fused_ok(weight)) || (cuda_ok(x) && weight.device().same_device(x.device()) && weight.dtype() == x.dtype()) {
        x.contiguous()?.apply_op1(RmsNorm { weight: weight.contiguous()?, eps: eps as f32 })
    } else {
        super::norms::rms_norm(x, weight, eps)
    }
}
