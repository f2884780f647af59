//! Block-quantized weights laid out for products with 8-bit activations, as llama.cpp computes
//! them: per block of 32, `Σ w·x ≈ d_w · d_x · Σ q_w · q_x` (+ `m · Σx` for Q4_1, `−8·d_w · Σx`
//! for Q4_0) with the integer sums done 32 bytes at a time (AVX2 `maddubs`), or 64 at a time
//! where the CPU has AVX-512 VNNI (`vpdpbusd`; four 4-bit blocks a step).
//!
//! The GGUF blocks (scales interleaved with the values) are split at load into the values of
//! every block, then the f16 scales (and Q4_1 offsets) of each row padded to groups of 8, so one
//! load gives 8 scales and the per-block scale products are vector operations: the same bytes
//! as the GGUF blocks, fewer instructions a block.
use crate::packed_matrix::{BlockFormat, PackedMatrix, BLOCK_LEN};

/// How far ahead of the block being multiplied the kernels ask for a weight's value bytes
/// (software prefetch; rows follow each other, so this reaches into the next rows): with the
/// hardware prefetchers alone, a decoded token took about 15 % longer on the AVX-512 machine
/// (measured 2,048, 4,096 and 8,192 bytes ahead: 4,096 best). The f32-activation kernels of
/// [`super::weight_product`] use it too (about 5 % faster there).
pub(crate) const VALUES_AHEAD: usize = 4096;

/// The same for the scales and offsets, in f16 values (1 KB; measured 3 % faster than none).
const SCALES_AHEAD: usize = 512;

/// Blocks of a row, rounded up to whole groups of 8.
fn padded(blocks: usize) -> usize {
    blocks.div_ceil(8) * 8
}

/// `(rows, cols)` in [`BlockFormat`] blocks, split as described in the module documentation.
#[derive(Debug)]
pub struct Int8Blocks {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    /// The 4-bit (16 bytes) or 8-bit (32 bytes) values of each block, row after row.
    values: Vec<u8>,
    /// `(rows, padded(blocks))` f16 bits: the scales `d`, zero in the padding.
    scales: Vec<u16>,
    /// Q4_1's offsets `m`, as `scales`; empty otherwise.
    offsets: Vec<u16>,
}

impl Int8Blocks {
    pub fn from_packed(p: &PackedMatrix) -> Self {
        let (rows, cols) = p.dims();
        let format = p.format();
        let blocks = cols / BLOCK_LEN;
        let pb = padded(blocks);
        let qb = value_bytes(format);
        let mut values = Vec::with_capacity(rows * blocks * qb);
        let mut scales = vec![0u16; rows * pb];
        let mut offsets = if format == BlockFormat::Q4_1 { vec![0u16; rows * pb] } else { Vec::new() };
        let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        for (r, row) in p.bytes().chunks_exact(p.row_bytes()).enumerate() {
            for (k, b) in row.chunks_exact(format.block_bytes()).enumerate() {
                scales[r * pb + k] = u16_at(b, 0);
                if format == BlockFormat::Q4_1 {
                    offsets[r * pb + k] = u16_at(b, 2);
                }
                values.extend_from_slice(&b[format.block_bytes() - qb..]);
            }
        }
        Self { format, rows, cols, values, scales, offsets }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn stored_bytes(&self) -> usize {
        self.values.len() + 2 * (self.scales.len() + self.offsets.len())
    }

    /// The memory a product reads: values, scales, offsets.
    pub(crate) fn regions(&self) -> [&[u8]; 3] {
        use super::weight_product::as_bytes;
        [&self.values, as_bytes(&self.scales), as_bytes(&self.offsets)]
    }

    /// `out[(r − rows.start) · stride + j] = Σ_c W[r, c] · x[j, c]` for `x.n ≤ 8` vectors.
    pub(crate) fn rows_times(&self, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) {
        let blocks = self.cols / BLOCK_LEN;
        let pb = padded(blocks);
        let n = x.n;
        assert!(rows.end <= self.rows && n <= 8 && x.q.len() == n * self.cols && x.scale.len() == n * pb && x.sum.len() == n * pb && x.q_by_halves.len() == n * pb * BLOCK_LEN);
        assert!(rows.is_empty() || (rows.len() - 1) * stride + n <= out.len(), "output too short");
        #[cfg(target_arch = "x86_64")]
        {
            if (n >= 2 || self.format != BlockFormat::Q8_0) && avx512::available() {
                // SAFETY: AVX-512 F/BW/VNNI, AVX2, FMA and F16C are present; every index the
                // kernel forms stays within the buffers whose lengths are asserted above.
                unsafe { avx512::rows_times(self, rows, x, out, stride) };
                return;
            }
            if super::weight_product::avx2_available() {
                // SAFETY: AVX2, FMA and F16C are present; as above.
                unsafe { avx2::rows_times(self, rows, x, out, stride) };
                return;
            }
        }
        self.portable_rows_times(rows, x, out, stride);
    }

    fn portable_rows_times(&self, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) {
        let blocks = self.cols / BLOCK_LEN;
        let (pb, qb) = (padded(blocks), value_bytes(self.format));
        let f16 = |bits: u16| half::f16::from_bits(bits).to_f32();
        for (o, r) in rows.enumerate() {
            for j in 0..x.n {
                let mut acc = 0f32;
                for k in 0..blocks {
                    let v = &self.values[(r * blocks + k) * qb..][..qb];
                    let xq = &x.q[j * self.cols + k * BLOCK_LEN..][..BLOCK_LEN];
                    let dot: i32 = match self.format {
                        BlockFormat::Q8_0 => v.iter().zip(xq).map(|(&a, &b)| a as i8 as i32 * b as i32).sum(),
                        _ => (0..16).map(|i| (v[i] & 0x0F) as i32 * xq[i] as i32 + (v[i] >> 4) as i32 * xq[i + 16] as i32).sum(),
                    };
                    let (d, xd, xs) = (f16(self.scales[r * pb + k]), x.scale[j * pb + k], x.sum[j * pb + k]);
                    acc += dot as f32 * (d * xd)
                        + match self.format {
                            BlockFormat::Q4_0 => -8.0 * d * xs,
                            BlockFormat::Q4_1 => f16(self.offsets[r * pb + k]) * xs,
                            BlockFormat::Q8_0 => 0.0,
                        };
                }
                out[o * stride + j] = acc;
            }
        }
    }
}

fn value_bytes(f: BlockFormat) -> usize {
    match f {
        BlockFormat::Q8_0 => 32,
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => 16,
    }
}

/// `n` vectors of `cols` in 8 bits: per block of 32, `x ≈ q · scale` (`scale = max|x| / 127`),
/// and the exact f32 sum of the block (for the Q4_0 / Q4_1 offsets); scales and sums padded to
/// groups of 8 blocks with zeros, like the weights' scales.
pub struct Int8Vectors {
    cols: usize,
    q: Vec<i8>,
    /// `q` in the order the 4-bit kernels (AVX-512; AVX2 for one vector) read it: per 4 blocks,
    /// the first 16 values of each block, then the last 16 of each; `(n, padded(blocks) · 32)`,
    /// zero in the padding.
    q_by_halves: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl Int8Vectors {
    /// `x: (n, cols)`, `cols` a multiple of 32.
    pub fn new(x: &[f32], cols: usize) -> Self {
        let n = x.len() / cols;
        let pb = padded(cols / BLOCK_LEN);
        let mut q = vec![0i8; x.len()];
        let (mut scale, mut sum) = (vec![0f32; n * pb], vec![0f32; n * pb]);
        for (j, (xv, qv)) in x.chunks_exact(cols).zip(q.chunks_exact_mut(cols)).enumerate() {
            round_vector(xv, qv, &mut scale[j * pb..(j + 1) * pb], &mut sum[j * pb..(j + 1) * pb]);
        }
        let mut q_by_halves = vec![0i8; n * pb * BLOCK_LEN];
        for (qv, hv) in q.chunks_exact(cols).zip(q_by_halves.chunks_exact_mut(pb * BLOCK_LEN)) {
            for (b, block) in qv.chunks_exact(BLOCK_LEN).enumerate() {
                let (four, k) = (b / 4, b % 4);
                let at = four * 4 * BLOCK_LEN + k * 16;
                hv[at..at + 16].copy_from_slice(&block[..16]);
                hv[at + 64..at + 80].copy_from_slice(&block[16..]);
            }
        }
        Self { cols, q, q_by_halves, scale, sum }
    }

    /// Vectors `j0 .. j0 + n`.
    pub(crate) fn slice(&self, j0: usize, n: usize) -> Int8Slice<'_> {
        let pb = self.scale.len() / (self.q.len() / self.cols).max(1);
        let hb = pb * BLOCK_LEN;
        Int8Slice {
            n,
            q: &self.q[j0 * self.cols..(j0 + n) * self.cols],
            q_by_halves: &self.q_by_halves[j0 * hb..(j0 + n) * hb],
            scale: &self.scale[j0 * pb..(j0 + n) * pb],
            sum: &self.sum[j0 * pb..(j0 + n) * pb],
        }
    }
}

crate::ops::cpu_util::simd_versions! {
    /// One vector `x: (cols)` to `q`, with each block's scale and sum (8 running sums each).
    pub fn round_vector(x: &[f32], q: &mut [i8], scale: &mut [f32], sum: &mut [f32]) -> () {
        for (k, (b, qb)) in x.chunks_exact(BLOCK_LEN).zip(q.chunks_exact_mut(BLOCK_LEN)).enumerate() {
            let (mut amax, mut total) = ([0f32; 8], [0f32; 8]);
            for c in b.chunks_exact(8) {
                for l in 0..8 {
                    amax[l] = amax[l].max(c[l].abs());
                    total[l] += c[l];
                }
            }
            let d = amax.iter().fold(0f32, |m, &v| m.max(v)) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (o, &v) in qb.iter_mut().zip(b) {
                // Round half away from zero (as `f32::round`), without a libm call; clamped
                // so the conversion needs no checks (|s| ≤ 127.5 anyway): `max` first turns a
                // NaN into −127, which `clamp` would keep as NaN.
                let s = v * inv;
                #[allow(clippy::manual_clamp)]
                let r = (s + 0.5f32.copysign(s)).max(-127.0).min(127.0);
                // SAFETY: `r` is finite and within the range of i32 (clamped above).
                *o = unsafe { r.to_int_unchecked::<i32>() } as i8;
            }
            scale[k] = d;
            sum[k] = total.iter().sum();
        }
    }
}

/// Up to 8 of the vectors, for one pass over the weight.
#[derive(Clone, Copy)]
pub(crate) struct Int8Slice<'a> {
    n: usize,
    q: &'a [i8],
    /// See [`Int8Vectors`].
    q_by_halves: &'a [i8],
    scale: &'a [f32],
    sum: &'a [f32],
}

impl<'a> Int8Slice<'a> {
    /// Vectors `j0 .. j0 + n` of these.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn vectors(&self, j0: usize, n: usize) -> Int8Slice<'a> {
        let cols = self.q.len() / self.n.max(1);
        let pb = self.scale.len() / self.n.max(1);
        let hb = pb * BLOCK_LEN;
        Int8Slice {
            n,
            q: &self.q[j0 * cols..(j0 + n) * cols],
            q_by_halves: &self.q_by_halves[j0 * hb..(j0 + n) * hb],
            scale: &self.scale[j0 * pb..(j0 + n) * pb],
            sum: &self.sum[j0 * pb..(j0 + n) * pb],
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{padded, value_bytes, Int8Blocks, Int8Slice, SCALES_AHEAD, VALUES_AHEAD};
    use crate::fast_decode::weight_product::avx2::hsum;
    use crate::packed_matrix::{BlockFormat, BLOCK_LEN};
    use std::arch::x86_64::*;

    pub(super) const Q4_0: u8 = 0;
    pub(super) const Q4_1: u8 = 1;
    pub(super) const Q8_0: u8 = 2;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_times(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) {
        macro_rules! go {
            ($f:expr) => {
                match x.n {
                    1 if $f != Q8_0 => four_bit_one_vector::<$f>(m, rows, x, out.as_mut_ptr(), stride),
                    1 => kernel::<$f, 1, 2>(m, rows, x, out.as_mut_ptr(), stride),
                    2 => kernel::<$f, 2, 2>(m, rows, x, out.as_mut_ptr(), stride),
                    3 => kernel::<$f, 3, 2>(m, rows, x, out.as_mut_ptr(), stride),
                    4 => kernel::<$f, 4, 2>(m, rows, x, out.as_mut_ptr(), stride),
                    5 => kernel::<$f, 5, 1>(m, rows, x, out.as_mut_ptr(), stride),
                    6 => kernel::<$f, 6, 1>(m, rows, x, out.as_mut_ptr(), stride),
                    7 => kernel::<$f, 7, 1>(m, rows, x, out.as_mut_ptr(), stride),
                    _ => kernel::<$f, 8, 1>(m, rows, x, out.as_mut_ptr(), stride),
                }
            };
        }
        match m.format {
            BlockFormat::Q4_0 => go!(Q4_0),
            BlockFormat::Q4_1 => go!(Q4_1),
            BlockFormat::Q8_0 => go!(Q8_0),
        }
    }

    /// One vector times rows of a 4-bit weight, two blocks a step: their 32 value bytes in one
    /// load, the low nibbles (each block's first 16 values) and the high ones (its last 16)
    /// against the vector in [`super::Int8Vectors`]' halves order, so that after `maddubs`,
    /// their sum and `madd`, lanes 0–3 hold the first block's sum and 4–7 the second's, scaled
    /// per lane: about half the instructions a block of the general kernel.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn four_bit_one_vector<const F: u8>(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: *mut f32, stride: usize) {
        let blocks = m.cols / BLOCK_LEN;
        let pb = padded(blocks);
        let (values, scales, offsets) = (m.values.as_ptr(), m.scales.as_ptr(), m.offsets.as_ptr());
        let (xh, xd, xs) = (x.q_by_halves.as_ptr(), x.scale.as_ptr(), x.sum.as_ptr());
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let minus8 = _mm256_set1_ps(-8.0);
        // Lanes 0–3 of a pair's scale vector take block 2p of the group, lanes 4–7 block 2p + 1.
        let pair_index: [__m256i; 4] = std::array::from_fn(|p| {
            let (even, odd) = (2 * p as i32, 2 * p as i32 + 1);
            _mm256_setr_epi32(even, even, even, even, odd, odd, odd, odd)
        });
        for (o, r) in rows.enumerate() {
            let vrow = values.add(r * blocks * 16);
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut extra = _mm256_setzero_ps();
            for g in 0..pb / 8 {
                prefetch_scales::<F>(m, r * pb + 8 * g);
                let dv = eight_f16(scales.add(r * pb + 8 * g));
                let group_scale = _mm256_mul_ps(dv, _mm256_loadu_ps(xd.add(8 * g)));
                let offset = if F == Q4_1 { eight_f16(offsets.add(r * pb + 8 * g)) } else { _mm256_mul_ps(dv, minus8) };
                extra = _mm256_fmadd_ps(offset, _mm256_loadu_ps(xs.add(8 * g)), extra);
                let kmax = (blocks - 8 * g).min(8);
                for p in 0..kmax.div_ceil(2) {
                    let b = 8 * g + 2 * p;
                    _mm_prefetch::<_MM_HINT_T0>(vrow.wrapping_add(b * 16 + VALUES_AHEAD).cast());
                    // A row's last block alone: the other half zero (the vector is zero there).
                    let raw = if 2 * p + 1 < kmax { _mm256_loadu_si256(vrow.add(b * 16).cast()) } else { _mm256_zextsi128_si256(_mm_loadu_si128(vrow.add(b * 16).cast())) };
                    let lo = _mm256_and_si256(raw, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                    // The pair's first halves, then 64 bytes on its second halves (see Int8Vectors).
                    let xp = xh.add(b / 4 * 4 * BLOCK_LEN + (p % 2) * BLOCK_LEN);
                    let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256(xp.cast())), _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xp.add(64).cast())));
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let scale = _mm256_permutevar8x32_ps(group_scale, pair_index[p]);
                    acc[p % 2] = _mm256_fmadd_ps(dot, scale, acc[p % 2]);
                }
            }
            *out.add(o * stride) = hsum(_mm256_add_ps(acc[0], acc[1])) + hsum(extra);
        }
    }

    /// Eight f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn eight_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    /// Asks for the scales (and Q4_1's offsets) [`SCALES_AHEAD`] values past `at`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn prefetch_scales<const F: u8>(m: &Int8Blocks, at: usize) {
        _mm_prefetch::<_MM_HINT_T0>(m.scales.as_ptr().wrapping_add(at + SCALES_AHEAD).cast());
        if F == Q4_1 {
            _mm_prefetch::<_MM_HINT_T0>(m.offsets.as_ptr().wrapping_add(at + SCALES_AHEAD).cast());
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<const F: u8, const N: usize, const A: usize>(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: *mut f32, stride: usize) {
        let blocks = m.cols / BLOCK_LEN;
        let pb = padded(blocks);
        let qb = value_bytes(m.format);
        let (values, scales, offsets) = (m.values.as_ptr(), m.scales.as_ptr(), m.offsets.as_ptr());
        let (xq, xd, xs) = (x.q.as_ptr(), x.scale.as_ptr(), x.sum.as_ptr());
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let minus8 = _mm256_set1_ps(-8.0);
        for (o, r) in rows.enumerate() {
            let vrow = values.add(r * blocks * qb);
            let mut acc = [[_mm256_setzero_ps(); A]; N];
            let mut extra = [_mm256_setzero_ps(); N];
            let mut tmp = [[0f32; 8]; N];
            for g in 0..pb / 8 {
                let dv = eight_f16(scales.add(r * pb + 8 * g));
                for j in 0..N {
                    let at = j * pb + 8 * g;
                    _mm256_storeu_ps(tmp[j].as_mut_ptr(), _mm256_mul_ps(dv, _mm256_loadu_ps(xd.add(at))));
                    if F == Q4_1 {
                        extra[j] = _mm256_fmadd_ps(eight_f16(offsets.add(r * pb + 8 * g)), _mm256_loadu_ps(xs.add(at)), extra[j]);
                    } else if F == Q4_0 {
                        extra[j] = _mm256_fmadd_ps(_mm256_mul_ps(dv, minus8), _mm256_loadu_ps(xs.add(at)), extra[j]);
                    }
                }
                let kmax = (blocks - 8 * g).min(8);
                for k in 0..kmax {
                    let b = 8 * g + k;
                    _mm_prefetch::<_MM_HINT_T0>(vrow.wrapping_add(b * qb + VALUES_AHEAD).cast());
                    let q = if F == Q8_0 {
                        _mm256_loadu_si256(vrow.add(b * 32).cast())
                    } else {
                        let raw = _mm_loadu_si128(vrow.add(b * 16).cast());
                        _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), m4)
                    };
                    let qa = if F == Q8_0 { _mm256_sign_epi8(q, q) } else { q };
                    for j in 0..N {
                        let xv = _mm256_loadu_si256(xq.add(j * m.cols + b * 32).cast());
                        let xs8 = if F == Q8_0 { _mm256_sign_epi8(xv, q) } else { xv };
                        let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(qa, xs8), ones));
                        acc[j][k % A] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&tmp[j][k]), acc[j][k % A]);
                    }
                }
            }
            for j in 0..N {
                let mut s = acc[j][0];
                for a in 1..A {
                    s = _mm256_add_ps(s, acc[j][a]);
                }
                *out.add(o * stride + j) = hsum(s) + hsum(extra[j]);
            }
        }
    }
}

/// The products with AVX-512 VNNI, whose `vpdpbusd` adds 4-byte dot products (unsigned × signed
/// bytes) into 16 integer lanes: the 4-bit formats for any number of vectors (a decoded token
/// included), Q8_0 for several (a prompt). A decoded token's Q8_0 product (the output head) stays
/// on the AVX2 kernel: it waits on memory, and the AVX-512 one measured no faster.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{padded, Int8Blocks, Int8Slice, VALUES_AHEAD};
    use crate::fast_decode::weight_product::avx2::hsum;
    use crate::packed_matrix::{BlockFormat, BLOCK_LEN};
    use super::avx2::{eight_f16, prefetch_scales, Q4_0, Q4_1, Q8_0};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && crate::fast_decode::weight_product::avx2_available()
    }

    /// Rows a kernel call covers when the vectors are split in two groups: their weights (at most
    /// ~11 KB for 1,536 columns) are still in L1 for the second group.
    const ROWS_PER_SPLIT: usize = 16;

    /// More than 4 vectors take two kernel calls per 16 rows (vectors 0–3, then the rest): the
    /// accumulators and scales of 8 vectors at once do not fit in the 32 registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn rows_times(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) {
        macro_rules! go {
            ($kernel:ident, $f:expr) => {
                match x.n {
                    1 => $kernel::<$f, 1>(m, rows, x, out.as_mut_ptr(), stride),
                    2 => $kernel::<$f, 2>(m, rows, x, out.as_mut_ptr(), stride),
                    3 => $kernel::<$f, 3>(m, rows, x, out.as_mut_ptr(), stride),
                    4 => $kernel::<$f, 4>(m, rows, x, out.as_mut_ptr(), stride),
                    n => {
                        let (first, rest) = (x.vectors(0, 4), x.vectors(4, n - 4));
                        let mut r0 = rows.start;
                        while r0 < rows.end {
                            let r1 = (r0 + ROWS_PER_SPLIT).min(rows.end);
                            let o = out.as_mut_ptr().add((r0 - rows.start) * stride);
                            $kernel::<$f, 4>(m, r0..r1, first, o, stride);
                            match n - 4 {
                                1 => $kernel::<$f, 1>(m, r0..r1, rest, o.add(4), stride),
                                2 => $kernel::<$f, 2>(m, r0..r1, rest, o.add(4), stride),
                                3 => $kernel::<$f, 3>(m, r0..r1, rest, o.add(4), stride),
                                _ => $kernel::<$f, 4>(m, r0..r1, rest, o.add(4), stride),
                            }
                            r0 = r1;
                        }
                    }
                }
            };
        }
        match m.format {
            BlockFormat::Q4_0 => go!(four_bit_kernel, Q4_0),
            BlockFormat::Q4_1 => go!(four_bit_kernel, Q4_1),
            BlockFormat::Q8_0 => go!(q8_0_kernel, Q8_0),
        }
    }

    /// Rows of a 4-bit weight times `N ≤ 4` vectors, four blocks a step: their 64 value bytes in
    /// one load; the low nibbles (each block's first 16 values) and the high nibbles (its last
    /// 16) each meet a vector's values in [`super::Int8Vectors`]' halves order in one
    /// `vpdpbusd`, so 128-bit lane `k` sums block `k`, scaled per lane. About a quarter of the
    /// AVX2 kernel's instructions a block: a decoded token waits on memory, and fewer
    /// instructions leave the loads more room.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn four_bit_kernel<const F: u8, const N: usize>(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: *mut f32, stride: usize) {
        let blocks = m.cols / BLOCK_LEN;
        let pb = padded(blocks);
        let (values, scales, offsets) = (m.values.as_ptr(), m.scales.as_ptr(), m.offsets.as_ptr());
        let (xh, xd, xs) = (x.q_by_halves.as_ptr(), x.scale.as_ptr(), x.sum.as_ptr());
        let m4 = _mm512_set1_epi8(0x0F);
        let minus8 = _mm256_set1_ps(-8.0);
        // Lane l of a step's scale vector takes block l / 4 of the step's four.
        let first_four = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let last_four = _mm512_add_epi32(first_four, _mm512_set1_epi32(4));
        for (o, r) in rows.enumerate() {
            let vrow = values.add(r * blocks * 16);
            // One vector: a sum for each half of a group (two independent chains); several:
            // one sum each.
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut extra = [_mm256_setzero_ps(); N];
            let mut group_scale = [_mm512_setzero_ps(); N];
            for g in 0..pb / 8 {
                prefetch_scales::<F>(m, r * pb + 8 * g);
                let dv = eight_f16(scales.add(r * pb + 8 * g));
                let offset = if F == Q4_1 { eight_f16(offsets.add(r * pb + 8 * g)) } else { _mm256_mul_ps(dv, minus8) };
                for j in 0..N {
                    let at = j * pb + 8 * g;
                    group_scale[j] = _mm512_castps256_ps512(_mm256_mul_ps(dv, _mm256_loadu_ps(xd.add(at))));
                    extra[j] = _mm256_fmadd_ps(offset, _mm256_loadu_ps(xs.add(at)), extra[j]);
                }
                for half in 0..2 {
                    let b = 8 * g + 4 * half;
                    if b >= blocks {
                        break;
                    }
                    _mm_prefetch::<_MM_HINT_T0>(vrow.wrapping_add(b * 16 + VALUES_AHEAD).cast());
                    // The last blocks of a row: only theirs (the padding's scales are zero, and
                    // so are the vectors' values there).
                    let raw = if blocks - b >= 4 { _mm512_loadu_si512(vrow.add(b * 16).cast()) } else { _mm512_maskz_loadu_epi8((1u64 << (16 * (blocks - b))) - 1, vrow.add(b * 16).cast()) };
                    let lo = _mm512_and_si512(raw, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                    let index = if half == 0 { first_four } else { last_four };
                    for j in 0..N {
                        let xp = xh.add((j * pb + b) * BLOCK_LEN);
                        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xp.cast()));
                        let dot = _mm512_dpbusd_epi32(dot, hi, _mm512_loadu_si512(xp.add(64).cast()));
                        let scale = _mm512_permutexvar_ps(index, group_scale[j]);
                        let a = if N == 1 { half } else { j };
                        acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[a]);
                    }
                }
            }
            for j in 0..N {
                let sum = if N == 1 { _mm512_add_ps(acc[0], acc[1]) } else { acc[j] };
                *out.add(o * stride + j) = hsum16(sum) + hsum(extra[j]);
            }
        }
    }

    /// The sum of the 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn hsum16(v: __m512) -> f32 {
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum(_mm256_add_ps(_mm512_castps512_ps256(v), upper))
    }

    /// Rows of a Q8_0 weight times `N ≤ 4` vectors, two blocks a step (lanes 0–7 the first,
    /// 8–15 the second), each scaled in f32: `|w|` against the vector's values given the sign of
    /// `w` (the instruction needs an unsigned side).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_0_kernel<const F: u8, const N: usize>(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: *mut f32, stride: usize) {
        debug_assert_eq!(F, Q8_0);
        let blocks = m.cols / BLOCK_LEN;
        let pb = padded(blocks);
        let (values, scales) = (m.values.as_ptr(), m.scales.as_ptr());
        let (xq, xd) = (x.q.as_ptr(), x.scale.as_ptr());
        // Lane l of a pair's scale vector takes block 2p (l < 8) or 2p + 1 (l ≥ 8) of the group.
        let pair_index: [__m512i; 4] = std::array::from_fn(|p| {
            let (even, odd) = (2 * p as i32, 2 * p as i32 + 1);
            _mm512_setr_epi32(even, even, even, even, even, even, even, even, odd, odd, odd, odd, odd, odd, odd, odd)
        });
        for (o, r) in rows.enumerate() {
            let vrow = values.add(r * blocks * 32);
            let mut acc = [_mm512_setzero_ps(); N];
            let mut group_scale = [_mm512_setzero_ps(); N];
            for g in 0..pb / 8 {
                let dv = eight_f16(scales.add(r * pb + 8 * g));
                for j in 0..N {
                    group_scale[j] = _mm512_castps256_ps512(_mm256_mul_ps(dv, _mm256_loadu_ps(xd.add(j * pb + 8 * g))));
                }
                let kmax = (blocks - 8 * g).min(8);
                for p in 0..kmax.div_ceil(2) {
                    let b = 8 * g + 2 * p;
                    // The second block of the pair, if the row has it.
                    let mask: __mmask64 = if 2 * p + 1 < kmax { u64::MAX } else { u32::MAX as u64 };
                    let w = _mm512_maskz_loadu_epi8(mask, vrow.add(b * 32).cast());
                    let (wu, negative) = (_mm512_abs_epi8(w), _mm512_movepi8_mask(w));
                    for j in 0..N {
                        let xv = _mm512_maskz_loadu_epi8(mask, xq.add(j * m.cols + b * 32).cast());
                        let xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, xv));
                        let scale = _mm512_permutexvar_ps(pair_index[p], group_scale[j]);
                        acc[j] = _mm512_fmadd_ps(dot, scale, acc[j]);
                    }
                }
            }
            for j in 0..N {
                *out.add(o * stride + j) = hsum16(acc[j]);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn run_for_test(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) -> bool {
        if !available() {
            return false;
        }
        // SAFETY: the features are present; the test's buffers meet rows_times' checks.
        unsafe { rows_times(m, rows, x, out, stride) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use crate::fast_decode::test_values as values;

    /// Within 1 % of Σ|w·x| of the f64 sums over the dequantized weight, 1–8 vectors, rows
    /// whose blocks are not whole groups of 8 (160 = 5 blocks, 352 = 11); the portable loop
    /// and the AVX2 kernel agree.
    #[test]
    fn int8_products_are_close_and_portable_and_simd_agree() {
        for cols in [160usize, 352] {
            let rows = 19;
            for q in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let t = Tensor::from_vec(values(rows * cols, 21), (rows, cols), &Device::Cpu).unwrap();
                let p = PackedMatrix::from_qtensor(&QTensor::quantize(&t, q).unwrap()).unwrap().unwrap();
                let e = p.dequantize();
                let w = Int8Blocks::from_packed(&p);
                assert_eq!(w.stored_bytes(), p.stored_bytes() + if q == GgmlDType::Q4_1 { 4 } else { 2 } * rows * (padded(cols / 32) - cols / 32));
                for n in 1..=8usize {
                    let x = values(n * cols, 30 + n as u64);
                    let xq = Int8Vectors::new(&x, cols);
                    let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
                    w.rows_times(0..rows, xq.slice(0, n), &mut a, n);
                    w.portable_rows_times(0..rows, xq.slice(0, n), &mut b, n);
                    for j in 0..n {
                        for r in 0..rows {
                            let want: f64 = (0..cols).map(|c| e[r * cols + c] as f64 * x[j * cols + c] as f64).sum();
                            let size: f64 = (0..cols).map(|c| (e[r * cols + c] as f64 * x[j * cols + c] as f64).abs()).sum();
                            let (got, port) = (a[r * n + j] as f64, b[r * n + j] as f64);
                            assert!((got - want).abs() < 0.01 * size, "{q:?} n={n} ({j}, {r}): {got} vs {want} (Σ|wx| {size})");
                            assert!((got - port).abs() < 1e-4 * (1.0 + port.abs()), "{q:?}: simd {got} vs portable {port}");
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    {
                        // The AVX-512 kernels (every n, also the Q8_0 n = 1 that rows_times
                        // leaves to AVX2): the same integer sums; Q8_0 for n ≤ 4 also summed in
                        // the AVX2 kernel's order (even and odd blocks apart), so the same bits.
                        let mut c = vec![0f32; rows * n];
                        if avx512::run_for_test(&w, 0..rows, xq.slice(0, n), &mut c, n) {
                            let mut d = vec![0f32; rows * n];
                            // SAFETY: run_for_test found AVX-512, so AVX2/FMA/F16C are present too.
                            unsafe { avx2::rows_times(&w, 0..rows, xq.slice(0, n), &mut d, n) };
                            for (got, avx2) in c.iter().zip(&d) {
                                if n <= 4 && q == GgmlDType::Q8_0 {
                                    assert_eq!(got.to_bits(), avx2.to_bits(), "{q:?} n={n}: AVX-512 {got} vs AVX2 {avx2}");
                                } else {
                                    assert!((got - avx2).abs() < 1e-4 * (1.0 + avx2.abs()), "{q:?} n={n}: AVX-512 {got} vs AVX2 {avx2}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
