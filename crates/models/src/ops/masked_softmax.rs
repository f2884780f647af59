//! Fused `softmax(scale · s + mask)` for attention scores, with an explicit backward.
//! `scores: (b, x, r, t_k)` where row `r` is query position `r mod t_q` (grouped-query heads are
//! stacked along `r`); the mask is causal (`key ≤ query + offset`) or not, and drops padded keys of each
//! batch row. Backward: `ds = scale · p ⊙ (dp − Σ dp ⊙ p)`, from the saved probabilities only.
use super::cpu_util::{cuda_ok, f32_slice, fused_ok, msg};
use super::fast_exp;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Which keys each query may see.
#[derive(Clone, Debug)]
pub struct AttentionMask {
    pub t_q: usize,
    /// Cached positions before the first query.
    pub offset: usize,
    /// Per batch row, per key: 1 = token, 0 = padding. None: no padding.
    pub key_keep: Option<Arc<Vec<Vec<u8>>>>,
    /// Causal (`key ≤ query + offset`, decoder self-attention) or not (encoder self-attention
    /// and cross-attention: only padding is masked).
    pub causal: bool,
}

impl AttentionMask {
    fn allowed(&self, b: usize, q: usize, k: usize) -> bool {
        (!self.causal || k <= q + self.offset) && self.key_keep.as_ref().map(|kk| kk[b].get(k).copied().unwrap_or(1) != 0).unwrap_or(true)
    }

    /// The padding as `(b, t_k)` bytes, 1 = a token, 0 = a padded key (the CUDA kernels' form).
    pub fn keep_bytes(&self, b: usize, tk: usize) -> Vec<u8> {
        let mut keep = vec![1u8; b * tk];
        if let Some(kk) = &self.key_keep {
            for (bi, row) in keep.chunks_mut(tk.max(1)).enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = u8::from(kk.get(bi).and_then(|r| r.get(k)).copied().unwrap_or(1) != 0);
                }
            }
        }
        keep
    }

    /// The same mask as an additive tensor `(b, 1, 1, t_q, t_k)` (0 or the f32 minimum), for the
    /// composition path.
    pub fn additive(&self, b: usize, t_k: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        let mut data = vec![0f32; b * self.t_q * t_k];
        for bi in 0..b {
            for i in 0..self.t_q {
                for j in 0..t_k {
                    if !self.allowed(bi, i, j) {
                        data[(bi * self.t_q + i) * t_k + j] = f32::MIN;
                    }
                }
            }
        }
        Tensor::from_vec(data, (b, 1, 1, self.t_q, t_k), device)
    }
}

/// One row of `softmax(scale · x + mask)`: query position `q` of batch row `b`, `x, y: t_k`.
pub(super) fn masked_softmax_row(mask: &AttentionMask, scale: f32, b: usize, q: usize, xr: &[f32], yr: &mut [f32]) {
    let tk = xr.len();
    // No padding (and a positive scale, as attention's 1/sqrt(d) or T5's 1): the
    // visible keys are one prefix of the row, done in SIMD passes.
    if mask.key_keep.is_none() && scale > 0.0 {
        let visible = if mask.causal { (q + mask.offset + 1).min(tk) } else { tk };
        let max = fast_exp::max_of(&xr[..visible]) * scale;
        if visible == 0 {
            // No visible key: uniform, as the composition with an all-minimum additive mask gives.
            yr.iter_mut().for_each(|v| *v = 1.0 / tk as f32);
            return;
        }
        if !max.is_finite() {
            // NaN or infinite scores: the row is NaN (as softmax over them is), never a
            // made-up distribution that would hide the fault from the loss.
            yr.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let (seen, hidden) = yr.split_at_mut(visible);
        hidden.iter_mut().for_each(|v| *v = 0.0);
        let inv = 1.0 / fast_exp::exp_scaled_shifted_into(&xr[..visible], scale, max, seen);
        seen.iter_mut().for_each(|v| *v *= inv);
        return;
    }
    let mut max = f32::NEG_INFINITY;
    let mut visible = 0usize;
    for k in 0..tk {
        if mask.allowed(b, q, k) {
            max = max.max(xr[k] * scale);
            visible += 1;
        }
    }
    if visible == 0 {
        // No visible key: uniform, as an all-minimum additive mask gives.
        yr.iter_mut().for_each(|v| *v = 1.0 / tk as f32);
        return;
    }
    if !max.is_finite() {
        // NaN or infinite scores propagate (see above).
        yr.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    let mut sum = 0f32;
    for k in 0..tk {
        let e = if mask.allowed(b, q, k) { fast_exp::exp(xr[k] * scale - max) } else { 0.0 };
        yr[k] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    yr.iter_mut().for_each(|v| *v *= inv);
}

struct MaskedSoftmax {
    mask: AttentionMask,
    scale: f32,
}

struct MaskedSoftmaxGrad {
    scale: f32,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "masked-softmax")?;
        let dims = l.dims();
        if dims.len() != 4 {
            return Err(msg(format!("masked-softmax: expected (b, x, r, t_k), got {dims:?}")));
        }
        let (xh, r, tk) = (dims[1], dims[2], dims[3]);
        let t_q = self.mask.t_q.max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(tk).zip(x.par_chunks(tk)).enumerate().for_each(|(row, (yr, xr))| {
            masked_softmax_row(&self.mask, self.scale, row / (xh * r), (row % r) % t_q, xr, yr);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dims = l.dims();
        if dims.len() != 4 {
            return Err(msg(format!("masked-softmax: expected (b, x, r, t_k), got {dims:?}")));
        }
        let keep = self.mask.keep_bytes(dims[0], dims[3]);
        let y = super::cuda_kernels::masked_softmax_fwd(s, l, &keep, self.mask.t_q, self.mask.offset, self.mask.causal, self.scale)?;
        Ok((y, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &MaskedSoftmaxGrad { scale: self.scale })?))
    }
}

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = f32_slice(s1, l1, "masked-softmax-grad")?;
        let g = f32_slice(s2, l2, "masked-softmax-grad")?;
        let tk = l1.dims().last().copied().ok_or_else(|| msg("masked-softmax-grad on a scalar"))?;
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(tk).zip(p.par_chunks(tk).zip(g.par_chunks(tk))).for_each(|(o, (pr, gr))| {
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for k in 0..tk {
                o[k] = self.scale * pr[k] * (gr[k] - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda_kernels::masked_softmax_bwd(s1, l1, s2, l2, self.scale)?, l1.shape().clone()))
    }
}

/// `softmax(scale · scores + mask)` over the last dimension: fused on CPU f32, otherwise the
/// differentiable composition. `scores: (b, x, r, t_k)`, rows `r` cycling over `t_q` positions.
pub fn masked_softmax(scores: &Tensor, mask: &AttentionMask, scale: f64) -> candle_core::Result<Tensor> {
    if fused_ok(scores) || (cuda_ok(scores) && scores.rank() == 4) {
        return scores.contiguous()?.apply_op1(MaskedSoftmax { mask: mask.clone(), scale: scale as f32 });
    }
    let (b, x, r, tk) = scores.dims4()?;
    let g = r / mask.t_q.max(1);
    let add = mask.additive(b, tk, scores.device())?.to_dtype(scores.dtype())?;
    let s = (scores * scale)?.reshape((b, x, g, mask.t_q, tk))?.broadcast_add(&add)?;
    super::norms::softmax_last(&s)?.reshape((b, x, r, tk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(causal: bool, padded: bool) -> AttentionMask {
        AttentionMask { t_q: 3, offset: 0, key_keep: padded.then(|| Arc::new(vec![vec![1, 1, 0]])), causal }
    }

    #[test]
    fn nan_scores_give_a_nan_row_never_a_uniform_one() {
        for padded in [false, true] {
            let m = mask(true, padded);
            let mut y = [0f32; 3];
            // An all-NaN visible row (the fault a diverged run produces) stays NaN.
            masked_softmax_row(&m, 0.5, 0, 1, &[f32::NAN, f32::NAN, 0.0], &mut y);
            assert!(y.iter().all(|v| v.is_nan()), "padded {padded}: {y:?}");
            // One NaN among finite scores poisons the row too.
            masked_softmax_row(&m, 0.5, 0, 1, &[1.0, f32::NAN, 0.0], &mut y);
            assert!(y.iter().any(|v| v.is_nan()), "padded {padded}: {y:?}");
            masked_softmax_row(&m, 0.5, 0, 1, &[f32::INFINITY, 1.0, 0.0], &mut y);
            assert!(y.iter().any(|v| v.is_nan()), "padded {padded}: {y:?}");
            // Finite scores: a distribution over the visible keys.
            masked_softmax_row(&m, 0.5, 0, 1, &[1.0, 1.0, 5.0], &mut y);
            assert!((y[0] - 0.5).abs() < 1e-6 && (y[1] - 0.5).abs() < 1e-6 && y[2] == 0.0, "{y:?}");
        }
        // No visible key at all (every key padded): uniform, as the additive-mask composition.
        let m = AttentionMask { t_q: 1, offset: 0, key_keep: Some(Arc::new(vec![vec![0, 0]])), causal: false };
        let mut y = [0f32; 2];
        masked_softmax_row(&m, 1.0, 0, 0, &[1.0, 2.0], &mut y);
        assert_eq!(y, [0.5, 0.5]);
    }
}
