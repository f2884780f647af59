//! Fused `silu(gate) ⊙ up` with an explicit backward: `gate, up: (..., f) -> (..., f)`.
//! `d gate = g ⊙ up ⊙ σ(x)(1 + x(1 − σ(x)))`, `d up = g ⊙ silu(gate)`. And the same followed by
//! a frozen down projection in one op ([`swiglu_down`]).
use super::cpu_util::{cuda_ok, f32_slice, fused_ok};
use super::fast_exp;
use super::bf16_gemm::frozen_product;
use super::frozen_linear::frozen_weight_matmul;
use crate::frozen_weight::FrozenWeight;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 4096;

struct SwiGlu;
/// Both gradients in one pass: output `(2, ...)` = `[d gate; d up]`.
struct SwiGluGrad;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, "swiglu")?, f32_slice(s2, l2, "swiglu")?);
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (ar, br))| fast_exp::swiglu_into(ar, br, o));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda_kernels::swiglu_fwd(s1, l1, s2, l2)?, l1.shape().clone()))
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let both = gate.apply_op3_no_bwd(up, &g, &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `[d gate; d up]` as one `(2, ...)` storage from `gate`, `up` and the gradient `g` of
/// `silu(gate) ⊙ up`, all of `gate`'s layout.
fn both_gradients(a: &[f32], b: &[f32], g: &[f32], layout: &Layout) -> (CpuStorage, Shape) {
    let n = a.len();
    let mut out = vec![0f32; 2 * n];
    let (dg, du) = out.split_at_mut(n);
    dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (og, ou))| {
        let r = c * CHUNK..c * CHUNK + og.len();
        fast_exp::swiglu_grad_into(&a[r.clone()], &b[r.clone()], &g[r], og, ou);
    });
    let mut dims = vec![2];
    dims.extend_from_slice(layout.dims());
    (CpuStorage::F32(out), Shape::from(dims))
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b, g) = (f32_slice(s1, l1, "swiglu-grad")?, f32_slice(s2, l2, "swiglu-grad")?, f32_slice(s3, l3, "swiglu-grad")?);
        Ok(both_gradients(a, b, g, l1))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda_kernels::swiglu_bwd(s1, l1, s2, l2, s3, l3)?, super::cuda_kernels::pair_shape(l1.dims())))
    }
}

/// `silu(gate) ⊙ up`: fused on CPU f32, the composition elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let same = gate.shape() == up.shape() && gate.dtype() == up.dtype();
    if (fused_ok(gate) && fused_ok(up) && same) || (cuda_ok(gate) && up.device().same_device(gate.device()) && same) {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()? * up
    }
}

/// `down(silu(gate) ⊙ up)` for a frozen `down: (d, f)`: `gate, up: (..., f) -> (..., d)`.
///
/// The SwiGLU product exists only inside the forward (a frozen product needs no copy of its
/// input for the backward, yet candle's graph would keep it: `(rows, f)` floats per layer).
/// Backward: `ds = g · down` then both SwiGLU gradients in one pass, `[d gate; d up]`.
struct SwiGluDown {
    weight: FrozenWeight,
}

struct SwiGluDownGrad {
    weight: FrozenWeight,
}

/// `(rows, f, d)` of a SwiGLU-down call, checked against the weight.
fn swiglu_down_dims(gate: &Layout, up: &Layout, weight: &FrozenWeight, op: &str) -> candle_core::Result<(usize, usize, usize)> {
    let (d, f) = weight.dims2()?;
    if gate.shape() != up.shape() || gate.dims().last() != Some(&f) {
        return Err(super::cpu_util::msg(format!("{op}: gate {:?} and up {:?} must match and end in the down projection's input width {f}", gate.dims(), up.dims())));
    }
    Ok((gate.shape().elem_count() / f.max(1), f, d))
}

impl CustomOp2 for SwiGluDown {
    fn name(&self) -> &'static str {
        "swiglu-down"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, f, d) = swiglu_down_dims(l1, l2, &self.weight, "swiglu-down")?;
        let (a, b) = (f32_slice(s1, l1, "swiglu-down")?, f32_slice(s2, l2, "swiglu-down")?);
        let mut s = vec![0f32; a.len()];
        s.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (ar, br))| fast_exp::swiglu_into(ar, br, o));
        let y = self.weight.with_f32("swiglu-down", |w| frozen_product(&s, w, (rows, d, f), (f as isize, 1)))?;
        let mut dims = l1.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = d;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        swiglu_down_dims(l1, l2, &self.weight, "swiglu-down")?;
        let weight = dense(&self.weight, "swiglu-down")?;
        let (y, dims) = super::cuda_kernels::with_cuda(weight, "swiglu-down", |ws, wl| super::cuda_fused::swiglu_down_fwd(s1, l1, s2, l2, ws, wl))?;
        Ok((y, Shape::from(dims)))
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let both = gate.apply_op3_no_bwd(up, &g, &SwiGluDownGrad { weight: self.weight.clone() })?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

impl CustomOp3 for SwiGluDownGrad {
    fn name(&self) -> &'static str {
        "swiglu-down-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, f, d) = swiglu_down_dims(l1, l2, &self.weight, "swiglu-down-grad")?;
        let (a, b, g) = (f32_slice(s1, l1, "swiglu-down-grad")?, f32_slice(s2, l2, "swiglu-down-grad")?, f32_slice(s3, l3, "swiglu-down-grad")?);
        if g.len() != rows * d {
            return Err(super::cpu_util::msg(format!("swiglu-down-grad: gradient of {} values for ({rows}, {d})", g.len())));
        }
        // ds = g · down: (rows, d) · (d, f), the weight read row-major.
        let ds = self.weight.with_f32("swiglu-down-grad", |w| frozen_product(g, w, (rows, f, d), (1, f as isize)))?;
        Ok(both_gradients(a, b, &ds, l1))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, _, d) = swiglu_down_dims(l1, l2, &self.weight, "swiglu-down-grad")?;
        if l3.shape().elem_count() != rows * d {
            return Err(super::cpu_util::msg(format!("swiglu-down-grad: gradient {:?} for ({rows}, {d})", l3.dims())));
        }
        let weight = dense(&self.weight, "swiglu-down-grad")?;
        let both = super::cuda_kernels::with_cuda(weight, "swiglu-down-grad", |ws, wl| super::cuda_fused::swiglu_down_bwd(s1, l1, s2, l2, s3, l3, ws, wl))?;
        Ok((both, super::cuda_kernels::pair_shape(l1.dims())))
    }
}

/// The dense tensor of a weight the GPU path multiplies with.
#[cfg(feature = "cuda")]
fn dense<'a>(w: &'a FrozenWeight, op: &str) -> candle_core::Result<&'a Tensor> {
    match w {
        FrozenWeight::Dense(t) => Ok(t),
        _ => Err(super::cpu_util::msg(format!("{op}: a packed weight cannot be multiplied on the GPU"))),
    }
}

/// `down(silu(gate) ⊙ up)` with a frozen `down: (d, f)`: `gate, up: (..., f) -> (..., d)`. Fused
/// on CPU f32 and on the GPU (the SwiGLU product is never kept for the backward), the
/// composition elsewhere.
pub fn swiglu_down(gate: &Tensor, up: &Tensor, down: &FrozenWeight) -> candle_core::Result<Tensor> {
    let gpu = cuda_ok(gate) && up.device().same_device(gate.device()) && up.dtype() == gate.dtype() && super::frozen_linear::gpu_ok(gate, down);
    if ((fused_ok(gate) && fused_ok(up) && down.dtype() == DType::F32) || gpu) && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluDown { weight: down.clone() })
    } else {
        frozen_weight_matmul(&swiglu(gate, up)?, down)
    }
}
