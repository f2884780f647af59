//! Products of frozen weights with a few activation vectors, the whole cost of decoding on a CPU:
//! `x: (n, d_in)`, `W: (d_out, d_in)` → `y = x·Wᵀ: (n, d_out)`, with `n` the tokens of one
//! decoding step (1 per row when generating, the prompt when pre-filling).
//!
//! Each weight is read once per product in the form it is stored: f32, or the GGUF blocks (Q4_0,
//! Q4_1, Q8_0) it was loaded in, whose 32 values are expanded to f32 in registers and multiplied
//! with f32 activations (no activation quantization: the result is the f32 product with the
//! dequantized weight, up to the order of the sums). Decoding one token reads every weight of the
//! model once, so memory traffic bounds it: a 4-bit weight is an eighth of the bytes of f32.
//! Output rows are split over the decoder's thread team (or rayon's threads) in chunks claimed in
//! turn; several weights that read the same input (q, k, v; gate, up) share one parallel pass,
//! after which one thread may read the next pass's weights ahead ([`multiply_then_read_ahead`]).
use super::int8_blocks::{Int8Blocks, Int8Vectors};
use super::spin_team::{SpinTeam, Tail};
use crate::packed_matrix::{BlockFormat, PackedMatrix, BLOCK_LEN};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A frozen weight as the decoder reads it: `(d_out, d_in)`.
#[derive(Clone, Debug)]
pub enum DecodeWeight {
    /// Row-major f32 values.
    Dense { rows: usize, cols: usize, values: Arc<Vec<f32>> },
    /// GGUF blocks (`cols` a multiple of 32), multiplied with f32 activations.
    Packed(Arc<PackedMatrix>),
    /// Blocks multiplied with 8-bit activations (approximate, faster).
    Int8(Arc<Int8Blocks>),
}

impl DecodeWeight {
    /// `(d_out, d_in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense { rows, cols, .. } => (*rows, *cols),
            Self::Packed(p) => p.dims(),
            Self::Int8(w) => w.dims(),
        }
    }

    /// Bytes read by one product.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Self::Dense { values, .. } => 4 * values.len(),
            Self::Packed(p) => p.stored_bytes(),
            Self::Int8(w) => w.stored_bytes(),
        }
    }

    /// The memory a product reads.
    fn regions(&self) -> Vec<&[u8]> {
        match self {
            Self::Dense { values, .. } => vec![as_bytes(values)],
            Self::Packed(p) => vec![p.bytes()],
            Self::Int8(b) => b.regions().to_vec(),
        }
    }

    /// `out: (rows.len(), n)` ← rows `rows` of the weight times `x: (n, d_in)` (note the
    /// transposed output: each row of the weight fills one contiguous run of `n`); an
    /// [`Int8Blocks`] weight reads `xq`, the same vectors in 8 bits; `block_sums` holds the sums
    /// of the blocks of 32 of a single vector (`n = 1`), else nothing.
    fn rows_times(&self, rows: std::ops::Range<usize>, x: &[f32], xq: Option<&Int8Vectors>, block_sums: &[f32], n: usize, out: &mut [f32]) {
        let (_, cols) = self.dims();
        debug_assert!(x.len() == n * cols && out.len() == rows.len() * n);
        let (kind, bytes, row_bytes): (Kind, &[u8], usize) = match (self, xq) {
            // Rows that are not whole blocks of 32 (no real model's, but a config may say so):
            // plain dot products.
            (Self::Dense { values, cols, .. }, _) if cols % BLOCK_LEN != 0 => {
                for (o, r) in rows.enumerate() {
                    let w = &values[r * cols..(r + 1) * cols];
                    for (j, xj) in x.chunks_exact(*cols).enumerate() {
                        out[o * n + j] = super::attention::dot(w, xj);
                    }
                }
                return;
            }
            (Self::Dense { values, cols, .. }, _) => (Kind::F32, as_bytes(values), 4 * cols),
            (Self::Packed(p), _) => (Kind::of(p.format()), p.bytes(), p.row_bytes()),
            (Self::Int8(w), Some(xq)) => {
                let mut j0 = 0;
                while j0 < n {
                    let nv = (n - j0).min(MAX_VECTORS);
                    w.rows_times(rows.clone(), xq.slice(j0, nv), &mut out[j0..], n);
                    j0 += nv;
                }
                return;
            }
            (Self::Int8(_), None) => unreachable!("`multiply` rounds the vectors for 8-bit weights"),
        };
        let rows_bytes = &bytes[rows.start * row_bytes..rows.end * row_bytes];
        let mut j0 = 0;
        while j0 < n {
            let nv = (n - j0).min(MAX_VECTORS);
            product(kind, rows_bytes, row_bytes, cols, &x[j0 * cols..(j0 + nv) * cols], block_sums, nv, &mut out[j0..], n);
            j0 += nv;
        }
    }
}

/// Element types whose values may be viewed as plain bytes (no padding, every bit pattern valid).
pub(crate) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for u16 {}

/// The values as their bytes (native endianness, which is what the kernels read back).
pub(crate) fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `Plain` types have no padding and every byte pattern is a valid u8; the length is
    // in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The CPU has AVX2, FMA and F16C (what the x86 kernels use).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Activation vectors a pass over the weight serves (the accumulators must stay in registers).
const MAX_VECTORS: usize = 8;

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

/// `out[r · stride + j] = Σ_c W[r, c] · x[j, c]` for the rows in `bytes` and `nv ≤ 8` vectors;
/// `block_sums` (the sums of a single vector's blocks of 32, or empty) lets one vector take the
/// AVX-512 kernel.
#[allow(clippy::too_many_arguments)]
fn product(kind: Kind, bytes: &[u8], row_bytes: usize, cols: usize, x: &[f32], block_sums: &[f32], nv: usize, out: &mut [f32], stride: usize) {
    let rows = bytes.len() / row_bytes;
    assert!(rows == 0 || (rows - 1) * stride + nv <= out.len(), "output too short for {rows} rows");
    assert_eq!(x.len(), nv * cols);
    assert_eq!(row_bytes, cols / BLOCK_LEN * kind.block_bytes());
    #[cfg(target_arch = "x86_64")]
    {
        if nv == 1 && kind != Kind::F32 && block_sums.len() == cols / BLOCK_LEN && avx512::available() {
            // SAFETY: AVX-512F, AVX2, FMA and F16C are present; as below, and `block_sums` holds
            // one value per block of the vector (checked).
            unsafe { avx512::one_vector(kind, bytes.as_ptr(), row_bytes, rows, cols, x.as_ptr(), block_sums.as_ptr(), out.as_mut_ptr(), stride) };
            return;
        }
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::Kind;
    use crate::fast_decode::int8_blocks::VALUES_AHEAD;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        super::avx2_available()
    }

    /// See [`super::product`]; the caller checks the CPU features and the bounds.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn product(kind: Kind, bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, nv: usize, out: *mut f32, stride: usize) {
        macro_rules! go {
            ($k:ident) => {
                match nv {
                    1 => $k::<1, 4>(bytes, row_bytes, rows, cols, x, out, stride),
                    2 => $k::<2, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                    3 => $k::<3, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                    4 => $k::<4, 2>(bytes, row_bytes, rows, cols, x, out, stride),
                    5 => $k::<5, 1>(bytes, row_bytes, rows, cols, x, out, stride),
                    6 => $k::<6, 1>(bytes, row_bytes, rows, cols, x, out, stride),
                    7 => $k::<7, 1>(bytes, row_bytes, rows, cols, x, out, stride),
                    _ => $k::<8, 1>(bytes, row_bytes, rows, cols, x, out, stride),
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

    /// The sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
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
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * $block_bytes + VALUES_AHEAD).cast());
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

}

/// One vector (a decoded token) with AVX-512: per block, its values as two vectors of 16 f32
/// against the vector's 32 values, the block's scale applied once to their sum (`d · Σ q·x`) and
/// a Q4_1 offset (or Q4_0's −8) through the block's sum of `x` (`m · Σ x`): about half the
/// instructions of expanding every value to `q·d + m` first. The same product to f32 rounding.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Kind;
    use crate::fast_decode::int8_blocks::VALUES_AHEAD;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f") && super::avx2_available()
    }

    /// `out[r · stride] = Σ_c W[r, c] · x[c]` for the `rows` rows at `bytes` (`kind` blocks, not
    /// f32); `sums[b]` is the sum of block `b` of `x`. The caller checks the CPU and the bounds.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn one_vector(kind: Kind, bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, sums: *const f32, out: *mut f32, stride: usize) {
        match kind {
            Kind::Q4_0 => four_bit::<false>(bytes, row_bytes, rows, cols, x, sums, out, stride),
            Kind::Q4_1 => four_bit::<true>(bytes, row_bytes, rows, cols, x, sums, out, stride),
            Kind::Q8_0 => q8_0(bytes, row_bytes, rows, cols, x, out, stride),
            Kind::F32 => unreachable!("f32 weights take the AVX2 kernel"),
        }
    }

    /// Q4_1 (`q·d + m`, `OFFSET`) or Q4_0 (`(q − 8)·d`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn four_bit<const OFFSET: bool>(bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, sums: *const f32, out: *mut f32, stride: usize) {
        let (block_bytes, values_at) = if OFFSET { (20, 4) } else { (18, 2) };
        let m4 = _mm_set1_epi8(0x0F);
        for r in 0..rows {
            let row = bytes.add(r * row_bytes);
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut extra = 0f32;
            for b in 0..cols / 32 {
                let p = row.add(b * block_bytes);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(VALUES_AHEAD).cast());
                // Lane 0 d, lane 1 m (Q4_1; for Q4_0 the first values' bytes, unused).
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p.cast::<i32>())));
                let raw = _mm_loadu_si128(p.add(values_at).cast());
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, m4)));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), m4)));
                let xb = x.add(b * 32);
                let qx = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
                acc[b % 2] = _mm512_fmadd_ps(qx, _mm512_broadcastss_ps(dm), acc[b % 2]);
                let offset = if OFFSET { _mm_cvtss_f32(_mm_movehdup_ps(dm)) } else { -8.0 * _mm_cvtss_f32(dm) };
                extra += offset * *sums.add(b);
            }
            *out.add(r * stride) = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + extra;
        }
    }

    /// Q8_0 (`q·d`, `q` signed 8-bit).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn q8_0(bytes: *const u8, row_bytes: usize, rows: usize, cols: usize, x: *const f32, out: *mut f32, stride: usize) {
        for r in 0..rows {
            let row = bytes.add(r * row_bytes);
            let mut acc = [_mm512_setzero_ps(); 2];
            for b in 0..cols / 32 {
                let p = row.add(b * 34);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(VALUES_AHEAD).cast());
                let d = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p.cast::<u16>()) as i32));
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2).cast())));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18).cast())));
                let xb = x.add(b * 32);
                let qx = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
                acc[b % 2] = _mm512_fmadd_ps(qx, _mm512_broadcastss_ps(d), acc[b % 2]);
            }
            *out.add(r * stride) = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }
}

/// Reads `weights` (the next step's) from memory while the caller does the serial work in
/// between, stopping when `abort` turns true: whatever it read is in the caches when the next
/// product starts, instead of coming from memory then.
fn read_ahead(weights: &[DecodeWeight], abort: &AtomicBool) {
    const LINE: usize = 64;
    const CHECK_EVERY: usize = 4096;
    let mut sum = 0u8;
    for w in weights {
        for region in w.regions() {
            for chunk in region.chunks(CHECK_EVERY) {
                if abort.load(Ordering::Relaxed) {
                    std::hint::black_box(sum);
                    return;
                }
                for at in (0..chunk.len()).step_by(LINE) {
                    sum = sum.wrapping_add(chunk[at]);
                }
            }
        }
    }
    std::hint::black_box(sum);
}

/// `x: (n, d_in)` times each of `weights` (all `(d_out_i, d_in)`) → one `(n, d_out_i)` output
/// each, in one parallel pass over all their rows: on `team` (each thread an equal share of the
/// rows) or, without one, on rayon's pool.
pub fn multiply(weights: &[&DecodeWeight], x: &[f32], n: usize, team: Option<&SpinTeam>) -> Vec<Vec<f32>> {
    multiply_then_read_ahead(weights, x, n, team, Vec::new())
}

/// Whether reading the next product's weights ahead speeds decoding up on this CPU. Measured
/// (BENCHMARKS.md): +7 % tokens/s on an AVX2-only Zen 3, −3 to −7 % on an AVX-512 Zen 5 (whose
/// own prefetchers keep up, and where the extra reads only compete with the product's): so only
/// on CPUs without AVX-512.
fn read_ahead_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// As [`multiply`]; then, on a team of two or more and where it pays ([`read_ahead_pays`]), one
/// thread reads `next` (the weights of the next product) ahead while the caller goes on: it
/// touches each 64-byte line, so what it read is in the caches when the next product starts, and
/// stops when the next job begins.
pub fn multiply_then_read_ahead(weights: &[&DecodeWeight], x: &[f32], n: usize, team: Option<&SpinTeam>, next: Vec<DecodeWeight>) -> Vec<Vec<f32>> {
    let int8 = weights.iter().any(|w| matches!(w, DecodeWeight::Int8(_)));
    let xq = int8.then(|| Int8Vectors::new(x, x.len() / n.max(1)));
    // One vector times GGUF blocks: the sums of its blocks, once for every chunk of rows.
    let block_sums: Vec<f32> = if n == 1 && weights.iter().any(|w| matches!(w, DecodeWeight::Packed(_))) {
        x.chunks_exact(BLOCK_LEN).map(|c| c.iter().sum()).collect()
    } else {
        Vec::new()
    };
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
                w.rows_times(a - s..b - s, x, xq.as_ref(), &block_sums, n, &mut out[(a - lo) * n..(b - lo) * n]);
            }
        }
    };
    match team {
        Some(team) if team.threads() > 1 => {
            // Chunks claimed in turn, each a share of the rows still left (at least 16): a
            // thread slowed by another process on its core takes fewer, and the last chunks are
            // small, so the threads finish close together.
            let mut bounds = vec![0];
            while let Some(&at) = bounds.last().filter(|&&at| at < total) {
                bounds.push(at + ((total - at) / (2 * team.threads())).max(16).min(total - at));
            }
            let chunks = bounds.len() - 1;
            let mut parts: Vec<&mut [f32]> = Vec::with_capacity(chunks);
            let mut rest: &mut [f32] = &mut transposed;
            for i in 0..chunks {
                let (head, tail) = rest.split_at_mut((bounds[i + 1] - bounds[i]) * n);
                parts.push(head);
                rest = tail;
            }
            let tail: Option<Tail> = (!next.is_empty() && read_ahead_pays()).then(|| Arc::new(move |abort: &AtomicBool| read_ahead(&next, abort)) as Tail);
            team.share_out(&mut parts, 1, || (), &|_, c, part| fill(bounds[c], part), tail);
        }
        // One thread: here, not handed to a pool thread and waited for (a sleep and a wake-up
        // per product, which tripled the time of a decoded token).
        _ if team.map_or(rayon::current_num_threads(), SpinTeam::threads) <= 1 => fill(0, &mut transposed),
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
            // Back to `(n, rows)`, 64 rows at a time: the block read stays in the L1 cache and
            // each vector's 64 values are written in one run.
            let mut y = vec![0f32; n * rows];
            let block = &transposed[s * n..(s + rows) * n];
            for r0 in (0..rows).step_by(64) {
                let r1 = (r0 + 64).min(rows);
                for (j, yj) in y.chunks_exact_mut(rows).enumerate() {
                    for (r, v) in yj[r0..r1].iter_mut().enumerate() {
                        *v = block[(r0 + r) * n + j];
                    }
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

    use crate::fast_decode::test_values as values;

    /// Every format, 1 to 9 vectors (partial passes included), several weights in one pass, on
    /// a team, on rayon's pool and on the caller alone: against f64 sums over the dequantized
    /// values.
    #[test]
    fn products_match_f64_sums_of_the_expanded_weights() {
        let (rows_a, rows_b, cols) = (37, 70, 96);
        let (team, alone) = (SpinTeam::new(3), SpinTeam::new(1));
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
            for n in [1usize, 2, 3, 4, 5, 8, 9, 17] {
                let x = values(n * cols, 10 + n as u64);
                // A team of three, rayon's pool, or one thread (the caller alone).
                let on = match n % 3 {
                    0 => Some(&team),
                    1 => None,
                    _ => Some(&alone),
                };
                let ys = multiply(&[&wa, &wb], &x, n, on);
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

    /// An f32 weight whose rows are not whole blocks of 32 (40 columns), on a team and alone.
    #[test]
    fn f32_rows_of_any_length_match_f64_sums() {
        let (rows, cols) = (21, 40);
        let v = values(rows * cols, 3);
        let w = DecodeWeight::Dense { rows, cols, values: Arc::new(v.clone()) };
        let team = SpinTeam::new(2);
        for n in [1usize, 3] {
            let x = values(n * cols, 4);
            for on in [Some(&team), None] {
                let y = multiply(&[&w], &x, n, on).pop().unwrap();
                for j in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols).map(|c| v[r * cols + c] as f64 * x[j * cols + c] as f64).sum();
                        assert!((y[j * rows + r] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "n={n} ({j}, {r})");
                    }
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
        product(Kind::Q4_1, p.bytes(), p.row_bytes(), cols, &x, &[], 3, &mut b, 3);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
        }
    }
}
