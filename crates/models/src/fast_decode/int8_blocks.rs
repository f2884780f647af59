//! Block-quantized weights laid out for products with 8-bit activations, as llama.cpp computes
//! them: per block of 32, `Σ w·x ≈ d_w · d_x · Σ q_w · q_x` (+ `m · Σx` for Q4_1, `−8·d_w · Σx`
//! for Q4_0) with the integer sums done 32 bytes at a time (AVX2 `maddubs`).
//!
//! The GGUF blocks (scales interleaved with the values) are split at load into the values of
//! every block, then the f16 scales (and Q4_1 offsets) of each row padded to groups of 8, so one
//! load gives 8 scales and the per-block scale products are vector operations: the same bytes
//! as the GGUF blocks, fewer instructions a block.
use crate::packed_matrix::{BlockFormat, PackedMatrix, BLOCK_LEN};

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
        assert!(rows.end <= self.rows && n <= 8 && x.q.len() == n * self.cols && x.scale.len() == n * pb && x.sum.len() == n * pb);
        assert!(rows.is_empty() || (rows.len() - 1) * stride + n <= out.len(), "output too short");
        #[cfg(target_arch = "x86_64")]
        {
            if super::weight_product::avx2_available() {
                // SAFETY: AVX2, FMA and F16C are present; every index the kernel forms stays
                // within the buffers whose lengths are asserted above.
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
        Self { cols, q, scale, sum }
    }

    /// Vectors `j0 .. j0 + n`.
    pub(crate) fn slice(&self, j0: usize, n: usize) -> Int8Slice<'_> {
        let pb = self.scale.len() / (self.q.len() / self.cols).max(1);
        Int8Slice { n, q: &self.q[j0 * self.cols..(j0 + n) * self.cols], scale: &self.scale[j0 * pb..(j0 + n) * pb], sum: &self.sum[j0 * pb..(j0 + n) * pb] }
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
    scale: &'a [f32],
    sum: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{padded, value_bytes, Int8Blocks, Int8Slice};
    use crate::fast_decode::weight_product::avx2::hsum;
    use crate::packed_matrix::{BlockFormat, BLOCK_LEN};
    use std::arch::x86_64::*;

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q8_0: u8 = 2;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_times(m: &Int8Blocks, rows: std::ops::Range<usize>, x: Int8Slice, out: &mut [f32], stride: usize) {
        macro_rules! go {
            ($f:expr) => {
                match x.n {
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

    /// Eight f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn eight_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
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
                }
            }
        }
    }
}
