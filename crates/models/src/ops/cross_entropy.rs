//! Fused cross-entropy: `logits: (n, vocab)`, `targets: n` → the *sum* of the token losses over
//! the rows whose target is not ignored, as a scalar `()`.
//!
//! Forward: `loss_i = logsumexp(z_i) − z_i[t_i]` (with optional label smoothing ε:
//! `(1−ε)·(lse − z_t) + ε·(lse − mean(z))`). Backward: `softmax(z_i) − onehot(t_i)` (smoothed:
//! `softmax − (1−ε)·onehot − ε/V`), times the incoming gradient; ignored rows get zero.
//! One pass over the 49,152 columns each way instead of log_softmax + gather graphs.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use super::fast_exp;
use rayon::prelude::*;
use std::borrow::Cow;

/// Target value that marks a position the loss ignores (as PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Clone, Debug)]
pub struct FusedCrossEntropy {
    pub targets: std::sync::Arc<Vec<i64>>,
    pub label_smoothing: f32,
    /// Per-row log-sum-exp saved by the forward for the backward (one exp per logit saved).
    lse: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
}

fn row_lse(z: &[f32]) -> (f32, f32) {
    let max = fast_exp::max_of(z);
    let sum = fast_exp::exp_shifted_sum(z, max);
    (max, max + sum.ln())
}

impl FusedCrossEntropy {
    fn check(&self, rows: usize) -> candle_core::Result<()> {
        if self.targets.len() != rows {
            return Err(candle_core::Error::Msg(format!(
                "cross-entropy: {} targets for {} rows of logits",
                self.targets.len(),
                rows
            )));
        }
        Ok(())
    }
}

/// The column a target names, `None` for `IGNORE_INDEX`, an error outside the vocabulary.
pub(crate) fn valid_target(t: i64, vocab: usize) -> candle_core::Result<Option<usize>> {
    if t == IGNORE_INDEX {
        return Ok(None);
    }
    if t < 0 || t as usize >= vocab {
        return Err(candle_core::Error::Msg(format!(
            "cross-entropy: target id {t} outside the vocabulary of {vocab}"
        )));
    }
    Ok(Some(t as usize))
}

/// The summed loss of the rows of `z: (rows, vocab)` against `targets` (label smoothing `eps`),
/// and each row's log-sum-exp (0 for ignored rows) for the backward.
pub(crate) fn row_losses(z: &[f32], vocab: usize, targets: &[i64], eps: f32) -> candle_core::Result<(f64, Vec<f32>)> {
    let losses: Vec<candle_core::Result<(f64, f32)>> = z
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let Some(t) = valid_target(t, vocab)? else { return Ok((0.0, 0.0)) };
            let (_, lse) = row_lse(row);
            let nll = lse - row[t];
            if eps > 0.0 {
                let mean: f32 = row.iter().sum::<f32>() / vocab as f32;
                Ok((((1.0 - eps) * nll + eps * (lse - mean)) as f64, lse))
            } else {
                Ok((nll as f64, lse))
            }
        })
        .collect();
    let mut total = 0f64;
    let mut lses = Vec::with_capacity(losses.len());
    for l in losses {
        let (loss, lse) = l?;
        total += loss;
        lses.push(lse);
    }
    Ok((total, lses))
}

/// In place, each row of `z: (rows, vocab)` becomes the gradient of its loss times `scale`:
/// `(softmax(z) − ε/V − (1−ε)·onehot(t)) · scale`, from the row's saved log-sum-exp; ignored
/// rows become zero.
pub(crate) fn rows_to_gradient(z: &mut [f32], vocab: usize, targets: &[i64], lse: &[f32], eps: f32, scale: f32) -> candle_core::Result<()> {
    z.par_chunks_mut(vocab).zip(targets.par_iter()).zip(lse.par_iter()).try_for_each(|((row, &t), &l)| {
        let Some(t) = valid_target(t, vocab)? else {
            row.iter_mut().for_each(|v| *v = 0.0);
            return Ok(());
        };
        fast_exp::exp_shifted_affine_inplace(row, l, eps / vocab as f32, scale);
        row[t] -= (1.0 - eps) * scale;
        Ok::<(), candle_core::Error>(())
    })
}

/// The logits as f32: borrowed when they are f32 already (no copy of the 200 MB a training
/// step's logits take), converted otherwise.
fn logits_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<Cow<'a, [f32]>> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("cross-entropy: logits must be contiguous".into()))?;
    Ok(match storage {
        CpuStorage::F32(v) => Cow::Borrowed(&v[start..end]),
        CpuStorage::BF16(v) => Cow::Owned(v[start..end].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F16(v) => Cow::Owned(v[start..end].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F64(v) => Cow::Owned(v[start..end].iter().map(|&x| x as f32).collect()),
        _ => return Err(candle_core::Error::Msg("cross-entropy: logits must be float".into())),
    })
}

impl CustomOp1 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        self.check(rows)?;
        let z = logits_f32(storage, layout)?;
        let (total, lses) = row_losses(&z, vocab, &self.targets, self.label_smoothing)?;
        if let Ok(mut saved) = self.lse.lock() {
            *saved = lses;
        }
        let out = match storage.dtype() {
            DType::F64 => CpuStorage::F64(vec![total]),
            _ => CpuStorage::F32(vec![total as f32]),
        };
        Ok((out, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        self.check(rows)?;
        for &t in self.targets.iter() {
            valid_target(t, vocab)?;
        }
        Ok((super::cuda_kernels::cross_entropy_fwd(storage, layout, &self.targets, self.label_smoothing)?, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let grad = arg.apply_op1_no_bwd(&CrossEntropyGrad { loss: self.clone(), scale: g })?;
        Ok(Some(grad))
    }
}

/// The backward of [`FusedCrossEntropy`] as its own op: `(n, vocab) -> (n, vocab)`.
struct CrossEntropyGrad {
    loss: FusedCrossEntropy,
    scale: f32,
}

impl CustomOp1 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        self.loss.check(rows)?;
        let eps = self.loss.label_smoothing;
        let mut z = logits_f32(storage, layout)?.into_owned();
        let saved: Vec<f32> = self.loss.lse.lock().map(|v| v.clone()).unwrap_or_default();
        let lse = if saved.len() == rows { saved } else { row_losses(&z, vocab, &self.loss.targets, eps)?.1 };
        rows_to_gradient(&mut z, vocab, &self.loss.targets, &lse, eps, self.scale)?;
        let out = match storage.dtype() {
            DType::BF16 => CpuStorage::BF16(z.into_iter().map(half::bf16::from_f32).collect()),
            DType::F16 => CpuStorage::F16(z.into_iter().map(half::f16::from_f32).collect()),
            DType::F64 => CpuStorage::F64(z.into_iter().map(|v| v as f64).collect()),
            _ => CpuStorage::F32(z),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, _) = layout.shape().dims2()?;
        self.loss.check(rows)?;
        let dz = super::cuda_kernels::cross_entropy_bwd(storage, layout, &self.loss.targets, self.loss.label_smoothing, self.scale)?;
        Ok((dz, layout.shape().clone()))
    }
}

/// Sum of token cross-entropies: `logits: (n, vocab)`, `targets: n` (`IGNORE_INDEX` skipped) → `()`.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[i64], label_smoothing: f32) -> candle_core::Result<Tensor> {
    let op = FusedCrossEntropy { targets: std::sync::Arc::new(targets.to_vec()), label_smoothing, lse: Default::default() };
    if logits.device().is_cpu() || (super::cpu_util::cuda_ok(logits) && logits.dtype() == DType::F32) {
        logits.contiguous()?.apply_op1(op)
    } else {
        reference_cross_entropy_sum(logits, targets, label_smoothing)
    }
}

/// The plain differentiable composition (log_softmax + gather): the test oracle, and the path on
/// devices without the fused op.
pub fn reference_cross_entropy_sum(logits: &Tensor, targets: &[i64], label_smoothing: f32) -> candle_core::Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    let keep: Vec<u32> = (0..rows as u32).filter(|&i| targets[i as usize] != IGNORE_INDEX).collect();
    if keep.is_empty() {
        return logits.sum_all()?.affine(0.0, 0.0);
    }
    let idx = Tensor::new(keep.as_slice(), logits.device())?;
    let z = logits.index_select(&idx, 0)?;
    let t: Vec<u32> = keep.iter().map(|&i| targets[i as usize] as u32).collect();
    let t = Tensor::new(t.as_slice(), logits.device())?.unsqueeze(1)?;
    let logp = candle_nn::ops::log_softmax(&z, 1)?;
    let nll = logp.gather(&t, 1)?.neg()?.sum_all()?;
    if label_smoothing > 0.0 {
        let smooth = logp.neg()?.sum_all()?.affine(1.0 / vocab as f64, 0.0)?;
        nll.affine(1.0 - label_smoothing as f64, 0.0)? + smooth.affine(label_smoothing as f64, 0.0)?
    } else {
        Ok(nll)
    }
}
