//! The output head and the cross-entropy in one op: `hidden: (n, d)`, a frozen `head: (vocab, d)`,
//! `targets: n` → the summed token loss `()`.
//!
//! Forward: `z = hidden · headᵀ` (one gemm), then per row `lse(z) − z[t]` (label smoothing as
//! [`super::cross_entropy`]). The logits and each row's log-sum-exp stay inside the op.
//! Backward: the logits buffer is turned, in place, into `(softmax(z) − onehot(t)) · g` and
//! multiplied by the head: `d hidden = dz · head` (one gemm). A training step so holds one
//! `(n, vocab)` buffer — 200 MB for 1,024 tokens of a 49,152-word vocabulary — where the
//! composition of a frozen matmul and the fused cross-entropy held three: the logits, their
//! gradient and the zero-initialised buffer candle's backward accumulates that gradient into.
//!
//! CPU and f32 only; [`head_cross_entropy_sum`] takes the composition elsewhere.
use super::cpu_util::{f32_slice, fused_ok, msg, with_f32};
use super::cross_entropy::{cross_entropy_sum, row_losses, rows_to_gradient};
use super::bf16_gemm::frozen_product;
use super::frozen_linear::frozen_matmul;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// What the forward leaves for the backward: the logits `(n, vocab)` and the row log-sum-exps.
struct Saved {
    logits: Vec<f32>,
    lse: Vec<f32>,
}

struct HeadCrossEntropy {
    /// `(vocab, d)`, contiguous f32.
    head: Tensor,
    targets: Arc<Vec<i64>>,
    label_smoothing: f32,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// The backward as an op of its own: `hidden: (n, d) -> d hidden: (n, d)`.
struct HeadCrossEntropyGrad {
    head: Tensor,
    targets: Arc<Vec<i64>>,
    label_smoothing: f32,
    saved: Arc<Mutex<Option<Saved>>>,
    /// The incoming gradient of the summed loss.
    scale: f32,
}

/// `z = hidden · headᵀ`: `(n, d) -> (n, vocab)`.
fn logits(hidden: &[f32], head: &Tensor, n: usize, d: usize) -> candle_core::Result<Vec<f32>> {
    let vocab = head.dim(0)?;
    with_f32(head, "head-cross-entropy", |w| Ok(frozen_product(hidden, w, (n, vocab, d), (d as isize, 1))))
}

/// `(n, d)` of a hidden-state argument, checked against the head and the targets.
fn dims(layout: &Layout, head: &Tensor, targets: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (n, d) = layout.shape().dims2()?;
    let (vocab, head_d) = head.dims2()?;
    if head_d != d {
        return Err(msg(format!("head-cross-entropy: hidden states of width {d}, head of shape ({vocab}, {head_d})")));
    }
    if targets != n {
        return Err(msg(format!("head-cross-entropy: {targets} targets for {n} rows of hidden states")));
    }
    Ok((n, d, vocab))
}

impl CustomOp1 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, vocab) = dims(layout, &self.head, self.targets.len())?;
        let hidden = f32_slice(storage, layout, "head-cross-entropy")?;
        let z = logits(hidden, &self.head, n, d)?;
        let (total, lse) = row_losses(&z, vocab, &self.targets, self.label_smoothing)?;
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some(Saved { logits: z, lse });
        }
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let grad = arg.apply_op1_no_bwd(&HeadCrossEntropyGrad {
            head: self.head.clone(),
            targets: self.targets.clone(),
            label_smoothing: self.label_smoothing,
            saved: self.saved.clone(),
            scale,
        })?;
        Ok(Some(grad))
    }
}

impl CustomOp1 for HeadCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "head-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, vocab) = dims(layout, &self.head, self.targets.len())?;
        // The forward's buffers, taken (a second backward over the same graph recomputes them).
        let taken = self.saved.lock().ok().and_then(|mut s| s.take());
        let Saved { logits: mut dz, lse } = match taken {
            Some(s) if s.logits.len() == n * vocab && s.lse.len() == n => s,
            _ => {
                let hidden = f32_slice(storage, layout, "head-cross-entropy-grad")?;
                let z = logits(hidden, &self.head, n, d)?;
                let (_, lse) = row_losses(&z, vocab, &self.targets, self.label_smoothing)?;
                Saved { logits: z, lse }
            }
        };
        rows_to_gradient(&mut dz, vocab, &self.targets, &lse, self.label_smoothing, self.scale)?;
        // d hidden = dz · head: (n, vocab) · (vocab, d), the head read row-major.
        let dh = with_f32(&self.head, "head-cross-entropy-grad", |w| Ok(frozen_product(&dz, w, (n, d, vocab), (1, d as isize))))?;
        Ok((CpuStorage::F32(dh), layout.shape().clone()))
    }
}

/// Sum of the token cross-entropies of `hidden: (n, d)` under the frozen `head: (vocab, d)`
/// against `targets: n` (`IGNORE_INDEX` skipped) → `()`. Gradient for `hidden` only.
pub fn head_cross_entropy_sum(hidden: &Tensor, head: &Tensor, targets: &[i64], label_smoothing: f32) -> candle_core::Result<Tensor> {
    if fused_ok(hidden) && fused_ok(head) {
        let op = HeadCrossEntropy {
            head: head.contiguous()?,
            targets: Arc::new(targets.to_vec()),
            label_smoothing,
            saved: Arc::new(Mutex::new(None)),
        };
        hidden.contiguous()?.apply_op1(op)
    } else {
        // Logits in the model's dtype, the softmax in f32 (as Hugging Face's loss upcasts them).
        cross_entropy_sum(&frozen_matmul(hidden, head)?.to_dtype(candle_core::DType::F32)?, targets, label_smoothing)
    }
}
