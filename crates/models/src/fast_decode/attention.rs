//! Attention of one new position over the cached keys and values of its row, for the CPU
//! decoder: grouped-query heads read their key/value head in place (no repeated K/V).
use crate::ops::cpu_util::simd_versions;

/// `e^x` for `x ≤ 0` (scores less their maximum), in plain arithmetic that vectorises: Cephes'
/// polynomial on `x − n·ln 2`, times `2^n` built from its bits; within 2.5 ulp of `f32::exp`,
/// and `e^−87` (1.6e-38) below −87.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E - 0.5) as i32; // rounds to nearest (x ≤ 0)
    let nf = n as f32;
    let r = x - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// `Σ a·b` in 8 running sums (which vectorise).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

simd_versions! {
    /// `q: (heads · hd)` over the `visible` positions of `keys`, `values: (positions, kv_heads ·
    /// hd)`, head `h` reading kv head `h / (heads / kv_heads)`; adds the result into `out:
    /// (heads · hd)` (left as it is when nothing is visible). `scores` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(q: &[f32], keys: &[f32], values: &[f32], visible: &[usize], heads: usize, kv_heads: usize, hd: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) -> () {
        if visible.is_empty() || kv_heads == 0 || heads % kv_heads != 0 {
            return;
        }
        let heads_kv = kv_heads;
        let kvd = heads_kv * hd;
        let group = heads / heads_kv;
        scores.clear();
        scores.resize(visible.len(), 0.0);
        for h in 0..heads {
            let g = h / group;
            let qh = &q[h * hd..(h + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for (s, &p) in scores.iter_mut().zip(visible) {
                *s = dot(qh, &keys[p * kvd + g * hd..p * kvd + (g + 1) * hd]) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = exp_nonpositive(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            let o = &mut out[h * hd..(h + 1) * hd];
            for (s, &p) in scores.iter().zip(visible) {
                let w = s * inv;
                for (ov, &vv) in o.iter_mut().zip(&values[p * kvd + g * hd..p * kvd + (g + 1) * hd]) {
                    *ov += w * vv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_two_ulp() {
        let mut x = 0f32;
        while x > -90.0 {
            let (a, b) = (exp_nonpositive(x), x.exp());
            assert!((a - b).abs() <= 2.5 * f32::EPSILON * b.max(f32::MIN_POSITIVE) || (x < -87.0 && a <= 1.01 * (-87f32).exp()), "{x}: {a} vs {b}");
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// Against an f64 softmax for 4 heads over 2 kv heads, positions 0, 2, 3 of 4 visible.
    #[test]
    fn attention_matches_an_f64_softmax() {
        let (heads, kvh, hd) = (4usize, 2usize, 16usize);
        let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * k).sin()).collect() };
        let (q, keys, values) = (v(heads * hd, 0.37), v(4 * kvh * hd, 0.11), v(4 * kvh * hd, 0.23));
        let visible = [0usize, 2, 3];
        let mut out = vec![0f32; heads * hd];
        attend(&q, &keys, &values, &visible, heads, kvh, hd, 0.25, &mut Vec::new(), &mut out);
        for h in 0..heads {
            let g = h / 2;
            let s: Vec<f64> = visible.iter().map(|&p| (0..hd).map(|i| q[h * hd + i] as f64 * keys[p * kvh * hd + g * hd + i] as f64).sum::<f64>() * 0.25).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..hd {
                let want: f64 = visible.iter().zip(&e).map(|(&p, w)| w / z * values[p * kvh * hd + g * hd + i] as f64).sum();
                assert!((out[h * hd + i] as f64 - want).abs() < 1e-5, "head {h} dim {i}");
            }
        }
    }
}
