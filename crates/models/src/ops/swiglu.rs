//! Fused `silu(gate) ⊙ up` with an explicit backward: `gate, up: (..., f) -> (..., f)`.
//! `d gate = g ⊙ up ⊙ σ(x)(1 + x(1 − σ(x)))`, `d up = g ⊙ silu(gate)`.
use super::cpu_util::{f32_slice, fused_ok};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 4096;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct SwiGlu;
/// `which = 0`: gradient of gate; `1`: gradient of up.
struct SwiGluGrad {
    which: u8,
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, "swiglu")?, f32_slice(s2, l2, "swiglu")?);
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (ar, br))| {
            for i in 0..o.len() {
                o[i] = ar[i] * sigmoid(ar[i]) * br[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dg = gate.apply_op3_no_bwd(up, &g, &SwiGluGrad { which: 0 })?;
        let du = gate.apply_op3_no_bwd(up, &g, &SwiGluGrad { which: 1 })?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b, g) = (f32_slice(s1, l1, "swiglu-grad")?, f32_slice(s2, l2, "swiglu-grad")?, f32_slice(s3, l3, "swiglu-grad")?);
        let mut out = vec![0f32; a.len()];
        let which = self.which;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let base = c * CHUNK;
            for i in 0..o.len() {
                let (x, u, gv) = (a[base + i], b[base + i], g[base + i]);
                let s = sigmoid(x);
                o[i] = if which == 0 { gv * u * s * (1.0 + x * (1.0 - s)) } else { gv * x * s };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
