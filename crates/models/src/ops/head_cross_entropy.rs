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
//! On the GPU (f32 or bf16) the logits are computed a chunk of rows at a time, each chunk's loss
//! and gradient at once, and the forward keeps only `d hidden: (n, d)`: no vocabulary-sized
//! tensor outlives a chunk. [`head_cross_entropy_sum`] takes the composition elsewhere.
use super::cpu_util::{f32_slice, fused_ok, msg, with_f32};
use super::cross_entropy::{cross_entropy_sum, row_losses, rows_to_gradient};
use super::bf16_gemm::frozen_product;
use super::frozen_linear::frozen_matmul;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// What the forward leaves for the backward: on the CPU the logits `(n, vocab)` and the row
/// log-sum-exps; on the GPU the finished input gradient `(n, d)` for a loss gradient of 1 (the
/// logits were consumed chunk by chunk).
enum Saved {
    Cpu { logits: Vec<f32>, lse: Vec<f32> },
    #[cfg(feature = "cuda")]
    Gpu(candle_core::CudaStorage),
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
            *saved = Some(Saved::Cpu { logits: z, lse });
        }
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (loss, dh) = self.gpu_loss_and_gradient(storage, layout)?;
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some(Saved::Gpu(dh));
        }
        Ok((loss, Shape::from(())))
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
        let (mut dz, lse) = match taken {
            Some(Saved::Cpu { logits, lse }) if logits.len() == n * vocab && lse.len() == n => (logits, lse),
            _ => {
                let hidden = f32_slice(storage, layout, "head-cross-entropy-grad")?;
                let z = logits(hidden, &self.head, n, d)?;
                let (_, lse) = row_losses(&z, vocab, &self.targets, self.label_smoothing)?;
                (z, lse)
            }
        };
        rows_to_gradient(&mut dz, vocab, &self.targets, &lse, self.label_smoothing, self.scale)?;
        // d hidden = dz · head: (n, vocab) · (vocab, d), the head read row-major.
        let dh = with_f32(&self.head, "head-cross-entropy-grad", |w| Ok(frozen_product(&dz, w, (n, d, vocab), (1, d as isize))))?;
        Ok((CpuStorage::F32(dh), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let taken = self.saved.lock().ok().and_then(|mut s| s.take());
        let mut dh = match taken {
            Some(Saved::Gpu(dh)) if dh.dtype() == storage.dtype() => dh,
            // A second backward over the same graph computes it again.
            _ => {
                let forward = HeadCrossEntropy { head: self.head.clone(), targets: self.targets.clone(), label_smoothing: self.label_smoothing, saved: self.saved.clone() };
                forward.gpu_loss_and_gradient(storage, layout)?.1
            }
        };
        super::cuda_fused::scale_in_place(&mut dh, self.scale)?;
        Ok((dh, layout.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
impl HeadCrossEntropy {
    /// The summed loss and `d hidden` for a loss gradient of 1, on the GPU.
    fn gpu_loss_and_gradient(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, candle_core::CudaStorage)> {
        let (_, _, vocab) = dims(layout, &self.head, self.targets.len())?;
        for &t in self.targets.iter() {
            super::cross_entropy::valid_target(t, vocab)?;
        }
        super::cuda_kernels::with_cuda(&self.head, "head-cross-entropy", |ws, wl| {
            super::cuda_fused::head_cross_entropy(storage, layout, ws, wl, &self.targets, self.label_smoothing)
        })
    }
}

/// Sum of the token cross-entropies of `hidden: (n, d)` under the frozen `head: (vocab, d)`
/// against `targets: n` (`IGNORE_INDEX` skipped) → `()`. Gradient for `hidden` only.
pub fn head_cross_entropy_sum(hidden: &Tensor, head: &Tensor, targets: &[i64], label_smoothing: f32) -> candle_core::Result<Tensor> {
    let gpu = super::cpu_util::cuda_ok(hidden) && head.dtype() == hidden.dtype() && head.device().same_device(hidden.device());
    if (fused_ok(hidden) && fused_ok(head)) || gpu {
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
