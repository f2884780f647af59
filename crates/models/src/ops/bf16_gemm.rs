//! Frozen-weight products in bf16 on the CPU: `dst (m, n) (+)= alpha · lhs (m, k) · rhs`, both
//! operands rounded to bf16 (round to nearest even) and multiplied with AVX512-BF16's
//! `vdpbf16ps`, which adds products of bf16 pairs into f32 lanes. Activations, their gradients,
//! the adapters and the optimizer state stay f32; only these products are lowered, as PyTorch's
//! CPU autocast lowers `linear`. One instruction does twice the multiply-adds of an f32 FMA.
//!
//! Switched on per thread ([`set_bf16_products`]): the training loop runs its forward and backward
//! on the thread that switched it on, and every frozen product (the frozen linear layers, the
//! base product of a fused LoRA layer, SwiGLU-down, the output head with its cross-entropy)
//! consults [`bf16_products`]. On a CPU without AVX512-BF16 the switch stays off and the products
//! stay f32.
//!
//! Layout: `k` is taken in pairs. The left operand becomes rows of `k/2` u32 (two bf16 each, the
//! even index in the low half); the right operand panels of 64 columns, each a run of `k/2` rows
//! of 64 u32 (the pair `rhs[2i][j], rhs[2i+1][j]` in lane `j`). A 6 × 64 tile of the result is
//! 24 registers of 16 f32: per pair of `k`, four panel loads, six broadcasts of a left pair and 24
//! `vdpbf16ps`. An odd `k` is padded with a zero.
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Rows of the result a micro-kernel computes.
const MR: usize = 6;
/// Columns of the result a micro-kernel computes (four vectors of 16 f32).
const NR: usize = 64;
/// Fewer rows than this stay f32 even with bf16 products on: the right operand is converted and
/// packed for each product, which pays off only over many rows (by a rough count of instructions,
/// some tens; not tuned). A decoded token's single row would pay it for nothing.
pub const BF16_MIN_ROWS: usize = 64;
/// Pairs of `k` taken in one pass over the tiles: a 64-column panel block is then 256 KB
/// (within a core's L2) and a 6-row strip of the left operand 24 KB (within L1).
const KC: usize = 1024;

thread_local! {
    static BF16_PRODUCTS: Cell<bool> = const { Cell::new(false) };
}

/// Whether this CPU has the instructions the bf16 products use (AVX512-F, -BW and -BF16).
pub fn bf16_products_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Turns the bf16 products on or off for the calling thread; returns whether they are on now
/// (never on a CPU without AVX512-BF16).
pub fn set_bf16_products(on: bool) -> bool {
    let on = on && bf16_products_supported();
    BF16_PRODUCTS.with(|c| c.set(on));
    on
}

/// Whether frozen products on this thread are computed in bf16.
pub fn bf16_products() -> bool {
    BF16_PRODUCTS.with(|c| c.get())
}

/// `dst (m, n) = alpha · lhs (m, k) · rhs`, or `dst += …` when `accumulate`, where `rhs` is read
/// with strides `(cs, rs)`: element `(i, j)` of the right operand is `rhs[j·cs + i·rs]`. In f32
/// by the `gemm` crate unless [`bf16_products`] is on for this thread and `m` is at least
/// [`BF16_MIN_ROWS`].
///
/// Panics when a buffer is shorter than the shapes say (a caller's bug: the ops check shapes
/// before they get here).
#[allow(clippy::too_many_arguments)]
pub fn frozen_product_into(dst: &mut [f32], lhs: &[f32], rhs: &[f32], mnk: (usize, usize, usize), strides: (isize, isize), accumulate: bool, alpha: f32) {
    assert!(dst.len() >= mnk.0 * mnk.1, "frozen product: output of {} values for {:?}", dst.len(), mnk);
    // SAFETY: dst holds m · n values (checked just above); product_to checks the operands.
    unsafe { product_to(dst.as_mut_ptr(), lhs, rhs, mnk, strides, accumulate, alpha) }
}

/// [`frozen_product_into`] into a new `(m, n)` buffer (not zeroed first: every element is written).
pub fn frozen_product(lhs: &[f32], rhs: &[f32], mnk: (usize, usize, usize), strides: (isize, isize)) -> Vec<f32> {
    let len = mnk.0 * mnk.1;
    let mut dst: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: the buffer has room for m · n values; with accumulate = false both paths write each
    // of them before reading it, so the length is set only over written values.
    unsafe {
        product_to(dst.as_mut_ptr(), lhs, rhs, mnk, strides, false, 1.0);
        dst.set_len(len);
    }
    dst
}

/// The product into `dst`, which must have room for `m · n` values; the operands are checked.
#[allow(clippy::too_many_arguments)]
unsafe fn product_to(dst: *mut f32, lhs: &[f32], rhs: &[f32], (m, n, k): (usize, usize, usize), (cs, rs): (isize, isize), accumulate: bool, alpha: f32) {
    assert!(lhs.len() >= m * k, "frozen product: left operand of {} values for ({m}, {k})", lhs.len());
    assert!(cs >= 0 && rs >= 0, "frozen product: negative strides");
    let extent = if m * n * k == 0 { 0 } else { (n - 1) * cs as usize + (k - 1) * rs as usize + 1 };
    assert!(rhs.len() >= extent, "frozen product: right operand of {} values, the strides reach {extent}", rhs.len());
    if bf16_products() && m >= BF16_MIN_ROWS && n > 0 && k > 0 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: bf16_products() is only ever on where the CPU has AVX512-F/BW/BF16; the
            // sizes are checked above.
            bf16_product_into(dst, lhs, rhs, (m, n, k), (cs, rs), accumulate, alpha);
            return;
        }
    }
    // SAFETY: dst (m, n), lhs (m, k) row-major and rhs covering the strides' extent (checked
    // above); gemm writes each element of dst (reading it only when accumulate).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        accumulate,
        lhs.as_ptr(),
        1,
        k as isize,
        rhs.as_ptr(),
        cs,
        rs,
        1.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
    )
}

/// The bf16 bits of `x`, rounded to nearest even (what `vcvtneps2bf16` gives for normal values).
fn bf16_bits(x: f32) -> u32 {
    half::bf16::from_f32(x).to_bits() as u32
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::{bf16_bits, MR, NR};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `out[i] = (bf16(src[2i+1]) << 16) | bf16(src[2i])` for `out.len()` pairs; a missing last
    /// element of an odd `src` is zero.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pairs_of_row(src: &[f32], out: &mut [MaybeUninit<u32>]) {
        let full = (src.len() / 32).min(out.len() / 16);
        let to = out.as_mut_ptr().cast::<u32>();
        for c in 0..full {
            let lo = _mm512_loadu_ps(src.as_ptr().add(c * 32));
            let hi = _mm512_loadu_ps(src.as_ptr().add(c * 32 + 16));
            // cvtne2ps puts its second argument in the low half.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(to.add(c * 16) as *mut _, v);
        }
        for (i, o) in out.iter_mut().enumerate().skip(full * 16) {
            let a = src.get(2 * i).copied().unwrap_or(0.0);
            let b = src.get(2 * i + 1).copied().unwrap_or(0.0);
            o.write(bf16_bits(a) | (bf16_bits(b) << 16));
        }
    }

    /// A mask of the first `valid` of 16 lanes (all 16 when `valid ≥ 16`).
    #[inline]
    fn first_lanes(valid: usize) -> __mmask16 {
        if valid >= 16 { 0xFFFF } else { ((1u32 << valid) - 1) as __mmask16 }
    }

    /// 16 f32 at `p` (of which `valid` are real, the rest read as zero) as 16 bf16 widened to u32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn widened_bf16(p: *const f32, valid: usize) -> __m512i {
        let mask = first_lanes(valid);
        let v = _mm512_maskz_loadu_ps(mask, p);
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm512_cvtepu16_epi32(h)
    }

    /// One 64-column panel of a right operand stored `(k, n)` row-major (`rhs[i·n + j]`), pairs
    /// `p0 .. p0 + kc` of `k`: `panel[p·64 + j] = pair(rhs[2(p0+p)][c0 + j], rhs[2(p0+p)+1][c0 + j])`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn panel_from_rows(rhs: &[f32], (n, k): (usize, usize), c0: usize, (p0, kc): (usize, usize), panel: &mut [MaybeUninit<u32>]) {
        let width = (n - c0).min(NR);
        for p in 0..kc {
            let r0 = rhs.as_ptr().add(2 * (p0 + p) * n + c0);
            let has_r1 = 2 * (p0 + p) + 1 < k;
            for v in 0..NR / 16 {
                let valid = width.saturating_sub(v * 16).min(16);
                let out = panel.as_mut_ptr().add(p * NR + v * 16);
                if valid == 0 {
                    _mm512_storeu_si512(out as *mut _, _mm512_setzero_si512());
                    continue;
                }
                let lo = widened_bf16(r0.add(v * 16), valid);
                let hi = if has_r1 { widened_bf16(r0.add(n + v * 16), valid) } else { _mm512_setzero_si512() };
                _mm512_storeu_si512(out as *mut _, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    }

    /// One 64-column panel of a right operand stored `(n, k)` row-major (`rhs[j·k + i]`, a
    /// weight `W` used as `Wᵀ`), pairs `p0 .. p0 + kc` of `k`: lane `j` of pair row `p` is
    /// `pair(rhs[c0+j][2(p0+p)], rhs[c0+j][2(p0+p)+1])`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn panel_from_columns(rhs: &[f32], (n, k): (usize, usize), c0: usize, (p0, kc): (usize, usize), panel: &mut [MaybeUninit<u32>], row: &mut [MaybeUninit<u32>]) {
        let width = (n - c0).min(NR);
        for j in 0..NR {
            if j < width {
                let r = c0 + j;
                pairs_of_row(&rhs[r * k + 2 * p0..(r * k + 2 * (p0 + kc)).min((r + 1) * k)], &mut row[..kc]);
                for p in 0..kc {
                    // pairs_of_row wrote row[..kc].
                    panel.get_unchecked_mut(p * NR + j).write(row.get_unchecked(p).assume_init());
                }
            } else {
                for p in 0..kc {
                    panel.get_unchecked_mut(p * NR + j).write(0);
                }
            }
        }
    }

    /// A 6 × 64 tile: `acc = Σ_p a_r[p] · panel[p]` over `kc` pairs for the six left rows `a`,
    /// then `dst[r][c] = alpha · acc (+ dst[r][c] when load)` for the first `rows` rows and
    /// `cols` columns (`dst` row stride `ld`).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(a: [*const u32; MR], panel: *const u32, kc: usize, dst: *mut f32, ld: usize, rows: usize, cols: usize, load: bool, alpha: f32) {
        let mut acc = [_mm512_setzero_ps(); MR * 4];
        for p in 0..kc {
            let b = panel.add(p * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const _));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(32) as *const _));
            let b3: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(48) as *const _));
            for r in 0..MR {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a[r].add(p) as i32));
                acc[r * 4] = _mm512_dpbf16_ps(acc[r * 4], x, b0);
                acc[r * 4 + 1] = _mm512_dpbf16_ps(acc[r * 4 + 1], x, b1);
                acc[r * 4 + 2] = _mm512_dpbf16_ps(acc[r * 4 + 2], x, b2);
                acc[r * 4 + 3] = _mm512_dpbf16_ps(acc[r * 4 + 3], x, b3);
            }
        }
        let scale = _mm512_set1_ps(alpha);
        for r in 0..rows.min(MR) {
            for v in 0..4 {
                let valid = cols.saturating_sub(v * 16).min(16);
                if valid == 0 {
                    break;
                }
                let mask = first_lanes(valid);
                let out = dst.add(r * ld + v * 16);
                let mut y = _mm512_mul_ps(acc[r * 4 + v], scale);
                if load {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, out));
                }
                _mm512_mask_storeu_ps(out, mask, y);
            }
        }
    }
}

/// A pointer that may cross to the worker threads; each task writes a part no other task writes.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint tiles of the buffer; the caller waits for all of them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `len` values written in chunks of `chunk` by `write(chunk index, chunk)` on rayon's threads:
/// the buffer is not zeroed first (for the packed operands, a zero fill of a buffer about to be
/// overwritten cost ~2 % of a bf16 training step).
///
/// # Safety
/// `write` must write every value of the chunk it is given.
unsafe fn written_in_parallel(len: usize, chunk: usize, write: impl Fn(usize, &mut [MaybeUninit<u32>]) + Sync) -> Vec<u32> {
    let mut v: Vec<u32> = Vec::with_capacity(len);
    if len > 0 {
        v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| write(i, c));
    }
    // SAFETY: the capacity is at least `len`, and `write` initialised every one of the `len`
    // values (its contract).
    unsafe { v.set_len(len) };
    v
}

/// The bf16 path of [`frozen_product_into`].
///
/// # Safety
/// The CPU has AVX512-F, -BW and -BF16; `dst` has room for `m · n` values (read only when
/// `accumulate`), `lhs` holds `m · k` values and `rhs` every element the strides address.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_product_into(dst: *mut f32, lhs: &[f32], rhs: &[f32], (m, n, k): (usize, usize, usize), (cs, rs): (isize, isize), accumulate: bool, alpha: f32) {
    let k2 = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    // A zero row for the strip's rows past m.
    let zero_row = vec![0u32; KC.min(k2)];
    // Tasks: a panel and a run of 6-row strips. Few panels (a narrow result) split the rows
    // further so that both threads get work; many panels take all rows each (a panel is then
    // read once, the left operand from the caches).
    let strips = m.div_ceil(MR);
    let threads = rayon::current_num_threads().max(1);
    let chunks = (4 * threads).div_ceil(panels).clamp(1, strips);
    let strips_per_task = strips.div_ceil(chunks);
    let chunks = strips.div_ceil(strips_per_task);
    let out = SharedOut(dst);
    // Both operands are packed one pass of k at a time (a long k, as in the output head's
    // backward over the vocabulary, would otherwise hold both whole in bf16 at once).
    for k0 in (0..k2).step_by(KC) {
        let kc = KC.min(k2 - k0);
        // Elements 2·k0 .. 2·(k0 + kc) of a row of k (the last pass may end at an odd k).
        let span = |row: usize| row * k + 2 * k0..(row * k + 2 * (k0 + kc)).min((row + 1) * k);
        // The left operand as rows of kc pairs.
        let left = written_in_parallel(m * kc, kc, |i, out| kernels::pairs_of_row(&lhs[span(i)], out));
        // The right operand as 64-column panels of kc pairs.
        let packed = written_in_parallel(panels * kc * NR, kc * NR, |pi, panel| {
            let c0 = pi * NR;
            if (cs, rs) == (k as isize, 1) {
                let mut row = Vec::with_capacity(kc);
                kernels::panel_from_columns(rhs, (n, k), c0, (k0, kc), panel, &mut row.spare_capacity_mut()[..kc]);
            } else if (cs, rs) == (1, n as isize) {
                kernels::panel_from_rows(rhs, (n, k), c0, (k0, kc), panel);
            } else {
                let at = |i: usize, j: usize| if i < k && j < n { rhs[(j as isize * cs + i as isize * rs) as usize] } else { 0.0 };
                for p in 0..kc {
                    for j in 0..NR {
                        panel[p * NR + j].write(bf16_bits(at(2 * (k0 + p), c0 + j)) | (bf16_bits(at(2 * (k0 + p) + 1, c0 + j)) << 16));
                    }
                }
            }
        });
        let load = accumulate || k0 > 0;
        (0..panels * chunks).into_par_iter().for_each(|task| {
            let out = out;
            let (pi, ci) = (task / chunks, task % chunks);
            let c0 = pi * NR;
            let panel = packed[pi * kc * NR..].as_ptr();
            for s in ci * strips_per_task..((ci + 1) * strips_per_task).min(strips) {
                let r0 = s * MR;
                let a: [*const u32; MR] = std::array::from_fn(|r| if r0 + r < m { left[(r0 + r) * kc..].as_ptr() } else { zero_row.as_ptr() });
                // SAFETY: the tile's rows r0.. and columns c0.. lie inside dst (masked to m, n);
                // no other task writes them; the pointers read kc pairs inside left/packed.
                kernels::tile(a, panel, kc, out.0.add(r0 * n + c0), n, m - r0, n - c0, load, alpha);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast_decode::test_values as values;

    fn round(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f64()
    }

    /// The products against f64 sums of the bf16-rounded operands, for both weight layouts, odd
    /// `k`, ragged tiles, several passes over `k`, and accumulate/alpha.
    #[test]
    fn bf16_products_match_f64_sums_of_rounded_operands() {
        if !bf16_products_supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // The kernel directly: most of these shapes have fewer rows than BF16_MIN_ROWS.
        let product_into = |dst: &mut [f32], lhs: &[f32], rhs: &[f32], mnk, strides, accumulate, alpha| {
            // SAFETY: AVX512-F/BW/BF16 are present (checked above); the buffers have the sizes
            // the shapes and strides describe.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                bf16_product_into(dst.as_mut_ptr(), lhs, rhs, mnk, strides, accumulate, alpha)
            }
        };
        for &(m, n, k) in &[(1, 1, 1), (7, 70, 33), (13, 129, 64), (6, 64, 2), (20, 17, 2 * KC + 37), (70, 65, 40)] {
            let lhs = values(m * k, 1 + m as u64);
            // Rows of k + 3 values: the padded layout goes through the generic packing.
            let w = values(n * (k + 3), 2 + n as u64);
            let layouts = [("W (n, k) used as Wᵀ", (k as isize, 1)), ("(k, n) row-major", (1, n as isize)), ("padded rows", ((k + 3) as isize, 1))];
            for (layout, (cs, rs)) in layouts {
                let rhs_at = |i: usize, j: usize| w[j * cs as usize + i * rs as usize];
                let start = values(m * n, 9);
                let mut dst = start.clone();
                product_into(&mut dst, &lhs, &w, (m, n, k), (cs, rs), true, 0.5);
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact, mut size) = (0f64, 0f64);
                        for p in 0..k {
                            let t = round(lhs[i * k + p]) * round(rhs_at(p, j));
                            exact += t;
                            size += t.abs();
                        }
                        let expect = start[i * n + j] as f64 + 0.5 * exact;
                        let got = dst[i * n + j] as f64;
                        assert!((got - expect).abs() <= 1e-5 * (size + 1.0), "{layout} ({m}, {n}, {k}) at ({i}, {j}): {got} vs {expect}");
                    }
                }
                let (mut fresh, mut garbage) = (vec![0f32; m * n], vec![7f32; m * n]);
                product_into(&mut fresh, &lhs, &w, (m, n, k), (cs, rs), false, 1.0);
                product_into(&mut garbage, &lhs, &w, (m, n, k), (cs, rs), false, 1.0);
                assert_eq!(fresh, garbage, "{layout}: without accumulate the old contents must not matter");
            }
        }
    }

    #[test]
    fn switch_is_per_thread_and_off_by_default() {
        assert!(!bf16_products());
        let on = std::thread::spawn(|| set_bf16_products(true) && bf16_products()).join().unwrap();
        assert_eq!(on, bf16_products_supported());
        assert!(!bf16_products(), "another thread's switch leaked here");
    }

    /// Off, the product is the f32 gemm's; on, it differs from it only by bf16 rounding, and a
    /// product of fewer than BF16_MIN_ROWS rows stays the f32 one.
    #[test]
    fn on_and_off_give_f32_and_rounded_products() {
        let (m, n, k) = (BF16_MIN_ROWS + 3, 40, 50);
        let lhs = values(m * k, 3);
        let w = values(n * k, 4);
        set_bf16_products(false);
        let f32_product = frozen_product(&lhs, &w, (m, n, k), (k as isize, 1));
        let direct: Vec<f32> = (0..m * n).map(|t| (0..k).map(|p| lhs[(t / n) * k + p] * w[(t % n) * k + p]).sum()).collect();
        for (a, b) in f32_product.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        if set_bf16_products(true) {
            let bf16_product = frozen_product(&lhs, &w, (m, n, k), (k as isize, 1));
            let few_rows = frozen_product(&lhs[..(BF16_MIN_ROWS - 1) * k], &w, (BF16_MIN_ROWS - 1, n, k), (k as isize, 1));
            set_bf16_products(false);
            assert_eq!(few_rows[..], f32_product[..(BF16_MIN_ROWS - 1) * n], "a product of few rows left f32");
            let largest = f32_product.iter().zip(&bf16_product).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(largest > 0.0 && largest < 0.2, "bf16 rounding moved the products by {largest}");
        }
    }
}
