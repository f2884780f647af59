//! Fused rotary embedding (Hugging Face rotate-half layout) with an explicit backward.
//! `x: (b, h, t, d)`, tables `cos, sin: (t, d)`: `y = x ⊙ cos + rotate_half(x) ⊙ sin`.
//! The backward is the same rotation with `−sin` (the rotation's transpose).
use super::cpu_util::{f32_slice, fused_ok, msg, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// Backward direction (rotation by −θ).
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rope")?;
        let dims = l.dims();
        if dims.len() != 4 {
            return Err(msg(format!("rope: expected (b, h, t, d), got {dims:?}")));
        }
        let (t, d) = (dims[2], dims[3]);
        let half = d / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let out = with_f32(&self.cos, "rope", |cos| {
            with_f32(&self.sin, "rope", |sin| {
                if cos.len() != t * d || sin.len() != t * d {
                    return Err(msg(format!("rope: tables hold {} values, need {t}×{d}", cos.len())));
                }
                let mut y = vec![0f32; x.len()];
                y.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).for_each(|(yb, xb)| {
                    for p in 0..t {
                        let (xr, yr) = (&xb[p * d..(p + 1) * d], &mut yb[p * d..(p + 1) * d]);
                        let (c, sn) = (&cos[p * d..(p + 1) * d], &sin[p * d..(p + 1) * d]);
                        for i in 0..half {
                            let (x1, x2) = (xr[i], xr[i + half]);
                            yr[i] = x1 * c[i] - sign * x2 * sn[i];
                            yr[i + half] = x2 * c[i + half] + sign * x1 * sn[i + half];
                        }
                    }
                });
                Ok(y)
            })
        })?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Rope { cos: self.cos.clone(), sin: self.sin.clone(), inverse: !self.inverse })?))
    }
}

/// Rotary embedding: fused on CPU f32, the composition elsewhere. `x: (b, h, t, d)`, `cos, sin: (t, d)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if fused_ok(x) && fused_ok(cos) {
        x.contiguous()?.apply_op1(Rope { cos: cos.contiguous()?, sin: sin.contiguous()?, inverse: false })
    } else {
        super::norms::apply_rotary(x, cos, sin)
    }
}
