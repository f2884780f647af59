//! Between the token-major layout of the projections, `(b, t, h·d)`, and the head-major layout of
//! attention, `(b, h, t, d)`, with the rotary embedding (Hugging Face's rotate-half layout)
//! applied on the way in when tables are given: one op with an explicit backward where the
//! composition (reshape → transpose → contiguous → rope, and transpose → reshape on the way out)
//! made four graph nodes, each with a copy and a gradient buffer of its own in candle's backward.
//!
//! `to_heads(x: (b, t, h·d), h, rope) -> (b, h, t, d)`; `from_heads(x: (b, h, t, d)) -> (b, t, h·d)`.
//! The backward of one is the other (with the rotation by −θ for the rope).
use super::cpu_util::{cuda_ok, f32_slice, fused_ok, msg, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rotary tables `cos, sin: (t, d)` for the positions of the `t` tokens.
type Tables = Option<(Tensor, Tensor)>;

struct HeadsLayout {
    heads: usize,
    /// `(b, t, h·d) -> (b, h, t, d)` when true, the reverse when false.
    to_heads: bool,
    rope: Tables,
    /// Rotate by −θ (the backward of a rotation by θ).
    inverse: bool,
}

/// `dst = rotate(src)` for one head vector of `d = 2·half` values at one position: the
/// rotate-half rotation by θ (`sign = 1`) or −θ (`sign = −1`).
#[inline]
fn rotate_into(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = src.len() / 2;
    for i in 0..half {
        let (x1, x2) = (src[i], src[i + half]);
        dst[i] = x1 * cos[i] - sign * x2 * sin[i];
        dst[i + half] = x2 * cos[i + half] + sign * x1 * sin[i + half];
    }
}

/// One head vector at position `p` from `src` to `dst`: rotated when tables are given, copied
/// otherwise.
#[inline]
fn move_vector(src: &[f32], dst: &mut [f32], tables: Option<(&[f32], &[f32])>, p: usize, sign: f32) {
    let d = src.len();
    match tables {
        Some((c, s)) => rotate_into(src, dst, &c[p * d..(p + 1) * d], &s[p * d..(p + 1) * d], sign),
        None => dst.copy_from_slice(src),
    }
}

impl HeadsLayout {
    /// `(b, t, h, d)` of an input of shape `dims`, checked against the heads and the tables' length.
    fn dims(&self, dims: &[usize], table_len: Option<usize>) -> candle_core::Result<(usize, usize, usize, usize)> {
        let h = self.heads;
        let (b, t, d) = match (self.to_heads, dims) {
            (true, &[b, t, hd]) if h > 0 && hd % h == 0 => (b, t, hd / h),
            (false, &[b, hh, t, d]) if hh == h => (b, t, d),
            _ => return Err(msg(format!("heads layout: shape {dims:?} does not fit {h} heads"))),
        };
        if let Some(len) = table_len {
            if len != t * d || d % 2 != 0 {
                return Err(msg(format!("heads layout: rotary tables hold {len} values, need {t}×{d} (even)")));
            }
        }
        Ok((b, t, h, d))
    }

    /// `x` in the input layout → the output layout; `(b, t, h, d)` read off the shape.
    fn run(&self, x: &[f32], dims: &[usize], cos: Option<&[f32]>, sin: Option<&[f32]>) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
        let (b, t, h, d) = self.dims(dims, cos.map(<[f32]>::len))?;
        if let (Some(c), Some(s)) = (cos, sin) {
            if c.len() != s.len() {
                return Err(msg(format!("heads layout: rotary tables of {} and {} values", c.len(), s.len())));
            }
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        let tables = cos.zip(sin);
        if self.to_heads {
            // One output block (t, d) per (batch row, head).
            y.par_chunks_mut((t * d).max(1)).enumerate().for_each(|(bh, yb)| {
                let (bi, hi) = (bh / h, bh % h);
                for p in 0..t {
                    move_vector(&x[((bi * t + p) * h + hi) * d..][..d], &mut yb[p * d..(p + 1) * d], tables, p, sign);
                }
            });
            Ok((y, vec![b, h, t, d]))
        } else {
            // One output block (h·d) per (batch row, position).
            y.par_chunks_mut((h * d).max(1)).enumerate().for_each(|(bp, yb)| {
                let (bi, p) = (bp / t, bp % t);
                for hi in 0..h {
                    move_vector(&x[((bi * h + hi) * t + p) * d..][..d], &mut yb[hi * d..(hi + 1) * d], tables, p, sign);
                }
            });
            Ok((y, vec![b, t, h * d]))
        }
    }
}

impl CustomOp1 for HeadsLayout {
    fn name(&self) -> &'static str {
        if self.to_heads {
            "to-heads"
        } else {
            "from-heads"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (y, dims) = match &self.rope {
            Some((cos, sin)) => with_f32(cos, "heads layout", |c| with_f32(sin, "heads layout", |s| self.run(x, l.dims(), Some(c), Some(s))))?,
            None => self.run(x, l.dims(), None, None)?,
        };
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda_kernels::with_cuda;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let (b, t, h, d) = self.dims(l.dims(), self.rope.as_ref().map(|(c, _)| c.elem_count()))?;
        let y = match &self.rope {
            Some((cos, sin)) => with_cuda(cos, "heads layout", |c, lc| {
                with_cuda(sin, "heads layout", |sn, ls| super::cuda_kernels::heads_layout(s, l, Some((c, lc, sn, ls)), (b, t, h, d), self.to_heads, sign))
            })?,
            None => super::cuda_kernels::heads_layout(s, l, None, (b, t, h, d), self.to_heads, sign)?,
        };
        let dims = if self.to_heads { vec![b, h, t, d] } else { vec![b, t, h * d] };
        Ok((y, Shape::from(dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = HeadsLayout { heads: self.heads, to_heads: !self.to_heads, rope: self.rope.clone(), inverse: !self.inverse };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// `x: (b, t, h·d) -> (b, h, t, d)`, rotated by the rotary tables `cos, sin: (t, d)` when given
/// (Hugging Face's tables, the same frequencies in both halves: the backward rotates by −θ).
/// Fused on CPU f32 and on CUDA (f32, bf16), the composition elsewhere.
pub fn to_heads(x: &Tensor, heads: usize, rope: Option<(&Tensor, &Tensor)>) -> candle_core::Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    if heads == 0 || hd % heads != 0 {
        return Err(msg(format!("to_heads: width {hd} does not split into {heads} heads")));
    }
    let gpu_ok = cuda_ok(x) && rope.is_none_or(|(c, s)| [c, s].iter().all(|r| r.dtype() == x.dtype() && r.device().same_device(x.device())));
    if (fused_ok(x) && rope.is_none_or(|(c, s)| fused_ok(c) && fused_ok(s))) || gpu_ok {
        let rope = match rope {
            Some((c, s)) => Some((c.contiguous()?, s.contiguous()?)),
            None => None,
        };
        return x.contiguous()?.apply_op1(HeadsLayout { heads, to_heads: true, rope, inverse: false });
    }
    let y = x.reshape((b, t, heads, hd / heads))?.transpose(1, 2)?.contiguous()?;
    match rope {
        Some((c, s)) => super::norms::apply_rotary(&y, c, s),
        None => Ok(y),
    }
}

/// `x: (b, h, t, d) -> (b, t, h·d)`. Fused on CPU f32 and on CUDA, the composition elsewhere.
pub fn from_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    if fused_ok(x) || cuda_ok(x) {
        return x.contiguous()?.apply_op1(HeadsLayout { heads: h, to_heads: false, rope: None, inverse: false });
    }
    x.transpose(1, 2)?.reshape((b, t, h * d))
}
