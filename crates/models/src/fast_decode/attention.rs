//! Attention of one head of a new position over the cached keys and values of its row, for the
//! CPU decoder: grouped-query heads read their key/value head in place (no repeated K/V).
use super::elementwise::exp_nonpositive;
use crate::ops::cpu_util::simd_versions;

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
    /// One head: `q: (hd)` over the `visible` positions of `keys`, `values: (positions, kv_heads ·
    /// hd)`, reading kv head `kv_head`; adds the result into `out: (hd)` (left as it is when
    /// nothing is visible). `scores` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_head(q: &[f32], kv_head: usize, keys: &[f32], values: &[f32], visible: &[usize], kv_heads: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) -> () {
        let hd = q.len();
        if visible.is_empty() || kv_head >= kv_heads {
            return;
        }
        let kvd = kv_heads * hd;
        let at = kv_head * hd;
        scores.clear();
        scores.resize(visible.len(), 0.0);
        let mut max = f32::NEG_INFINITY;
        for (s, &p) in scores.iter_mut().zip(visible) {
            *s = dot(q, &keys[p * kvd + at..p * kvd + at + hd]) * scale;
            max = max.max(*s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = exp_nonpositive(*s - max);
            sum += *s;
        }
        let inv = 1.0 / sum;
        for (s, &p) in scores.iter().zip(visible) {
            let w = s * inv;
            for (ov, &vv) in out.iter_mut().zip(&values[p * kvd + at..p * kvd + at + hd]) {
                *ov += w * vv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 softmax for 4 heads over 2 kv heads, positions 0, 2, 3 of 4 visible.
    #[test]
    fn attention_matches_an_f64_softmax() {
        let (heads, kvh, hd) = (4usize, 2usize, 16usize);
        let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * k).sin()).collect() };
        let (q, keys, values) = (v(heads * hd, 0.37), v(4 * kvh * hd, 0.11), v(4 * kvh * hd, 0.23));
        let visible = [0usize, 2, 3];
        let mut out = vec![0f32; heads * hd];
        for h in 0..heads {
            attend_head(&q[h * hd..(h + 1) * hd], h / 2, &keys, &values, &visible, kvh, 0.25, &mut Vec::new(), &mut out[h * hd..(h + 1) * hd]);
        }
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
