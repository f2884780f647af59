//! CUDA forward and backward kernels of the fused ops (masked softmax, RMSNorm, SwiGLU, the
//! cross-entropy), for f32 and bf16 tensors, compiled once per process with NVRTC.
//!
//! Each kernel computes in f32 and does on the GPU what the op's CPU path does, so that the
//! autograd graph keeps one tensor per op instead of a composition's chain of intermediates
//! (the attention probabilities, not six score-sized tensors; no copies of the logits), and one
//! launch replaces several. Row kernels run one block of `ROW_THREADS` threads per row.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Result, Shape};
use half::bf16;
use std::sync::OnceLock;

const ROW_THREADS: u32 = 256;
const MODULE: &str = "lowrank_fused_ops";

const SOURCE: &str = r#"
typedef unsigned short bf16_t;
#define NEG_INF (__int_as_float(0xff800000))
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) { return __uint_as_float(((unsigned int)p[i]) << 16); }
__device__ __forceinline__ bf16_t to_bf16(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) { p[i] = to_bf16(v); }
// The value as the tensor's dtype would hold it (a composition rounds between its steps).
__device__ __forceinline__ float rnd(const float*, float v) { return v; }
__device__ __forceinline__ float rnd(const bf16_t*, float v) { return __uint_as_float(((unsigned int)to_bf16(v)) << 16); }

__device__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}
__device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

// softmax(scale * x + mask) per row of (b, x, r, tk); row r is query (r % rr) % t_q of batch row
// row / rows_per_batch; keep: (b, tk) bytes, 0 = padded key.
template <typename T>
__device__ void masked_softmax_fwd(const T* x, T* y, const unsigned char* keep, int tk, int rows_per_batch,
                                   int rr, int t_q, int offset, int causal, float scale) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    int b = (int)(row / rows_per_batch);
    int q = (int)((row % rr) % t_q);
    const T* xr = x + row * tk;
    T* yr = y + row * tk;
    const unsigned char* kb = keep + (long long)b * tk;
    float m = NEG_INF;
    float visible = 0.0f;
    for (int k = threadIdx.x; k < tk; k += blockDim.x)
        if ((!causal || k <= q + offset) && kb[k]) { m = fmaxf(m, ld(xr, k) * scale); visible += 1.0f; }
    m = block_max(m, sh);
    visible = block_sum(visible, sh);
    if (visible == 0.0f) {
        for (int k = threadIdx.x; k < tk; k += blockDim.x) st(yr, k, 1.0f / tk);
        return;
    }
    if (!isfinite(m)) {  // NaN or infinite scores: a NaN row, as softmax over them is
        for (int k = threadIdx.x; k < tk; k += blockDim.x) st(yr, k, nanf(""));
        return;
    }
    float s = 0.0f;
    for (int k = threadIdx.x; k < tk; k += blockDim.x)
        if ((!causal || k <= q + offset) && kb[k]) s += expf(ld(xr, k) * scale - m);
    s = block_sum(s, sh);
    float inv = 1.0f / s;
    for (int k = threadIdx.x; k < tk; k += blockDim.x) {
        bool v = (!causal || k <= q + offset) && kb[k];
        st(yr, k, v ? expf(ld(xr, k) * scale - m) * inv : 0.0f);
    }
}

// ds = scale * p * (g - sum(g * p)) per row of tk.
template <typename T>
__device__ void masked_softmax_bwd(const T* p, const T* g, T* out, int tk, float scale) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    const T* pr = p + row * tk;
    const T* gr = g + row * tk;
    T* o = out + row * tk;
    float dot = 0.0f;
    for (int k = threadIdx.x; k < tk; k += blockDim.x) dot += ld(pr, k) * ld(gr, k);
    dot = block_sum(dot, sh);
    for (int k = threadIdx.x; k < tk; k += blockDim.x) st(o, k, scale * ld(pr, k) * (ld(gr, k) - dot));
}

// y = rnd(x * r) * w, r = 1 / sqrt(mean(x^2) + eps), per row of d.
template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, int d, float eps) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    const T* xr = x + row * d;
    T* yr = y + row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { float v = ld(xr, i); ss += v * v; }
    ss = block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) st(yr, i, rnd(xr, ld(xr, i) * r) * ld(w, i));
}

// dx = r * (g*w - x * r^2 * mean(g*w*x)).
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* g, T* dx, int d, float eps) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    const T* xr = x + row * d;
    const T* gr = g + row * d;
    T* o = dx + row * d;
    float ss = 0.0f, dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = ld(xr, i);
        ss += v * v;
        dot += v * ld(gr, i) * ld(w, i);
    }
    ss = block_sum(ss, sh);
    dot = block_sum(dot, sh);
    float r = 1.0f / sqrtf(ss / d + eps);
    float k = r * r * dot / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) st(o, i, r * (ld(gr, i) * ld(w, i) - ld(xr, i) * k));
}

// y = rnd(silu(a)) * b, elementwise over n.
template <typename T>
__device__ void swiglu_fwd(const T* a, const T* b, T* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float x = ld(a, i);
        float s = rnd(a, x / (1.0f + expf(-x)));
        st(y, i, s * ld(b, i));
    }
}

// out[0..n] = d gate = g * b * sig(a) * (1 + a * (1 - sig(a))), out[n..2n] = d up = g * silu(a).
template <typename T>
__device__ void swiglu_bwd(const T* a, const T* b, const T* g, T* out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float x = ld(a, i), gv = ld(g, i);
        float sg = 1.0f / (1.0f + expf(-x));
        st(out, i, gv * ld(b, i) * sg * (1.0f + x * (1.0f - sg)));
        st(out, n + i, gv * x * sg);
    }
}

// Per row of vocab: loss = (1-eps) * (lse - z[t]) + eps * (lse - mean(z)); 0 where t = -100.
__device__ void row_lse(const float* zr, int vocab, float* sh, float* lse, float* total) {
    float m = NEG_INF, t = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) { m = fmaxf(m, zr[c]); t += zr[c]; }
    m = block_max(m, sh);
    float s = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(zr[c] - m);
    s = block_sum(s, sh);
    *lse = m + logf(s);
    *total = block_sum(t, sh);
}

extern "C" __global__ void cross_entropy_rows(const float* z, const long long* targets, float* row_loss, int vocab, float eps) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    long long t = targets[row];
    if (t < 0) { if (threadIdx.x == 0) row_loss[row] = 0.0f; return; }
    const float* zr = z + row * vocab;
    float lse, total;
    row_lse(zr, vocab, sh, &lse, &total);
    if (threadIdx.x == 0) row_loss[row] = (1.0f - eps) * (lse - zr[t]) + eps * (lse - total / vocab);
}

// out[0] = sum of row_loss (one block, fixed order per thread: the same sum every run).
extern "C" __global__ void sum_rows(const float* row_loss, float* out, long long rows) {
    __shared__ float sh[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < rows; i += blockDim.x) acc += row_loss[i];
    float s = block_sum((float)acc, sh);
    if (threadIdx.x == 0) out[0] = s;
}

// dz = (softmax(z) - eps/V - (1-eps) * onehot(t)) * scale per row; 0 where t = -100.
extern "C" __global__ void cross_entropy_grad(const float* z, const long long* targets, float* dz, int vocab, float eps, float scale) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    long long t = targets[row];
    const float* zr = z + row * vocab;
    float* o = dz + row * vocab;
    if (t < 0) { for (int c = threadIdx.x; c < vocab; c += blockDim.x) o[c] = 0.0f; return; }
    float lse, total;
    row_lse(zr, vocab, sh, &lse, &total);
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float v = expf(zr[c] - lse) - eps / vocab;
        if (c == t) v -= 1.0f - eps;
        o[c] = v * scale;
    }
}

// Between (b, t, h, d) and (b, h, t, d), one thread per output element, rotated by the rotate-half
// rope (tables cos, sin: (t, d)) when rope != 0, by -theta when sign = -1.
template <typename T>
__device__ void heads_layout(const T* x, T* y, const T* cos, const T* sin, int b, int t, int h, int d,
                             int to_heads, int rope, float sign) {
    long long n = (long long)b * t * h * d;
    int half = d / 2;
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (long long)gridDim.x * blockDim.x) {
        int j = (int)(o % d);
        long long r = o / d;
        int bi, hi, ti;
        long long src;
        if (to_heads) {
            ti = (int)(r % t); r /= t; hi = (int)(r % h); bi = (int)(r / h);
            src = (((long long)bi * t + ti) * h + hi) * d;
        } else {
            hi = (int)(r % h); r /= h; ti = (int)(r % t); bi = (int)(r / t);
            src = (((long long)bi * h + hi) * t + ti) * d;
        }
        float v = ld(x, src + j);
        if (rope) {
            long long tj = (long long)ti * d + j;
            float partner = j < half ? -ld(x, src + j + half) : ld(x, src + j - half);
            v = v * ld(cos, tj) + sign * partner * ld(sin, tj);
        }
        st(y, o, v);
    }
}

// Per row of z: the token loss as cross_entropy_rows computes it, into row_loss, then the row
// overwritten by its gradient (softmax(z) - eps/V - (1-eps) * onehot(t)); both 0 where t = -100.
template <typename T>
__device__ void head_ce_rows(T* z, const long long* targets, float* row_loss, int vocab, float eps) {
    __shared__ float sh[32];
    long long row = blockIdx.x;
    long long t = targets[row];
    T* zr = z + row * (long long)vocab;
    if (t < 0) {
        for (int c = threadIdx.x; c < vocab; c += blockDim.x) st(zr, c, 0.0f);
        if (threadIdx.x == 0) row_loss[row] = 0.0f;
        return;
    }
    float m = NEG_INF, tot = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) { float v = ld(zr, c); m = fmaxf(m, v); tot += v; }
    m = block_max(m, sh);
    float s = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(ld(zr, c) - m);
    s = block_sum(s, sh);
    tot = block_sum(tot, sh);
    float lse = m + logf(s);
    float zt = ld(zr, t);
    // Every thread has read z[t] before any thread overwrites the row.
    __syncthreads();
    if (threadIdx.x == 0) row_loss[row] = (1.0f - eps) * (lse - zt) + eps * (lse - tot / vocab);
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float v = expf(ld(zr, c) - lse) - eps / vocab;
        if (c == t) v -= 1.0f - eps;
        st(zr, c, v);
    }
}

// x *= s over n elements.
template <typename T>
__device__ void scale_inplace(T* x, long long n, float s) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        st(x, i, ld(x, i) * s);
}

#define FOR_TYPE(T, S)                                                                                         \
extern "C" __global__ void masked_softmax_fwd_##S(const T* x, T* y, const unsigned char* keep, int tk,         \
        int rows_per_batch, int rr, int t_q, int offset, int causal, float scale) {                            \
    masked_softmax_fwd<T>(x, y, keep, tk, rows_per_batch, rr, t_q, offset, causal, scale); }                   \
extern "C" __global__ void masked_softmax_bwd_##S(const T* p, const T* g, T* out, int tk, float scale) {      \
    masked_softmax_bwd<T>(p, g, out, tk, scale); }                                                             \
extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int d, float eps) {                 \
    rms_norm_fwd<T>(x, w, y, d, eps); }                                                                        \
extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* g, T* dx, int d, float eps) {    \
    rms_norm_bwd<T>(x, w, g, dx, d, eps); }                                                                    \
extern "C" __global__ void swiglu_fwd_##S(const T* a, const T* b, T* y, long long n) {                        \
    swiglu_fwd<T>(a, b, y, n); }                                                                               \
extern "C" __global__ void swiglu_bwd_##S(const T* a, const T* b, const T* g, T* out, long long n) {          \
    swiglu_bwd<T>(a, b, g, out, n); }                                                                          \
extern "C" __global__ void heads_layout_##S(const T* x, T* y, const T* cos, const T* sin, int b, int t, int h, \
        int d, int to_heads, int rope, float sign) {                                                           \
    heads_layout<T>(x, y, cos, sin, b, t, h, d, to_heads, rope, sign); }                                       \
extern "C" __global__ void head_ce_rows_##S(T* z, const long long* targets, float* row_loss, int vocab,         \
        float eps) {                                                                                           \
    head_ce_rows<T>(z, targets, row_loss, vocab, eps); }                                                       \
extern "C" __global__ void scale_inplace_##S(T* x, long long n, float s) { scale_inplace<T>(x, n, s); }
FOR_TYPE(float, f32)
FOR_TYPE(bf16_t, bf16)
"#;

static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

pub(crate) fn err(m: String) -> candle_core::Error {
    candle_core::Error::Msg(m)
}

/// A kernel of the module, compiled with NVRTC on first use.
pub(crate) fn kernel(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    let ptx = PTX.get_or_init(|| candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| e.to_string()));
    let ptx = ptx.as_deref().map_err(|e| err(format!("compiling lowrank's CUDA kernels with NVRTC: {e}")))?;
    Ok(dev.get_or_load_custom_func(name, MODULE, ptx)?.into_cuda_function())
}

/// Whether a tensor can go through these kernels: on a CUDA device, f32 or bf16.
pub fn supports(t: &candle_core::Tensor) -> bool {
    t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

pub(crate) fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

pub(crate) fn flat_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROW_THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The contiguous part of a storage a layout names, as a typed view.
pub(crate) fn view<'a, T: candle_core::cuda_backend::CudaDType>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| err(format!("{op}: input must be contiguous")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// The `{base}_f32` or `{base}_bf16` kernel for `dtype`.
pub(crate) fn typed_kernel(dev: &CudaDevice, base: &str, dtype: DType, op: &str) -> Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => return Err(err(format!("{op}: no CUDA kernel for {other:?}"))),
    };
    kernel(dev, &format!("{base}_{suffix}"))
}

/// The CUDA storage of a tensor an op holds (a weight, rotary tables), with its layout.
pub fn with_cuda<R>(t: &candle_core::Tensor, op: &str, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cuda(c) => f(c, l),
        _ => Err(err(format!("{op}: a weight or table the op holds is not on the GPU"))),
    }
}

/// Evaluates `body` with the type alias `$t` bound to the Rust element type of `dtype` (f32 or
/// bf16); other dtypes are an error naming `op`.
macro_rules! typed {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = bf16;
                $body
            }
            other => Err(err(format!("{}: no CUDA kernel for {other:?}", $op))),
        }
    };
}

pub(crate) fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel that receives the buffer.
    unsafe { dev.alloc::<T>(n) }
}

/// `softmax(scale · x + mask)` over rows of `x: (b, xh, r, tk)`; `keep: (b, tk)`.
#[allow(clippy::too_many_arguments)]
pub fn masked_softmax_fwd(s: &CudaStorage, l: &Layout, keep: &[u8], t_q: usize, offset: usize, causal: bool, scale: f32) -> Result<CudaStorage> {
    let dims = l.dims();
    let (xh, r, tk) = (dims[1], dims[2], dims[3]);
    let rows = l.shape().elem_count() / tk.max(1);
    let dev = s.device().clone();
    let keep = dev.clone_htod(keep)?;
    let f = typed_kernel(&dev, "masked_softmax_fwd", s.dtype(), "masked-softmax")?;
    typed!(s.dtype(), "masked-softmax", |T| {
        let x = view::<T>(s, l, "masked-softmax")?;
        let y = alloc::<T>(&dev, rows * tk)?;
        let (tk_, rpb, rr, tq, off, c) = (tk as i32, (xh * r) as i32, r as i32, t_q.max(1) as i32, offset as i32, causal as i32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&y).arg(&keep).arg(&tk_).arg(&rpb).arg(&rr).arg(&tq).arg(&off).arg(&c).arg(&scale);
        unsafe { b.launch(rows_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// `scale · p ⊙ (g − Σ g ⊙ p)` per row of `tk`.
pub fn masked_softmax_bwd(p: &CudaStorage, lp: &Layout, g: &CudaStorage, lg: &Layout, scale: f32) -> Result<CudaStorage> {
    let tk = *lp.dims().last().ok_or_else(|| err("masked-softmax-grad on a scalar".into()))?;
    let rows = lp.shape().elem_count() / tk.max(1);
    let dev = p.device().clone();
    let f = typed_kernel(&dev, "masked_softmax_bwd", p.dtype(), "masked-softmax-grad")?;
    typed!(p.dtype(), "masked-softmax-grad", |T| {
        let (pv, gv) = (view::<T>(p, lp, "masked-softmax-grad")?, view::<T>(g, lg, "masked-softmax-grad")?);
        let out = alloc::<T>(&dev, rows * tk)?;
        let tk_ = tk as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&pv).arg(&gv).arg(&out).arg(&tk_).arg(&scale);
        unsafe { b.launch(rows_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    })
}

/// RMSNorm forward, `x: (..., d)`, `w: (d)`.
pub fn rms_norm_fwd(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, eps: f32) -> Result<CudaStorage> {
    let d = *lx.dims().last().ok_or_else(|| err("rms-norm on a scalar".into()))?;
    if lw.shape().elem_count() != d || w.dtype() != x.dtype() {
        return Err(err(format!("rms-norm: weight {:?} {:?} for rows of {d} {:?}", lw.dims(), w.dtype(), x.dtype())));
    }
    let rows = lx.shape().elem_count() / d.max(1);
    let dev = x.device().clone();
    let f = typed_kernel(&dev, "rms_norm_fwd", x.dtype(), "rms-norm")?;
    typed!(x.dtype(), "rms-norm", |T| {
        let (xv, wv) = (view::<T>(x, lx, "rms-norm")?, view::<T>(w, lw, "rms-norm")?);
        let y = alloc::<T>(&dev, rows * d)?;
        let d_ = d as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&wv).arg(&y).arg(&d_).arg(&eps);
        unsafe { b.launch(rows_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// RMSNorm input gradient.
pub fn rms_norm_bwd(x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout, g: &CudaStorage, lg: &Layout, eps: f32) -> Result<CudaStorage> {
    let d = *lx.dims().last().ok_or_else(|| err("rms-norm-grad on a scalar".into()))?;
    let rows = lx.shape().elem_count() / d.max(1);
    let dev = x.device().clone();
    let f = typed_kernel(&dev, "rms_norm_bwd", x.dtype(), "rms-norm-grad")?;
    typed!(x.dtype(), "rms-norm-grad", |T| {
        let (xv, wv, gv) = (view::<T>(x, lx, "rms-norm-grad")?, view::<T>(w, lw, "rms-norm-grad")?, view::<T>(g, lg, "rms-norm-grad")?);
        let out = alloc::<T>(&dev, rows * d)?;
        let d_ = d as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&wv).arg(&gv).arg(&out).arg(&d_).arg(&eps);
        unsafe { b.launch(rows_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    })
}

/// `silu(a) ⊙ b`, elementwise.
pub fn swiglu_fwd(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    let n = la.shape().elem_count();
    let dev = a.device().clone();
    let f = typed_kernel(&dev, "swiglu_fwd", a.dtype(), "swiglu")?;
    typed!(a.dtype(), "swiglu", |T| {
        let (av, bv) = (view::<T>(a, la, "swiglu")?, view::<T>(b, lb, "swiglu")?);
        let y = alloc::<T>(&dev, n)?;
        let n_ = n as i64;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&f);
        bld.arg(&av).arg(&bv).arg(&y).arg(&n_);
        unsafe { bld.launch(flat_config(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// `[d a; d b]` of `silu(a) ⊙ b` under the gradient `g`, as one `2n` storage.
pub fn swiglu_bwd(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, g: &CudaStorage, lg: &Layout) -> Result<CudaStorage> {
    let n = la.shape().elem_count();
    let dev = a.device().clone();
    let f = typed_kernel(&dev, "swiglu_bwd", a.dtype(), "swiglu-grad")?;
    typed!(a.dtype(), "swiglu-grad", |T| {
        let (av, bv, gv) = (view::<T>(a, la, "swiglu-grad")?, view::<T>(b, lb, "swiglu-grad")?, view::<T>(g, lg, "swiglu-grad")?);
        let out = alloc::<T>(&dev, 2 * n)?;
        let n_ = n as i64;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&f);
        bld.arg(&av).arg(&bv).arg(&gv).arg(&out).arg(&n_);
        unsafe { bld.launch(flat_config(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    })
}

/// Sum of the token cross-entropies of f32 `z: (rows, vocab)`; targets already checked.
pub fn cross_entropy_fwd(z: &CudaStorage, lz: &Layout, targets: &[i64], eps: f32) -> Result<CudaStorage> {
    let (rows, vocab) = lz.shape().dims2()?;
    let dev = z.device().clone();
    let zv = view::<f32>(z, lz, "cross-entropy")?;
    let t = dev.clone_htod(targets)?;
    let row_loss = alloc::<f32>(&dev, rows)?;
    let out = alloc::<f32>(&dev, 1)?;
    let (v_, rows_) = (vocab as i32, rows as i64);
    let f = kernel(&dev, "cross_entropy_rows")?;
    let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
    b.arg(&zv).arg(&t).arg(&row_loss).arg(&v_).arg(&eps);
    unsafe { b.launch(rows_config(rows)) }.w()?;
    let f = kernel(&dev, "sum_rows")?;
    let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
    b.arg(&row_loss).arg(&out).arg(&rows_);
    unsafe { b.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Gradient of the summed cross-entropy times `scale`, f32 `(rows, vocab)`.
pub fn cross_entropy_bwd(z: &CudaStorage, lz: &Layout, targets: &[i64], eps: f32, scale: f32) -> Result<CudaStorage> {
    let (rows, vocab) = lz.shape().dims2()?;
    let dev = z.device().clone();
    let zv = view::<f32>(z, lz, "cross-entropy-grad")?;
    let t = dev.clone_htod(targets)?;
    let dz = alloc::<f32>(&dev, rows * vocab)?;
    let v_ = vocab as i32;
    let f = kernel(&dev, "cross_entropy_grad")?;
    let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
    b.arg(&zv).arg(&t).arg(&dz).arg(&v_).arg(&eps).arg(&scale);
    unsafe { b.launch(rows_config(rows)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(dz, dev))
}

/// `(b, t, h·d) ↔ (b, h, t, d)` (`to_heads` picks the direction) with the rotary tables
/// `(cos, sin): (t, d)` applied when given (by −θ when `sign = −1`).
#[allow(clippy::too_many_arguments)]
pub fn heads_layout(x: &CudaStorage, lx: &Layout, rope: Option<(&CudaStorage, &Layout, &CudaStorage, &Layout)>, (b, t, h, d): (usize, usize, usize, usize), to_heads: bool, sign: f32) -> Result<CudaStorage> {
    let n = b * t * h * d;
    let dev = x.device().clone();
    let f = typed_kernel(&dev, "heads_layout", x.dtype(), "heads layout")?;
    typed!(x.dtype(), "heads layout", |T| {
        let xv = view::<T>(x, lx, "heads layout")?;
        // Without tables the kernel never reads them: the input stands in for both pointers.
        let (cv, sv) = match rope {
            Some((c, lc, s, ls)) => (view::<T>(c, lc, "heads layout")?, view::<T>(s, ls, "heads layout")?),
            None => (view::<T>(x, lx, "heads layout")?, view::<T>(x, lx, "heads layout")?),
        };
        let y = alloc::<T>(&dev, n)?;
        let (b_, t_, h_, d_, th, r) = (b as i32, t as i32, h as i32, d as i32, to_heads as i32, rope.is_some() as i32);
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&f);
        bld.arg(&xv).arg(&y).arg(&cv).arg(&sv).arg(&b_).arg(&t_).arg(&h_).arg(&d_).arg(&th).arg(&r).arg(&sign);
        unsafe { bld.launch(flat_config(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

/// `(2, dims...)`: the shape of a gradient pair of two inputs of shape `dims`.
pub fn pair_shape(dims: &[usize]) -> Shape {
    let mut d = vec![2];
    d.extend_from_slice(dims);
    Shape::from(d)
}
