//! Fused `silu(gate) ⊙ up` with an explicit backward: `gate, up: (..., f) -> (..., f)`.
//! `d gate = g ⊙ up ⊙ σ(x)(1 + x(1 − σ(x)))`, `d up = g ⊙ silu(gate)`.
use super::cpu_util::{f32_slice, fused_ok};
use super::fast_exp;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
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
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let both = gate.apply_op3_no_bwd(up, &g, &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b, g) = (f32_slice(s1, l1, "swiglu-grad")?, f32_slice(s2, l2, "swiglu-grad")?, f32_slice(s3, l3, "swiglu-grad")?);
        let n = a.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (og, ou))| {
            let r = c * CHUNK..c * CHUNK + og.len();
            fast_exp::swiglu_grad_into(&a[r.clone()], &b[r.clone()], &g[r], og, ou);
        });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `silu(gate) ⊙ up`: fused on CPU f32, the composition elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if fused_ok(gate) && fused_ok(up) && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()? * up
    }
}
