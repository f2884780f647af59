//! The CUDA paths of the fused ops that pair cuBLAS products ([`super::cuda_gemm`]) with
//! lowrank's kernels ([`super::cuda_kernels`]): the frozen product (no weight gradient), the
//! SwiGLU with its frozen down projection, the output head with its cross-entropy, the attention
//! core and the LoRA layer's forward. Each keeps for the backward only what the backward reads
//! (the attention probabilities and the logits are recomputed or consumed in place), so candle's
//! graph holds no score- or vocabulary-sized tensor between the forward and the backward.
use super::cuda_gemm::{Gemm, GemmFloat};
pub use super::cuda_kernels::with_cuda;
use super::cuda_kernels::{alloc, err, heads_layout, kernel, masked_softmax_bwd, masked_softmax_fwd, rows_config, swiglu_bwd, swiglu_fwd, typed_kernel, view, flat_config};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Result};
use half::bf16;

/// Calls `$f::<T>(args)` with `T` the Rust element type of `$dtype` (f32 or bf16).
macro_rules! by_dtype {
    ($dtype:expr, $op:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            other => Err(err(format!("{}: no CUDA path for {other:?}", $op))),
        }
    };
}

/// The element types of the fused CUDA paths (f32, bf16).
trait Elem: GemmFloat + CudaDType + candle_core::WithDType {}
impl<T: GemmFloat + CudaDType + candle_core::WithDType> Elem for T {}

fn check_dtypes(op: &str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(err(format!("{op}: input {:?} and weight {:?} differ in dtype", a.dtype(), b.dtype())));
    }
    Ok(())
}

/// `(m, n, k, tb)` of a frozen product: `x (..., k) · Wᵀ` for `W: (n, k)`, or with `transposed`
/// `x (..., k) · W` for `W: (k, n)`.
fn frozen_dims(lx: &Layout, lw: &Layout, transposed: bool, op: &str) -> Result<(usize, usize, usize, bool)> {
    let (rows, cols) = lw.shape().dims2()?;
    let (n, k) = if transposed { (cols, rows) } else { (rows, cols) };
    let last = *lx.dims().last().ok_or_else(|| err(format!("{op} on a scalar")))?;
    if last != k {
        return Err(err(format!("{op}: input {:?} against a weight of shape ({rows}, {cols})", lx.dims())));
    }
    Ok((lx.shape().elem_count() / k.max(1), n, k, !transposed))
}

fn frozen_product_typed<T: Elem>(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, (m, n, k, tb): (usize, usize, usize, bool)) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let (xv, wv) = (view::<T>(x, lx, "frozen-matmul")?, view::<T>(w, lw, "frozen-matmul")?);
    let mut y = alloc::<T>(&dev, m * n)?;
    let g = Gemm::new(m, n, k);
    (if tb { g.tb() } else { g }).run(&dev, &xv, &wv, &mut y)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `x: (..., d_in) · Wᵀ -> (..., d_out)` for a frozen `W: (d_out, d_in)`; with `transposed`,
/// `x: (..., d_out) · W -> (..., d_in)` (the input gradient). Returns the output and its dims.
pub fn frozen_product(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, transposed: bool) -> Result<(CudaStorage, Vec<usize>)> {
    check_dtypes("frozen-matmul", x, w)?;
    let dims = frozen_dims(lx, lw, transposed, "frozen-matmul")?;
    let y = by_dtype!(x.dtype(), "frozen-matmul", frozen_product_typed(x, lx, w, lw, dims))?;
    let mut out = lx.dims().to_vec();
    let last = out.len() - 1;
    out[last] = dims.1;
    Ok((y, out))
}

/// `down(silu(gate) ⊙ up)`: `gate, up: (..., f)`, frozen `down: (d, f)` → `(..., d)`. The SwiGLU
/// product lives only inside the call.
pub fn swiglu_down_fwd(gate: &CudaStorage, lg: &Layout, up: &CudaStorage, lu: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Vec<usize>)> {
    let s = swiglu_fwd(gate, lg, up, lu)?;
    frozen_product(&s, &Layout::contiguous(lg.shape()), w, lw, false)
}

/// `[d gate; d up]` of [`swiglu_down_fwd`] under `g: (..., d)`: `ds = g · down`, then both
/// SwiGLU gradients in one pass, `(2, ..., f)`.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_down_bwd(gate: &CudaStorage, lg: &Layout, up: &CudaStorage, lu: &Layout, g: &CudaStorage, lgr: &Layout, w: &CudaStorage, lw: &Layout) -> Result<CudaStorage> {
    let (ds, dims) = frozen_product(g, lgr, w, lw, true)?;
    if dims.iter().product::<usize>() != lg.shape().elem_count() {
        return Err(err(format!("swiglu-down-grad: gradient {:?} for gate {:?}", lgr.dims(), lg.dims())));
    }
    swiglu_bwd(gate, lg, up, lu, &ds, &Layout::contiguous(lg.shape()))
}

/// Logit rows per chunk of the head's cross-entropy: at most 64 Mi logits alive at once.
fn head_chunk_rows(n: usize, vocab: usize) -> usize {
    ((64usize << 20) / vocab.max(1)).clamp(1, n.max(1))
}

fn head_cross_entropy_typed<T: Elem>(h: &CudaStorage, lh: &Layout, w: &CudaStorage, lw: &Layout, targets: &[i64], eps: f32) -> Result<(CudaStorage, CudaStorage)> {
    let dev = h.device().clone();
    let (n, d) = lh.shape().dims2()?;
    let (vocab, _) = lw.shape().dims2()?;
    let (hv, wv) = (view::<T>(h, lh, "head-cross-entropy")?, view::<T>(w, lw, "head-cross-entropy")?);
    let t = dev.clone_htod(targets)?;
    let mut row_loss = alloc::<f32>(&dev, n)?;
    let mut dh = alloc::<T>(&dev, n * d)?;
    let chunk = head_chunk_rows(n, vocab);
    let mut z = alloc::<T>(&dev, chunk * vocab)?;
    let rows_kernel = typed_kernel(&dev, "head_ce_rows", T::DTYPE, "head-cross-entropy")?;
    let stream = dev.cuda_stream();
    let v_ = vocab as i32;
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        // z (c, vocab) = h[start..] · headᵀ
        Gemm::new(c, vocab, d).tb().run(&dev, &hv.slice(start * d..(start + c) * d), &wv, &mut z.slice_mut(0..c * vocab))?;
        {
            let mut zc = z.slice_mut(0..c * vocab);
            let tc = t.slice(start..start + c);
            let mut lc = row_loss.slice_mut(start..start + c);
            let mut b = stream.launch_builder(&rows_kernel);
            b.arg(&mut zc).arg(&tc).arg(&mut lc).arg(&v_).arg(&eps);
            unsafe { b.launch(rows_config(c)) }.w()?;
        }
        // d h[start..] (c, d) = dz (c, vocab) · head (vocab, d)
        Gemm::new(c, d, vocab).run(&dev, &z.slice(0..c * vocab), &wv, &mut dh.slice_mut(start * d..(start + c) * d))?;
    }
    let out = alloc::<f32>(&dev, 1)?;
    let sum = kernel(&dev, "sum_rows")?;
    let rows = n as i64;
    let mut b = stream.launch_builder(&sum);
    b.arg(&row_loss).arg(&out).arg(&rows);
    unsafe { b.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), CudaStorage::wrap_cuda_slice(dh, dev)))
}

/// The summed token cross-entropy of `hidden: (n, d)` under the frozen `head: (vocab, d)`, and
/// its gradient for `hidden` (for a loss gradient of 1): `(loss (), d hidden (n, d))`. The
/// logits exist one chunk of rows at a time and are turned into their gradient in place;
/// targets must already be checked (`IGNORE_INDEX` or inside the vocabulary).
pub fn head_cross_entropy(h: &CudaStorage, lh: &Layout, w: &CudaStorage, lw: &Layout, targets: &[i64], eps: f32) -> Result<(CudaStorage, CudaStorage)> {
    check_dtypes("head-cross-entropy", h, w)?;
    let (n, d) = lh.shape().dims2()?;
    let (vocab, wd) = lw.shape().dims2()?;
    if wd != d || targets.len() != n {
        return Err(err(format!("head-cross-entropy: hidden {:?}, head ({vocab}, {wd}), {} targets", lh.dims(), targets.len())));
    }
    by_dtype!(h.dtype(), "head-cross-entropy", head_cross_entropy_typed(h, lh, w, lw, targets, eps))
}

fn scale_typed<T: Elem>(x: &mut CudaStorage, s: f32) -> Result<()> {
    let dev = x.device().clone();
    let f = typed_kernel(&dev, "scale_inplace", T::DTYPE, "scale")?;
    let slice = x.as_cuda_slice_mut::<T>()?;
    let n = slice.len();
    let n_ = n as i64;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(slice).arg(&n_).arg(&s);
    unsafe { b.launch(flat_config(n)) }.w()?;
    Ok(())
}

/// `x ← s · x` in place.
pub fn scale_in_place(x: &mut CudaStorage, s: f32) -> Result<()> {
    by_dtype!(x.dtype(), "scale", scale_typed(x, s))
}

/// Sizes of an attention-core call: batch, query heads, kv heads, query length, key length,
/// head width.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub t: usize,
    pub tk: usize,
    pub d: usize,
}

impl AttentionDims {
    fn groups(&self) -> usize {
        self.b * self.kvh
    }
    /// Query rows of a kv group: its `h / kvh` heads stacked.
    fn rows(&self) -> usize {
        self.h / self.kvh * self.t
    }
}

/// The mask of an attention-core call as the softmax kernel takes it.
pub struct MaskArgs<'a> {
    /// `(b, t_k)` bytes, 0 = padded key.
    pub keep: &'a [u8],
    pub offset: usize,
    pub causal: bool,
    pub scale: f32,
}

/// The probabilities `P (groups, rows, t_k)` = masked softmax of `scale · Q·Kᵀ` per kv group.
fn probabilities<T: Elem>(q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, dims: AttentionDims, mask: &MaskArgs) -> Result<CudaStorage> {
    let dev = q.device().clone();
    let AttentionDims { b, kvh, t, tk, d, .. } = dims;
    let (groups, rows) = (dims.groups(), dims.rows());
    let (qv, kv) = (view::<T>(q, lq, "attention-core")?, view::<T>(k, lk, "attention-core")?);
    let mut s = alloc::<T>(&dev, groups * rows * tk)?;
    Gemm::new(rows, tk, d).tb().batched(groups).run(&dev, &qv, &kv, &mut s)?;
    let s = CudaStorage::wrap_cuda_slice(s, dev);
    masked_softmax_fwd(&s, &Layout::contiguous((b, kvh, rows, tk)), mask.keep, t, mask.offset, mask.causal, mask.scale)
}

#[allow(clippy::too_many_arguments)]
fn attention_fwd_typed<T: Elem>(q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout, dims: AttentionDims, mask: &MaskArgs) -> Result<CudaStorage> {
    let dev = q.device().clone();
    let AttentionDims { b, h, t, tk, d, .. } = dims;
    let (groups, rows) = (dims.groups(), dims.rows());
    let p = probabilities::<T>(q, lq, k, lk, dims, mask)?;
    let vv = view::<T>(v, lv, "attention-core")?;
    let mut c = alloc::<T>(&dev, groups * rows * d)?;
    Gemm::new(rows, d, tk).batched(groups).run(&dev, p.as_cuda_slice::<T>()?, &vv, &mut c)?;
    drop(p);
    let c = CudaStorage::wrap_cuda_slice(c, dev);
    heads_layout(&c, &Layout::contiguous((b, h, t, d)), None, (b, t, h, d), false, 1.0)
}

/// `softmax(scale · q·kᵀ + mask) · v`, `q: (b, h, t, d)`, `k, v: (b, kvh, t_k, d)` (contiguous) →
/// `(b, t, h·d)`. The scores and probabilities are freed before the call returns.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout, dims: AttentionDims, mask: &MaskArgs) -> Result<CudaStorage> {
    check_dtypes("attention-core", q, k)?;
    check_dtypes("attention-core", q, v)?;
    by_dtype!(q.dtype(), "attention-core", attention_fwd_typed(q, lq, k, lk, v, lv, dims, mask))
}

#[allow(clippy::too_many_arguments)]
fn attention_bwd_typed<T: Elem>(q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout, g: &CudaStorage, lg: &Layout, dims: AttentionDims, mask: &MaskArgs) -> Result<CudaStorage> {
    let dev = q.device().clone();
    let AttentionDims { b, h, kvh, t, tk, d } = dims;
    let (groups, rows) = (dims.groups(), dims.rows());
    let (nq, nk) = (b * h * t * d, b * kvh * tk * d);
    // dC, head-major (groups, rows, d).
    let dc = heads_layout(g, lg, None, (b, t, h, d), true, 1.0)?;
    let p = probabilities::<T>(q, lq, k, lk, dims, mask)?;
    let (qv, kv, vv) = (view::<T>(q, lq, "attention-core-grad")?, view::<T>(k, lk, "attention-core-grad")?, view::<T>(v, lv, "attention-core-grad")?);
    let dcv = dc.as_cuda_slice::<T>()?;
    let mut out = alloc::<T>(&dev, nq + 2 * nk)?;
    // dV (groups, t_k, d) = Pᵀ · dC
    Gemm::new(tk, d, rows).ta().batched(groups).run(&dev, p.as_cuda_slice::<T>()?, dcv, &mut out.slice_mut(nq + nk..nq + 2 * nk))?;
    // dP (groups, rows, t_k) = dC · Vᵀ
    let mut dp = alloc::<T>(&dev, groups * rows * tk)?;
    Gemm::new(rows, tk, d).tb().batched(groups).run(&dev, dcv, &vv, &mut dp)?;
    let layout = Layout::contiguous((b, kvh, rows, tk));
    let dp = CudaStorage::wrap_cuda_slice(dp, dev.clone());
    // dS = scale · P ⊙ (dP − Σ dP ⊙ P)
    let ds = masked_softmax_bwd(&p, &layout, &dp, &layout, mask.scale)?;
    drop((p, dp));
    let dsv = ds.as_cuda_slice::<T>()?;
    // dQ (groups, rows, d) = dS · K ; dK (groups, t_k, d) = dSᵀ · Q
    Gemm::new(rows, d, tk).batched(groups).run(&dev, dsv, &kv, &mut out.slice_mut(0..nq))?;
    Gemm::new(tk, d, rows).ta().batched(groups).run(&dev, dsv, &qv, &mut out.slice_mut(nq..nq + nk))?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The gradients of [`attention_fwd`] under `g: (b, t, h·d)`, flat `[dQ | dK | dV]`; the
/// probabilities are recomputed (one more `Q·Kᵀ`) instead of kept from the forward.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout, g: &CudaStorage, lg: &Layout, dims: AttentionDims, mask: &MaskArgs) -> Result<CudaStorage> {
    check_dtypes("attention-core-grad", q, g)?;
    by_dtype!(q.dtype(), "attention-core-grad", attention_bwd_typed(q, lq, k, lk, v, lv, g, lg, dims, mask))
}

#[allow(clippy::too_many_arguments)]
fn lora_fwd_typed<T: Elem>(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, a: &CudaStorage, la: &Layout, bm: &CudaStorage, lb: &Layout, mask: Option<(&CudaStorage, &Layout)>, scale: f32) -> Result<(CudaStorage, Vec<usize>)> {
    let dev = x.device().clone();
    let (y, dims) = frozen_product(x, lx, w, lw, false)?;
    let (r, d_in) = la.shape().dims2()?;
    let (d_out, r2) = lb.shape().dims2()?;
    if r2 != r || dims.last() != Some(&d_out) {
        return Err(err(format!("fused-lora: A {:?} and B {:?} for a weight {:?}", la.dims(), lb.dims(), lw.dims())));
    }
    let n = lx.shape().elem_count() / d_in.max(1);
    let masked = match mask {
        Some((m, lm)) => {
            if !lm.is_contiguous() || lm.shape().elem_count() != lx.shape().elem_count() || !lx.is_contiguous() {
                return Err(err(format!("fused-lora: dropout mask {:?} for input {:?}", lm.dims(), lx.dims())));
            }
            let lm = Layout::contiguous_with_offset(lx.shape().clone(), lm.start_offset());
            Some(x.binary_impl::<candle_core::op::Mul>(m, lx, &lm)?)
        }
        None => None,
    };
    let xv = match &masked {
        Some(xm) => xm.as_cuda_slice::<T>()?.slice(0..n * d_in),
        None => view::<T>(x, lx, "fused-lora")?,
    };
    let (av, bv) = (view::<T>(a, la, "fused-lora")?, view::<T>(bm, lb, "fused-lora")?);
    // xa (n, r) = (x ⊙ m) · Aᵀ ; y += s · xa · Bᵀ
    let mut xa = alloc::<T>(&dev, n * r)?;
    Gemm::new(n, r, d_in).tb().run(&dev, &xv, &av, &mut xa)?;
    let mut y = y;
    Gemm::new(n, d_out, r).tb().alpha(scale).accumulate().run(&dev, &xa, &bv, y.as_cuda_slice_mut::<T>()?)?;
    Ok((y, dims))
}

/// The LoRA layer's forward without its bias: `y = x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ`, `x: (..., d_in)`,
/// frozen `W: (d_out, d_in)`, `A: (r, d_in)`, `B: (d_out, r)` (all of x's dtype), `m` an optional
/// dropout mask of x's shape. Returns the output and its dims.
#[allow(clippy::too_many_arguments)]
pub fn lora_fwd(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, mask: Option<(&CudaStorage, &Layout)>, scale: f32) -> Result<(CudaStorage, Vec<usize>)> {
    check_dtypes("fused-lora", x, w)?;
    check_dtypes("fused-lora", x, a)?;
    check_dtypes("fused-lora", x, b)?;
    by_dtype!(x.dtype(), "fused-lora", lora_fwd_typed(x, lx, w, lw, a, la, b, lb, mask, scale))
}
