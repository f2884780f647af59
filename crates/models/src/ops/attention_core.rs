//! The attention core in one op, grouped-query heads without repeating K/V:
//! `q: (b, h, t, d)`, `k, v: (b, kvh, t_k, d)` → `ctx: (b, t, h·d)` (token-major, ready for the
//! output projection), `ctx = softmax(scale · q·kᵀ + mask) · v` per head, head `i` reading kv
//! head `i / (h / kvh)` as Hugging Face's `repeat_kv`.
//!
//! Per kv group (its `g = h / kvh` query heads stacked as `g·t` rows): `S = Q·Kᵀ`, `P` = masked
//! softmax of the rows, `C = P·V`, three gemms on the group's own memory. Only `P` is kept for the
//! backward (inside the op): the composition kept the scores as well, candle's graph holding them
//! for a softmax whose backward needs only its output, plus the head-major context for the
//! layout change after it. Backward, with `dC` from `d ctx`: `dP = dC·Vᵀ`, `dV = Pᵀ·dC`,
//! `dS = scale · P ⊙ (dP − Σ dP ⊙ P)`, `dQ = dS·K`, `dK = dSᵀ·Q` (the group's heads summed into
//! its one `dK`, `dV`). On the GPU the same products run batched over the groups in cuBLAS and the
//! backward recomputes `P` (one more `Q·Kᵀ`) rather than keeping every layer's probabilities.
use super::cpu_util::{f32_slice, fused_ok, msg};
use super::masked_softmax::{masked_softmax, masked_softmax_row, AttentionMask};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Sizes of one call: batch, query heads, kv heads, query length, key length, head width.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    t: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Self> {
        let (b, h, t, d) = q.shape().dims4()?;
        let (kb, kvh, tk, kd) = k.shape().dims4()?;
        if kb != b || kd != d || k.shape() != v.shape() || kvh == 0 || h % kvh != 0 {
            return Err(msg(format!("attention-core: q {:?}, k {:?}, v {:?} do not fit (b, h, t, d) / (b, kvh, t_k, d) with kvh dividing h", q.dims(), k.dims(), v.dims())));
        }
        Ok(Self { b, h, kvh, t, tk, d })
    }
    /// Query heads per kv head.
    fn g(&self) -> usize {
        self.h / self.kvh
    }
    fn groups(&self) -> usize {
        self.b * self.kvh
    }
    #[cfg(feature = "cuda")]
    fn gpu(&self) -> super::cuda_fused::AttentionDims {
        let Dims { b, h, kvh, t, tk, d } = *self;
        super::cuda_fused::AttentionDims { b, h, kvh, t, tk, d }
    }
}

/// `dst (m, n) = [dst +] lhs · rhs` on one thread, every operand read through its
/// `(column step, row step)` strides; dst is row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_1t(dst: &mut [f32], (m, n, k): (usize, usize, usize), lhs: &[f32], (lcs, lrs): (isize, isize), rhs: &[f32], (rcs, rrs): (isize, isize), accumulate: bool) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the callers pass slices whose extents match the sizes and strides: the group's own
    // rows of Q, K, V, P and their gradients, all contiguous row-major buffers.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize,
            accumulate,
            lhs.as_ptr(), lcs, lrs,
            rhs.as_ptr(), rcs, rrs,
            1.0, 1.0,
            false, false, false,
            gemm::Parallelism::None,
        )
    }
}

/// The probabilities of every group, `(b, kvh, g·t, t_k)`: `S = Q·Kᵀ`, then the masked softmax.
fn probabilities(q: &[f32], k: &[f32], dims: Dims, mask: &AttentionMask, scale: f32) -> Vec<f32> {
    let Dims { t, tk, d, .. } = dims;
    let rows = dims.g() * t;
    let mut p = vec![0f32; dims.groups() * rows * tk];
    p.par_chunks_mut(rows * tk).enumerate().for_each(|(grp, pg)| {
        let qg = &q[grp * rows * d..(grp + 1) * rows * d];
        let kg = &k[grp * tk * d..(grp + 1) * tk * d];
        // S (rows, tk) = Q (rows, d) · Kᵀ (d, tk).
        gemm_1t(pg, (rows, tk, d), qg, (1, d as isize), kg, (d as isize, 1), false);
        let b = grp / dims.kvh;
        let mut scores = vec![0f32; tk];
        for (r, row) in pg.chunks_mut(tk).enumerate() {
            scores.copy_from_slice(row);
            masked_softmax_row(mask, scale, b, r % t, &scores, row);
        }
    });
    p
}

/// `(b, h, t, d)` ⇄ `(b, t, h·d)`: `to_tokens` moves head-major to token-major.
fn relayout(x: &[f32], dims: Dims, to_tokens: bool) -> Vec<f32> {
    let Dims { h, t, d, .. } = dims;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h * t * d).zip(x.par_chunks(h * t * d)).for_each(|(o, xb)| {
        for head in 0..h {
            for pos in 0..t {
                let hm = (head * t + pos) * d;
                let tm = (pos * h + head) * d;
                if to_tokens {
                    o[tm..tm + d].copy_from_slice(&xb[hm..hm + d]);
                } else {
                    o[hm..hm + d].copy_from_slice(&xb[tm..tm + d]);
                }
            }
        }
    });
    out
}

/// The checked sizes and the f32 data of `(q, k, v)`.
type Operands<'a> = (Dims, &'a [f32], &'a [f32], &'a [f32]);

fn operands<'a>((sq, lq): (&'a CpuStorage, &Layout), (sk, lk): (&'a CpuStorage, &Layout), (sv, lv): (&'a CpuStorage, &Layout), op: &str) -> candle_core::Result<Operands<'a>> {
    Ok((Dims::of(lq, lk, lv)?, f32_slice(sq, lq, op)?, f32_slice(sk, lk, op)?, f32_slice(sv, lv, op)?))
}

struct AttentionCore {
    mask: AttentionMask,
    scale: f32,
    /// The forward's probabilities, taken by the backward.
    saved: Arc<Mutex<Option<Vec<f32>>>>,
}

#[cfg(feature = "cuda")]
impl AttentionCore {
    fn gpu_mask<'a>(&self, keep: &'a [u8]) -> super::cuda_fused::MaskArgs<'a> {
        super::cuda_fused::MaskArgs { keep, offset: self.mask.offset, causal: self.mask.causal, scale: self.scale }
    }
}

/// The backward as an op: `(q, k, v)` and, through `grad`, `d ctx` → `[dQ | dK | dV]` flat.
struct AttentionCoreGrad {
    mask: AttentionMask,
    scale: f32,
    saved: Arc<Mutex<Option<Vec<f32>>>>,
    grad: Tensor,
}

impl CustomOp3 for AttentionCore {
    fn name(&self) -> &'static str {
        "attention-core"
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout, sk: &CpuStorage, lk: &Layout, sv: &CpuStorage, lv: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dims, q, k, v) = operands((sq, lq), (sk, lk), (sv, lv), "attention-core")?;
        let Dims { b, h, t, tk, d, .. } = dims;
        let rows = dims.g() * t;
        let p = probabilities(q, k, dims, &self.mask, self.scale);
        // C (rows, d) = P (rows, tk) · V (tk, d), head-major.
        let mut c = vec![0f32; b * h * t * d];
        c.par_chunks_mut(rows * d).zip(p.par_chunks(rows * tk)).enumerate().for_each(|(grp, (cg, pg))| {
            let vg = &v[grp * tk * d..(grp + 1) * tk * d];
            gemm_1t(cg, (rows, d, tk), pg, (1, tk as isize), vg, (1, d as isize), false);
        });
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some(p);
        }
        Ok((CpuStorage::F32(relayout(&c, dims, true)), Shape::from((b, t, h * d))))
    }

    /// cuBLAS products and the masked-softmax kernel; the probabilities are freed at return.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, sq: &candle_core::CudaStorage, lq: &Layout, sk: &candle_core::CudaStorage, lk: &Layout, sv: &candle_core::CudaStorage, lv: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dims = Dims::of(lq, lk, lv)?;
        let keep = self.mask.keep_bytes(dims.b, dims.tk);
        let out = super::cuda_fused::attention_fwd(sq, lq, sk, lk, sv, lv, dims.gpu(), &self.gpu_mask(&keep))?;
        Ok((out, Shape::from((dims.b, dims.t, dims.h * dims.d))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionCoreGrad { mask: self.mask.clone(), scale: self.scale, saved: self.saved.clone(), grad: grad.contiguous()? };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl CustomOp3 for AttentionCoreGrad {
    fn name(&self) -> &'static str {
        "attention-core-grad"
    }

    /// The probabilities recomputed, then the four gradient products (see the module doc).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, sq: &candle_core::CudaStorage, lq: &Layout, sk: &candle_core::CudaStorage, lk: &Layout, sv: &candle_core::CudaStorage, lv: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dims = Dims::of(lq, lk, lv)?;
        let Dims { b, h, kvh, t, tk, d } = dims;
        if self.grad.elem_count() != b * t * h * d {
            return Err(msg(format!("attention-core-grad: gradient {:?} for ({b}, {t}, {})", self.grad.dims(), h * d)));
        }
        let keep = self.mask.keep_bytes(b, tk);
        let mask = super::cuda_fused::MaskArgs { keep: &keep, offset: self.mask.offset, causal: self.mask.causal, scale: self.scale };
        let out = super::cuda_kernels::with_cuda(&self.grad, "attention-core-grad", |sg, lg| super::cuda_fused::attention_bwd(sq, lq, sk, lk, sv, lv, sg, lg, dims.gpu(), &mask))?;
        Ok((out, Shape::from(b * h * t * d + 2 * b * kvh * tk * d)))
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout, sk: &CpuStorage, lk: &Layout, sv: &CpuStorage, lv: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dims, q, k, v) = operands((sq, lq), (sk, lk), (sv, lv), "attention-core-grad")?;
        let Dims { b, h, t, tk, d, .. } = dims;
        let rows = dims.g() * t;
        let g_ctx = {
            let (s, l) = self.grad.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(c) => {
                    let g = f32_slice(c, l, "attention-core-grad")?;
                    if g.len() != b * t * h * d {
                        return Err(msg(format!("attention-core-grad: gradient {:?} for ({b}, {t}, {})", l.dims(), h * d)));
                    }
                    relayout(g, dims, false)
                }
                _ => return Err(msg("attention-core-grad: cpu only")),
            }
        };
        // The forward's probabilities (a second backward over the same graph recomputes them).
        let taken = self.saved.lock().ok().and_then(|mut s| s.take());
        let mut p = match taken {
            Some(p) if p.len() == dims.groups() * rows * tk => p,
            _ => probabilities(q, k, dims, &self.mask, self.scale),
        };
        let (nq, nk) = (q.len(), k.len());
        let mut out = vec![0f32; nq + 2 * nk];
        let (dq, rest) = out.split_at_mut(nq);
        let (dk, dv) = rest.split_at_mut(nk);
        let scale = self.scale;
        dq.par_chunks_mut(rows * d)
            .zip(dk.par_chunks_mut(tk * d).zip(dv.par_chunks_mut(tk * d)))
            .zip(p.par_chunks_mut(rows * tk))
            .enumerate()
            .for_each(|(grp, ((dqg, (dkg, dvg)), pg))| {
                let qg = &q[grp * rows * d..(grp + 1) * rows * d];
                let kg = &k[grp * tk * d..(grp + 1) * tk * d];
                let vg = &v[grp * tk * d..(grp + 1) * tk * d];
                let dcg = &g_ctx[grp * rows * d..(grp + 1) * rows * d];
                // dV (tk, d) = Pᵀ (tk, rows) · dC (rows, d).
                gemm_1t(dvg, (tk, d, rows), pg, (tk as isize, 1), dcg, (1, d as isize), false);
                // dP (rows, tk) = dC (rows, d) · Vᵀ (d, tk); then dS in place of P.
                let mut dp = vec![0f32; rows * tk];
                gemm_1t(&mut dp, (rows, tk, d), dcg, (1, d as isize), vg, (d as isize, 1), false);
                for (pr, gr) in pg.chunks_mut(tk).zip(dp.chunks(tk)) {
                    let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for (pv, gv) in pr.iter_mut().zip(gr) {
                        *pv = scale * *pv * (gv - dot);
                    }
                }
                let ds = &*pg;
                // dQ (rows, d) = dS (rows, tk) · K (tk, d).
                gemm_1t(dqg, (rows, d, tk), ds, (1, tk as isize), kg, (1, d as isize), false);
                // dK (tk, d) = dSᵀ (tk, rows) · Q (rows, d).
                gemm_1t(dkg, (tk, d, rows), ds, (tk as isize, 1), qg, (1, d as isize), false);
            });
        Ok((CpuStorage::F32(out), Shape::from(nq + 2 * nk)))
    }
}

/// `softmax(scale · q·kᵀ + mask) · v` with grouped-query heads, `q: (b, h, t, d)`,
/// `k, v: (b, kvh, t_k, d)` → `(b, t, h·d)`. Fused on CPU f32 and on the GPU (where the
/// backward recomputes the probabilities instead of keeping them); elsewhere the composition
/// (matmul, [`masked_softmax`], matmul, layout change).
pub fn attention_core(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask, scale: f64) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let gpu = super::cpu_util::cuda_ok(q) && [k, v].iter().all(|x| x.dtype() == q.dtype() && x.device().same_device(q.device()));
    if (fused_ok(q) && fused_ok(k) && fused_ok(v)) || gpu {
        let op = AttentionCore { mask: mask.clone(), scale: scale as f32, saved: Arc::new(Mutex::new(None)) };
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    if kvh == 0 || h % kvh != 0 {
        return Err(msg(format!("attention-core: {h} query heads over {kvh} kv heads")));
    }
    let g = h / kvh;
    let qg = q.contiguous()?.reshape((b, kvh, g * t, d))?;
    let scores = qg.matmul(&k.t()?)?;
    let probs = masked_softmax(&scores, mask, scale)?;
    let ctx = probs.matmul(&v.contiguous()?)?.reshape((b, h, t, d))?;
    ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}
