//! Attention of one head of a new position over the cached keys and values of its row, for the
//! CPU decoder: grouped-query heads read their key/value head in place (no repeated K/V). The
//! cache keeps each key/value head's positions contiguous, so a head streams its keys and values
//! in order.
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

/// [`dot`] of `q` with four vectors at once (four independent chains of sums), each summed in
/// the same order as [`dot`].
#[inline(always)]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let whole = q.len() / 8 * 8;
    let k = k.map(|v| &v[..q.len()]);
    for c in (0..whole).step_by(8) {
        let qc = &q[c..c + 8];
        for (a, v) in acc.iter_mut().zip(&k) {
            let vc = &v[c..c + 8];
            for l in 0..8 {
                a[l] += qc[l] * vc[l];
            }
        }
    }
    let mut out = [0f32; 4];
    for ((o, a), v) in out.iter_mut().zip(&acc).zip(&k) {
        let tail: f32 = q[whole..].iter().zip(&v[whole..]).map(|(x, y)| x * y).sum();
        *o = a.iter().sum::<f32>() + tail;
    }
    out
}

/// `out[..W] += Σ_i w_i · values[p_i · hd + at ..][..W]`, the W sums kept in registers.
#[inline(always)]
fn weighted_sum<const W: usize>(weights: &[f32], visible: &[usize], values: &[f32], hd: usize, at: usize, inv: f32, out: &mut [f32]) {
    let mut acc = [0f32; W];
    acc.copy_from_slice(&out[at..at + W]);
    for (s, &p) in weights.iter().zip(visible) {
        let w = s * inv;
        let v = &values[p * hd + at..p * hd + at + W];
        for l in 0..W {
            acc[l] += w * v[l];
        }
    }
    out[at..at + W].copy_from_slice(&acc);
}

simd_versions! {
    /// One head: `q: (hd)` over the `visible` positions of its key/value head, `keys`, `values:
    /// (positions, hd)`; adds the result into `out: (hd)` (left as it is when nothing is
    /// visible). `scores` is scratch.
    pub fn attend_head(q: &[f32], keys: &[f32], values: &[f32], visible: &[usize], scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) -> () {
        let hd = q.len();
        if visible.is_empty() || hd == 0 {
            return;
        }
        scores.clear();
        scores.resize(visible.len(), 0.0);
        let key = |p: usize| &keys[p * hd..(p + 1) * hd];
        let mut quads = visible.chunks_exact(4);
        for (s, ps) in scores.chunks_exact_mut(4).zip(&mut quads) {
            let d = dot4(q, [key(ps[0]), key(ps[1]), key(ps[2]), key(ps[3])]);
            for (o, v) in s.iter_mut().zip(d) {
                *o = v * scale;
            }
        }
        let done = visible.len() / 4 * 4;
        for (s, &p) in scores[done..].iter_mut().zip(quads.remainder()) {
            *s = dot(q, key(p)) * scale;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = exp_nonpositive(*s - max);
            sum += *s;
        }
        let inv = 1.0 / sum;
        let mut at = 0;
        while at + 32 <= hd {
            weighted_sum::<32>(scores, visible, values, hd, at, inv, out);
            at += 32;
        }
        while at + 8 <= hd {
            weighted_sum::<8>(scores, visible, values, hd, at, inv, out);
            at += 8;
        }
        while at < hd {
            weighted_sum::<1>(scores, visible, values, hd, at, inv, out);
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 softmax for 4 heads over 2 kv heads, positions 0, 2, 3, 5, 6, 7 of 8
    /// visible (a group of four and a remainder), head sizes 16, 44 (8- and 1-wide tails) and 64.
    #[test]
    fn attention_matches_an_f64_softmax() {
        for hd in [16usize, 44, 64] {
            let (heads, kvh, positions) = (4usize, 2usize, 8usize);
            let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * k).sin()).collect() };
            let q = v(heads * hd, 0.37);
            // (kv head, position, hd)
            let (keys, values) = (v(kvh * positions * hd, 0.11), v(kvh * positions * hd, 0.23));
            let visible = [0usize, 2, 3, 5, 6, 7];
            let mut out = vec![0f32; heads * hd];
            let per_head = positions * hd;
            for h in 0..heads {
                let g = h / 2;
                let (k, vv) = (&keys[g * per_head..(g + 1) * per_head], &values[g * per_head..(g + 1) * per_head]);
                attend_head(&q[h * hd..(h + 1) * hd], k, vv, &visible, 0.25, &mut Vec::new(), &mut out[h * hd..(h + 1) * hd]);
            }
            for h in 0..heads {
                let g = h / 2;
                let at = |p: usize, i: usize| g * per_head + p * hd + i;
                let s: Vec<f64> = visible.iter().map(|&p| (0..hd).map(|i| q[h * hd + i] as f64 * keys[at(p, i)] as f64).sum::<f64>() * 0.25).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    let want: f64 = visible.iter().zip(&e).map(|(&p, w)| w / z * values[at(p, i)] as f64).sum();
                    assert!((out[h * hd + i] as f64 - want).abs() < 1e-5, "hd {hd} head {h} dim {i}");
                }
            }
        }
    }

    /// Four at a time sums in the same order as one at a time.
    #[test]
    fn dot4_equals_dot() {
        let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * k).cos()).collect() };
        for n in [8usize, 13, 64] {
            let q = v(n, 0.3);
            let ks: Vec<Vec<f32>> = (0..4).map(|i| v(n, 0.1 + i as f32 * 0.07)).collect();
            let d = dot4(&q, [&ks[0], &ks[1], &ks[2], &ks[3]]);
            for i in 0..4 {
                assert_eq!(d[i], dot(&q, &ks[i]));
            }
        }
    }
}
