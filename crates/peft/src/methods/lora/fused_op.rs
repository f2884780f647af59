//! Fused LoRA linear layer with an explicit backward:
//! `y = x·Wᵀ + b + s·((x⊙m)·Aᵀ)·Bᵀ` for `x: (n, d_in)`, frozen `W: (d_out, d_in)`, trainable
//! `A: (r, d_in)`, `B: (d_out, r)`, and an optional dropout mask `m` on the adapter branch.
//! The branch is accumulated into the base product in place, so neither the base output nor the
//! delta is kept for the backward. Backward (`g: (n, d_out)`, `u = s·(g·B): (n, r)`):
//! `dx = g·W + (u·A)⊙m`, `dA = uᵀ·(x⊙m)`, `dB = s·gᵀ·((x⊙m)·Aᵀ)`.
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use lowrank_models::ops::bf16_gemm::frozen_product_into;
use lowrank_models::FrozenWeight;
use std::sync::Arc;

pub struct FusedLora {
    /// `(d_out, d_in)`, dense f32 or packed.
    pub weight: FrozenWeight,
    pub bias: Option<Tensor>,
    pub scale: f32,
    /// Inverted-dropout mask over `x` (`n · d_in` values), training only.
    pub mask: Option<Arc<Tensor>>,
}

fn msg(s: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(s.into())
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| msg(format!("fused-lora: {what} must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => Err(msg("fused-lora: f32 only")),
    }
}

/// `dst (m, n) (+)= alpha · lhs (m, k) · rhs` with rhs read through strides `(col, row)`.
#[allow(clippy::too_many_arguments)]
fn gemm_into(dst: &mut [f32], lhs: &[f32], rhs: &[f32], (m, n, k): (usize, usize, usize), (rhs_cs, rhs_rs): (isize, isize), accumulate: bool, alpha: f32) {
    // SAFETY: slices sized (m, n), (m, k) and the rhs extent described by the strides; checked by callers.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize,
            accumulate,
            lhs.as_ptr(), 1, k as isize,
            rhs.as_ptr(), rhs_cs, rhs_rs,
            1.0, alpha,
            false, false, false,
            gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
        )
    }
}

impl CustomOp3 for FusedLora {
    fn name(&self) -> &'static str {
        "fused-lora"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sa: &CpuStorage, la: &Layout, sb: &CpuStorage, lb: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, a, b) = (f32s(sx, lx, "x")?, f32s(sa, la, "A")?, f32s(sb, lb, "B")?);
        let (r, d_in) = la.shape().dims2()?;
        let (d_out, r2) = lb.shape().dims2()?;
        let (wo, wi) = self.weight.dims2()?;
        if r != r2 || wi != d_in || wo != d_out || lx.dims().last() != Some(&d_in) {
            return Err(msg(format!("fused-lora: shapes x {:?}, A {:?}, B {:?}, W ({wo}, {wi}) do not fit", lx.dims(), la.dims(), lb.dims())));
        }
        let n = x.len() / d_in;
        let mut y = vec![0f32; n * d_out];
        // The frozen base product (in bf16 when this thread has switched bf16 products on).
        self.weight.with_f32("fused-lora", |w| frozen_product_into(&mut y, x, w, (n, d_out, d_in), (d_in as isize, 1), false, 1.0))?;
        // xa = (x ⊙ m) · Aᵀ : (n, r)
        let mut xa = vec![0f32; n * r];
        match &self.mask {
            Some(mask) => {
                let masked = mask.as_ref().mul(&Tensor::from_slice(x, (n, d_in), &candle_core::Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?;
                gemm_into(&mut xa, &masked, a, (n, r, d_in), (d_in as isize, 1), false, 1.0);
            }
            None => gemm_into(&mut xa, x, a, (n, r, d_in), (d_in as isize, 1), false, 1.0),
        }
        // y += s · xa · Bᵀ
        gemm_into(&mut y, &xa, b, (n, d_out, r), (r as isize, 1), true, self.scale);
        if let Some(bias) = &self.bias {
            let bv = bias.flatten_all()?.to_vec1::<f32>()?;
            for row in y.chunks_mut(d_out) {
                row.iter_mut().zip(&bv).for_each(|(o, b)| *o += b);
            }
        }
        let mut dims = lx.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = d_out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// cuBLAS on the GPU: A and B come in x's dtype; the bias is left to the caller (the CUDA
    /// path adds it outside the op, where it gets its gradient if it trains).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, sx: &candle_core::CudaStorage, lx: &Layout, sa: &candle_core::CudaStorage, la: &Layout, sb: &candle_core::CudaStorage, lb: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use lowrank_models::ops::cuda_fused::{lora_fwd, with_cuda};
        let FrozenWeight::Dense(w) = &self.weight else {
            return Err(msg("fused-lora: a packed weight cannot be multiplied on the GPU"));
        };
        if self.bias.is_some() {
            return Err(msg("fused-lora: the GPU path adds the bias outside the op"));
        }
        let (y, dims) = with_cuda(w, "fused-lora", |ws, wl| match &self.mask {
            Some(m) => with_cuda(m, "fused-lora", |ms, ml| lora_fwd(sx, lx, ws, wl, sa, la, sb, lb, Some((ms, ml)), self.scale)),
            None => lora_fwd(sx, lx, ws, wl, sa, la, sb, lb, None, self.scale),
        })?;
        Ok((y, Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached: the gradients must not carry the forward graph (the optimizer keeps its
        // moments across steps, which would keep every step's activations alive).
        let (x, a, b) = (&x.detach(), &a.detach(), &b.detach());
        let (d_out, _) = b.dims2()?;
        let d_in = a.dim(1)?;
        let n = grad.elem_count() / d_out;
        let g = grad.contiguous()?.reshape((n, d_out))?;
        let x2 = x.reshape((n, d_in))?;
        let xm = match &self.mask {
            Some(m) => (&x2 * m.as_ref())?,
            None => x2.clone(),
        };
        let u = (g.matmul(b)? * self.scale as f64)?; // (n, r)
        let branch = u.matmul(a)?; // (n, d_in)
        let branch = match &self.mask {
            Some(m) => (branch * m.as_ref())?,
            None => branch,
        };
        let dx = (lowrank_models::ops::frozen_linear::frozen_matmul_t(&g, &self.weight)? + branch)?.reshape(x.shape())?;
        let da = u.t()?.matmul(&xm)?; // (r, d_in)
        let db = (g.t()?.matmul(&xm.matmul(&a.t()?)?)? * self.scale as f64)?; // (d_out, r)
        Ok((Some(dx), Some(da), Some(db)))
    }
}
