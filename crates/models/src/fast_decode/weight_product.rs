//! Products of frozen weights with a few activation vectors, the whole cost of decoding on a CPU:
//! `x: (n, d_in)`, `W: (d_out, d_in)` → `y = x·Wᵀ: (n, d_out)`, with `n` the tokens of one
//! decoding step (1 per row when generating, the prompt when pre-filling).
//!
//! Each weight is read once per product in the form it is stored: f32, or the GGUF blocks (Q4_0,
//! Q4_1, Q8_0) it was loaded in, whose 32 values are expanded to f32 in registers and multiplied
//! with f32 activations (no activation quantization: the result is the f32 product with the
//! dequantized weight, up to the order of the sums). Decoding one token reads every weight of the
//! model once, so memory traffic bounds it: a 4-bit weight is an eighth of the bytes of f32.
//! Output rows are split over the rayon threads; several weights that read the same input (q, k,
//! v; gate, up) share one parallel pass.
use super::spin_team::SpinTeam;
use crate::packed_matrix::{BlockFormat, PackedMatrix, BLOCK_LEN};
use rayon::prelude::*;
use std::sync::Arc;

/// A frozen weight as the decoder reads it: `(d_out, d_in)`.
#[derive(Clone, Debug)]
pub enum DecodeWeight {
    /// Row-major f32 values.
    Dense { rows: usize, cols: usize, values: Arc<Vec<f32>> },
    /// GGUF blocks (`cols` a multiple of 32).
    Packed(Arc<PackedMatrix>),
}

impl DecodeWeight {
    /// `(d_out, d_in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense { rows, cols, .. } => (*rows, *cols),
            Self::Packed(p) => p.dims(),
        }
    }

    /// Bytes read by one product.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Self::Dense { values, .. } => 4 * values.len(),
            Self::Packed(p) => p.stored_bytes(),
        }
    }

    /// `out: (rows.len(), n)` ← rows `rows` of the weight times `x: (n, d_in)` (note the
    /// transposed output: each row of the weight fills one contiguous run of `n`); a packed
    /// weight reads `xq`, the same vectors in 8 bits, when given.
    fn rows_times(&self, rows: std::ops::Range<usize>, x: &[f32], xq: Option<&Int8Vectors>, n: usize, out: &mut [f32]) {
        let (_, cols) = self.dims();
        debug_assert!(x.len() == n * cols && out.len() == rows.len() * n);
        let (kind, bytes, row_bytes): (Kind, &[u8], usize) = match self {
            Self::Dense { values, cols, .. } => (Kind::F32, bytemuck_f32(values), 4 * cols),
            Self::Packed(p) => (Kind::of(p.format()), p.bytes(), p.row_bytes()),
        };
        let rows_bytes = &bytes[rows.start * row_bytes..rows.end * row_bytes];
        let blocks = cols / BLOCK_LEN;
        let mut j0 = 0;
        while j0 < n {
            let nv = (n - j0).min(MAX_VECTORS);
            match xq {
                Some(q) if kind != Kind::F32 => {
                    let part = Int8Slice { q: &q.q[j0 * cols..(j0 + nv) * cols], scale: &q.scale[j0 * blocks..(j0 + nv) * blocks], sum: &q.sum[j0 * blocks..(j0 + nv) * blocks] };
                    product_int8(kind, rows_bytes, row_bytes, cols, part, nv, &mut out[j0..], n)
                }
                _ => product(kind, rows_bytes, row_bytes, cols, &x[j0 * cols..(j0 + nv) * cols], nv, &mut out[j0..], n),
            }
            j0 += nv;
        }
    }
}

/// How activations meet block-quantized weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// In f32: the product with the dequantized weight, to f32 rounding.
    F32,
    /// Rounded to 8 bits per block of 32 (scale `max|x| / 127`), multiplied in integers, as
    /// llama.cpp does: faster, approximate (the `--quantize` modes).
    Int8,
}

/// `n` vectors of `cols` in 8 bits: per block of 32, `x ≈ q · scale`; `sum` is the exact f32
/// sum of the block's values (for the offsets of Q4_0 and Q4_1).
pub struct Int8Vectors {
    q: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl Int8Vectors {
    pub fn new(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK_LEN;
        let (mut q, mut scale, mut sum) = (Vec::with_capacity(x.len()), Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in x.chunks_exact(BLOCK_LEN) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            q.extend(b.iter().map(|v| (v * inv).round() as i8));
            scale.push(d);
            sum.push(b.iter().sum());
        }
        Self { q, scale, sum }
    }
}

/// The vectors of one pass (`nv ≤ 4` of them).
#[derive(Clone, Copy)]
struct Int8Slice<'a> {
    q: &'a [i8],
    scale: &'a [f32],
    sum: &'a [f32],
}

/// The f32 values as their bytes (native endianness, which is what the kernels read back).
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte pattern is a valid u8; the length is in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Activation vectors a pass over the weight serves (the accumulators must stay in registers).
const MAX_VECTORS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F32,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Kind {
    fn of(f: BlockFormat) -> Self {
        match f {
            BlockFormat::Q4_0 => Self::Q4_0,
            BlockFormat::Q4_1 => Self::Q4_1,
            BlockFormat::Q8_0 => Self::Q8_0,
        }
    }

    /// Bytes per 32 values.
    fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4 * BLOCK_LEN,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// `out[r · stride + j] = Σ_c W[r, c] · x[j, c]` for the rows in `bytes` and `nv ≤ 4` vectors.
#[allow(clippy::too_many_arguments)]
fn product(kind: Kind, bytes: &[u8], row_bytes: usize, cols: usize, x: &[f32], nv: usize, out: &mut [f32], stride: usize) {
    let rows = bytes.len() / row_bytes;
    assert!(rows == 0 || (rows - 1) * stride + nv <= out.len(), "output too short for {rows} rows");
    assert_eq!(x.len(), nv * cols);
    assert_eq!(row_bytes, cols / BLOCK_LEN * kind.block_bytes());
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            // SAFETY: the CPU has AVX2, FMA and F16C; `bytes` holds `rows` whole rows, `x` holds
            // `nv` vectors of `cols`, and `out` reaches row `rows − 1`, column `nv − 1` (asserted).
            unsafe { avx2::product(kind, bytes.as_ptr(), row_bytes, rows, cols, x.as_ptr(), nv, out.as_mut_ptr(), stride) };
            return;
        }
    }
    portable_product(kind, bytes, row_bytes, cols, x, nv, out, stride);
}

/// One block's 32 values as f32 (as [`PackedMatrix::dequantize`] expands them).
fn decode_block(kind: Kind, b: &[u8], w: &mut [f32; BLOCK_LEN]) {
    let f16_at = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    match kind {
        Kind::F32 => {
            for (v, c) in w.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Kind::Q4_0 => {
            let d = f16_at(0);
            for j in 0..16 {
                w[j] = ((b[2 + j] & 0x0F) as i16 - 8) as f32 * d;
                w[j + 16] = ((b[2 + j] >> 4) as i16 - 8) as f32 * d;
            }
        }
        Kind::Q4_1 => {
            let (d, m) = (f16_at(0), f16_at(2));
            for j in 0..16 {
                w[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                w[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
            }
        }
        Kind::Q8_0 => {
            let d = f16_at(0);
            for j in 0..BLOCK_LEN {
                w[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
    }
}

/// Any CPU: each block expanded to f32, then 8 partial sums per vector (the AVX2 order).
#[allow(clippy::too_many_arguments)]
fn portable_product(kind: Kind, bytes: &[u8], row_bytes: usize, cols: usize, x: &[f32], nv: usize, out: &mut [f32], stride: usize) {
    let bb = kind.block_bytes();
    let mut w = [0f32; BLOCK_LEN];
    for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
        let mut acc = [[0f32; 8]; MAX_VECTORS];
        for (blk, b) in row.chunks_exact(bb).enumerate() {
            decode_block(kind, b, &mut w);
            for (j, a) in acc.iter_mut().enumerate().take(nv) {
                let xb = &x[j * cols + blk * BLOCK_LEN..][..BLOCK_LEN];
                for (wc, xc) in w.chunks_exact(8).zip(xb.chunks_exact(8)) {
                    for l in 0..8 {
                        a[l] += wc[l] * xc[l];
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate().take(nv) {
            out[r * stride + j] = a.iter().sum();
        }
    }
}

/// [`product`] with the vectors in 8 bits (`kind` a block format).
#[allow(clippy::too_many_arguments)]
fn product_int8(kind: Kind, bytes: &[u8], row_bytes: usize, cols: usize, x: Int8Slice, nv: usize, out: &mut [f32], stride: usize) {
    let rows = bytes.len() / row_bytes;
    let blocks = cols / BLOCK_LEN;
    assert!(rows == 0 || (rows - 1) * stride + nv <= out.len(), "output too short for {rows} rows");
    assert!(x.q.len() == nv * cols && x.scale.len() == nv * blocks && x.sum.len() == nv * blocks);
    assert_eq!(row_bytes, blocks * kind.block_bytes());
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            // SAFETY: as in `product`; the 8-bit vectors hold `nv` rows of `cols` values and
            // `nv · blocks` scales and sums (asserted).
            unsafe { avx2::product_int8(kind, bytes.as_ptr(), row_bytes, rows, cols, x.q.as_ptr(), x.scale.as_ptr(), x.sum.as_ptr(), nv, out.as_mut_ptr(), stride) };
            return;
        }
    }
    portable_product_int8(kind, bytes, row_bytes, cols, x, nv, out, stride);
}

/// Any CPU: integer block sums, scaled per block.
#[allow(clippy::too_many_arguments)]
fn portable_product_int8(kind: Kind, bytes: &[u8], row_bytes: usize, cols: usize, x: Int8Slice, nv: usize, out: &mut [f32], stride: usize) {
    let (bb, blocks) = (kind.block_bytes(), cols / BLOCK_LEN);
    let f16_at = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
        for j in 0..nv {
            let mut acc = 0f32;
            for (blk, b) in row.chunks_exact(bb).enumerate() {
                let xq = &x.q[j * cols + blk * BLOCK_LEN..][..BLOCK_LEN];
                let (xd, xs) = (x.scale[j * blocks + blk], x.sum[j * blocks + blk]);
                let d = f16_at(b, 0);
                let dot = |q: &dyn Fn(usize) -> i32| -> i32 { (0..BLOCK_LEN).map(|i| q(i) * xq[i] as i32).sum() };
                acc += match kind {
                    Kind::Q4_0 => d * xd * dot(&|i| if i < 16 { (b[2 + i] & 0x0F) as i32 } else { (b[2 + i - 16] >> 4) as i32 }) as f32 - 8.0 * d * xs,
                    Kind::Q4_1 => d * xd * dot(&|i| if i < 16 { (b[4 + i] & 0x0F) as i32 } else { (b[4 + i - 16] >> 4) as i32 }) as f32 + f16_at(b, 2) * xs,
                    Kind::Q8_0 => d * xd * dot(&|i| b[2 + i] as i8 as i32) as f32,
                    Kind::F32 => unreachable!("f32 weights take the f32 product"),
                };
            }
            out[r * stride + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Kind;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// See [`super::product`]; the caller checks the CPU features and the bounds.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn product(kind: Kind, bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, nv: usize, out: *mut f32, stride: usize) {
        macro_rules! go {
            ($k:ident) => {
                match nv {
                    1 => $k::<1, 4>(bytes, row_bytes, rows, cols, x, out, stride),
                    2 => $k::<2, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                    3 => $k::<3, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                    _ => $k::<4, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                }
            };
        }
        match kind {
            Kind::F32 => go!(f32_rows),
            Kind::Q4_0 => go!(q4_0_rows),
            Kind::Q4_1 => go!(q4_1_rows),
            Kind::Q8_0 => go!(q8_0_rows),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `[d, second]` of the two f16 at `p` as f32 lanes 0 and 1.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn two_f16(p: *const u8) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p.cast::<i32>())))
    }

    /// The 16 bytes at `p` as 32 4-bit values in element order (low nibbles are 0–15, high
    /// nibbles 16–31), as four f32 vectors of 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> [__m256; 4] {
        let raw = _mm_loadu_si128(p.cast());
        let m4 = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }

    /// The row loop shared by every format: `$decode(block pointer) -> [__m256; 4]` expands one
    /// block; `N` vectors, `A` accumulators each (independent FMA chains hide the latency).
    macro_rules! rows_kernel {
        ($name:ident, $block_bytes:expr, $decode:ident) => {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name<const N: usize, const A: usize>(bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, out: *mut f32, stride: usize) {
                let blocks = cols / 32;
                for r in 0..rows {
                    let row = bytes.add(r * row_bytes);
                    let mut acc = [[_mm256_setzero_ps(); A]; N];
                    for b in 0..blocks {
                        let w = $decode(row.add(b * $block_bytes));
                        for j in 0..N {
                            let xb = x.add(j * cols + b * 32);
                            for k in 0..4 {
                                acc[j][k % A] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xb.add(8 * k)), acc[j][k % A]);
                            }
                        }
                    }
                    for j in 0..N {
                        let mut s = acc[j][0];
                        for a in 1..A {
                            s = _mm256_add_ps(s, acc[j][a]);
                        }
                        *out.add(r * stride + j) = hsum(s);
                    }
                }
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f32_block(p: *const u8) -> [__m256; 4] {
        let f = p.cast::<f32>();
        [_mm256_loadu_ps(f), _mm256_loadu_ps(f.add(8)), _mm256_loadu_ps(f.add(16)), _mm256_loadu_ps(f.add(24))]
    }

    /// `(q − 8)·d`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_block(p: *const u8) -> [__m256; 4] {
        let s = two_f16(p);
        let d = _mm256_broadcastss_ps(s);
        let off = _mm256_set1_ps(8.0);
        let q = nibbles(p.add(2));
        [
            _mm256_mul_ps(_mm256_sub_ps(q[0], off), d),
            _mm256_mul_ps(_mm256_sub_ps(q[1], off), d),
            _mm256_mul_ps(_mm256_sub_ps(q[2], off), d),
            _mm256_mul_ps(_mm256_sub_ps(q[3], off), d),
        ]
    }

    /// `q·d + m`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_block(p: *const u8) -> [__m256; 4] {
        let s = two_f16(p);
        let d = _mm256_broadcastss_ps(s);
        let m = _mm256_broadcastss_ps(_mm_movehdup_ps(s));
        let q = nibbles(p.add(4));
        [_mm256_fmadd_ps(q[0], d, m), _mm256_fmadd_ps(q[1], d, m), _mm256_fmadd_ps(q[2], d, m), _mm256_fmadd_ps(q[3], d, m)]
    }

    /// `q·d`, `q` signed 8-bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block(p: *const u8) -> [__m256; 4] {
        let d = _mm256_broadcastss_ps(two_f16(p));
        let q = p.add(2);
        let at = |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(o).cast())));
        [_mm256_mul_ps(at(0), d), _mm256_mul_ps(at(8), d), _mm256_mul_ps(at(16), d), _mm256_mul_ps(at(24), d)]
    }

    rows_kernel!(f32_rows, 128, f32_block);
    rows_kernel!(q4_0_rows, 18, q4_0_block);
    rows_kernel!(q4_1_rows, 20, q4_1_block);
    rows_kernel!(q8_0_rows, 34, q8_0_block);

    /// See [`super::product_int8`]; the caller checks the CPU features and the bounds.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn product_int8(kind: Kind, bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, xq: *const i8, xd: *const f32, xs: *const f32, nv: usize, out: *mut f32, stride: usize) {
        macro_rules! go {
            ($k:ident) => {
                match nv {
                    1 => $k::<1, 2>(bytes, row_bytes, rows, cols, xq, xd, xs, out, stride),
                    2 => $k::<2, 2>(bytes, row_bytes, rows, cols, xq, xd, xs, out, stride),
                    3 => $k::<3, 1>(bytes, row_bytes, rows, cols, xq, xd, xs, out, stride),
                    _ => $k::<4, 1>(bytes, row_bytes, rows, cols, xq, xd, xs, out, stride),
                }
            };
        }
        match kind {
            Kind::Q4_0 => go!(q4_0_rows_int8),
            Kind::Q4_1 => go!(q4_1_rows_int8),
            Kind::Q8_0 => go!(q8_0_rows_int8),
            Kind::F32 => unreachable!("f32 weights take the f32 product"),
        }
    }

    /// The 16 bytes at `p` as 32 unsigned 4-bit values in element order, one per byte.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibble_bytes(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p.cast());
        let m4 = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4))
    }

    /// Σ u·s over 32 byte pairs (`u` unsigned ≤ 127·2 fits the 16-bit pair sums) as 8 f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }

    /// The row loop of the 8-bit products: `$block(p, xv) -> (__m256 dot, f32 d, f32 offset
    /// per unit of Σx)` for one block; `acc += dot · d · scale_x`, `extra += offset · Σx`.
    macro_rules! int8_kernel {
        ($name:ident, $block_bytes:expr, |$p:ident, $xv:ident| $body:block) => {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name<const N: usize, const A: usize>(bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, xq: *const i8, xd: *const f32, xs: *const f32, out: *mut f32, stride: usize) {
                let blocks = cols / 32;
                for r in 0..rows {
                    let row = bytes.add(r * row_bytes);
                    let mut acc = [[_mm256_setzero_ps(); A]; N];
                    let mut extra = [0f32; N];
                    for b in 0..blocks {
                        let $p = row.add(b * $block_bytes);
                        for j in 0..N {
                            let $xv = _mm256_loadu_si256(xq.add(j * cols + b * 32).cast());
                            let (dot, d, offset): (__m256, f32, f32) = $body;
                            acc[j][b % A] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d * *xd.add(j * blocks + b)), acc[j][b % A]);
                            extra[j] += offset * *xs.add(j * blocks + b);
                        }
                    }
                    for j in 0..N {
                        let mut s = acc[j][0];
                        for a in 1..A {
                            s = _mm256_add_ps(s, acc[j][a]);
                        }
                        *out.add(r * stride + j) = hsum(s) + extra[j];
                    }
                }
            }
        };
    }

    int8_kernel!(q4_0_rows_int8, 18, |p, xv| {
        let d = _mm_cvtss_f32(two_f16(p));
        (dot_u8_i8(nibble_bytes(p.add(2)), xv), d, -8.0 * d)
    });
    int8_kernel!(q4_1_rows_int8, 20, |p, xv| {
        let s = two_f16(p);
        (dot_u8_i8(nibble_bytes(p.add(4)), xv), _mm_cvtss_f32(s), _mm_cvtss_f32(_mm_movehdup_ps(s)))
    });
    int8_kernel!(q8_0_rows_int8, 34, |p, xv| {
        let q = _mm256_loadu_si256(p.add(2).cast());
        (dot_u8_i8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q)), _mm_cvtss_f32(two_f16(p)), 0.0)
    });
}

/// `x: (n, d_in)` times each of `weights` (all `(d_out_i, d_in)`) → one `(n, d_out_i)` output
/// each, in one parallel pass over all their rows: on `team` (each thread an equal share of the
/// rows) or, without one, on rayon's pool.
pub fn multiply(weights: &[&DecodeWeight], x: &[f32], n: usize, activations: Activations, team: Option<&SpinTeam>) -> Vec<Vec<f32>> {
    let packed = weights.iter().any(|w| matches!(w, DecodeWeight::Packed(_)));
    let xq = (activations == Activations::Int8 && packed).then(|| Int8Vectors::new(x));
    let total: usize = weights.iter().map(|w| w.dims().0).sum();
    let starts: Vec<usize> = weights
        .iter()
        .scan(0, |s, w| {
            let at = *s;
            *s += w.dims().0;
            Some(at)
        })
        .collect();
    let mut transposed = vec![0f32; total * n];
    // Rows `lo..` of all the weights into `out` (the transposed output from row `lo` on).
    let fill = |lo: usize, out: &mut [f32]| {
        let hi = lo + out.len() / n;
        for (w, &s) in weights.iter().zip(&starts) {
            let (a, b) = (lo.max(s), hi.min(s + w.dims().0));
            if a < b {
                w.rows_times(a - s..b - s, x, xq.as_ref(), n, &mut out[(a - lo) * n..(b - lo) * n]);
            }
        }
    };
    match team {
        Some(team) if team.threads() > 1 => {
            // A few chunks per thread, claimed in turn: a thread slowed by another process on
            // its core takes fewer.
            let chunks = (team.threads() * 4).min(total.div_ceil(16)).max(1);
            let bounds: Vec<usize> = (0..=chunks).map(|i| total * i / chunks).collect();
            let mut parts = Vec::with_capacity(chunks);
            let mut rest: &mut [f32] = &mut transposed;
            for i in 0..chunks {
                let (head, tail) = rest.split_at_mut((bounds[i + 1] - bounds[i]) * n);
                parts.push(std::sync::Mutex::new(head));
                rest = tail;
            }
            let next = std::sync::atomic::AtomicUsize::new(0);
            team.run(&|_| loop {
                let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                let mut part = parts[c].lock().unwrap_or_else(|e| e.into_inner());
                fill(bounds[c], &mut part);
            });
        }
        _ => {
            // Rows per task: a few tasks per thread to balance, at least 16 rows a task.
            let per_task = total.div_ceil(rayon::current_num_threads().max(1) * 4).max(16);
            transposed.par_chunks_mut(per_task * n).enumerate().for_each(|(task, out)| fill(task * per_task, out));
        }
    }
    weights
        .iter()
        .zip(&starts)
        .map(|(w, &s)| {
            let rows = w.dims().0;
            if n == 1 {
                return transposed[s..s + rows].to_vec();
            }
            let mut y = vec![0f32; n * rows];
            for r in 0..rows {
                for j in 0..n {
                    y[j * rows + r] = transposed[(s + r) * n + j];
                }
            }
            y
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Every format, 1 to 9 vectors (partial passes included), several weights in one pass:
    /// against f64 sums over the dequantized values.
    #[test]
    fn products_match_f64_sums_of_the_expanded_weights() {
        let (rows_a, rows_b, cols) = (37, 70, 96);
        let team = SpinTeam::new(3);
        for dtype in [None, Some(GgmlDType::Q4_0), Some(GgmlDType::Q4_1), Some(GgmlDType::Q8_0)] {
            let make = |rows: usize, seed: u64| -> (DecodeWeight, Vec<f32>) {
                let v = values(rows * cols, seed);
                match dtype {
                    None => (DecodeWeight::Dense { rows, cols, values: Arc::new(v.clone()) }, v),
                    Some(q) => {
                        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
                        let p = PackedMatrix::from_qtensor(&QTensor::quantize(&t, q).unwrap()).unwrap().unwrap();
                        let expanded = p.dequantize();
                        (DecodeWeight::Packed(Arc::new(p)), expanded)
                    }
                }
            };
            let (wa, ea) = make(rows_a, 1);
            let (wb, eb) = make(rows_b, 2);
            for n in [1usize, 2, 3, 4, 5, 9] {
                let x = values(n * cols, 10 + n as u64);
                let ys = multiply(&[&wa, &wb], &x, n, Activations::F32, if n % 2 == 0 { Some(&team) } else { None });
                for (y, (e, rows)) in ys.iter().zip([(&ea, rows_a), (&eb, rows_b)]) {
                    assert_eq!(y.len(), n * rows);
                    for j in 0..n {
                        for r in 0..rows {
                            let want: f64 = (0..cols).map(|c| e[r * cols + c] as f64 * x[j * cols + c] as f64).sum();
                            let got = y[j * rows + r] as f64;
                            assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{dtype:?} n={n} ({j}, {r}): {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// 8-bit activations: within 1 % of Σ|w·x| of the f64 sums, and the portable loop and the
    /// AVX2 kernels agree (the same integer sums, scaled in another order).
    #[test]
    fn int8_products_are_close_and_portable_and_simd_agree() {
        let (rows, cols) = (33, 128);
        for q in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let t = Tensor::from_vec(values(rows * cols, 21), (rows, cols), &Device::Cpu).unwrap();
            let p = PackedMatrix::from_qtensor(&QTensor::quantize(&t, q).unwrap()).unwrap().unwrap();
            let e = p.dequantize();
            let w = DecodeWeight::Packed(Arc::new(PackedMatrix::from_qtensor(&QTensor::quantize(&t, q).unwrap()).unwrap().unwrap()));
            for n in [1usize, 2, 3, 6] {
                let x = values(n * cols, 30 + n as u64);
                let y = multiply(&[&w], &x, n, Activations::Int8, None).pop().unwrap();
                for j in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols).map(|c| e[r * cols + c] as f64 * x[j * cols + c] as f64).sum();
                        let size: f64 = (0..cols).map(|c| (e[r * cols + c] as f64 * x[j * cols + c] as f64).abs()).sum();
                        let got = y[j * rows + r] as f64;
                        assert!((got - want).abs() < 0.01 * size, "{q:?} n={n} ({j}, {r}): {got} vs {want} (Σ|wx| {size})");
                    }
                }
                let xq = Int8Vectors::new(&x[..cols.min(x.len())]);
                let part = Int8Slice { q: &xq.q, scale: &xq.scale, sum: &xq.sum };
                let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
                portable_product_int8(Kind::of(p.format()), p.bytes(), p.row_bytes(), cols, part, 1, &mut a, 1);
                product_int8(Kind::of(p.format()), p.bytes(), p.row_bytes(), cols, part, 1, &mut b, 1);
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()), "{q:?}: {u} vs {v}");
                }
            }
        }
    }

    /// The portable loop and the AVX2 kernels give the same values (to rounding).
    #[test]
    fn portable_and_simd_products_agree() {
        let (rows, cols) = (20, 64);
        let t = Tensor::from_vec(values(rows * cols, 5), (rows, cols), &Device::Cpu).unwrap();
        let p = PackedMatrix::from_qtensor(&QTensor::quantize(&t, GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        let x = values(3 * cols, 6);
        let mut a = vec![0f32; rows * 3];
        let mut b = vec![0f32; rows * 3];
        portable_product(Kind::Q4_1, p.bytes(), p.row_bytes(), cols, &x, 3, &mut a, 3);
        product(Kind::Q4_1, p.bytes(), p.row_bytes(), cols, &x, 3, &mut b, 3);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
        }
    }
}
