//! `exp` for the element-wise passes of the fused ops (softmax, log-sum-exp, sigmoid), written so
//! the compiler turns a loop over it into SIMD code: no call into libm per element, no branches.
//!
//! Cephes' single-precision scheme: `e^x = 2^n · e^r` with `n = round(x·log2 e)`, `r = x − n·ln 2`
//! (ln 2 split in two for an exact reduction) and a degree-7 polynomial for `e^r` on
//! `|r| ≤ ln2/2`. Relative error below 3e-7 over the clamped range `[-87, 88]` (test
//! `fast_exp_matches_std` in this file); inputs below −87 give about 1.6e-38 instead of a smaller
//! number or zero, inputs above 88 give e^88. Every caller feeds it `x − max ≤ 0` or a sigmoid
//! argument, where that clamp changes nothing a float sum can see.
//!
//! The slice functions are compiled twice: once for AVX2 + FMA (chosen at run time when the CPU
//! has them) and once for the baseline target.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const MIN_ARG: f32 = -87.0;
const MAX_ARG: f32 = 88.0;

/// `e^x`, branch-free (see the module comment for range and accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_ARG, MAX_ARG);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e_r = p * r2 + r + 1.0;
    // 2^n from the exponent bits: n is in [-126, 127] after the clamp.
    let two_n = f32::from_bits((((n as i32) + 127) as u32) << 23);
    e_r * two_n
}

/// `1 / (1 + e^(−x))`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

use super::cpu_util::simd_versions;

simd_versions! {
    /// `out[i] = e^(x[i]·scale − shift)`, returning `Σ out[i]` (summed in eight lanes).
    pub fn exp_scaled_shifted_into(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let n = x.len().min(out.len());
        let (x, out) = (&x[..n], &mut out[..n]);
        let mut xc = x.chunks_exact(8);
        let mut oc = out.chunks_exact_mut(8);
        for (xs, os) in (&mut xc).zip(&mut oc) {
            for j in 0..8 {
                let e = exp(xs[j] * scale - shift);
                os[j] = e;
                lanes[j] += e;
            }
        }
        let mut tail = 0f32;
        for (xv, o) in xc.remainder().iter().zip(oc.into_remainder()) {
            let e = exp(xv * scale - shift);
            *o = e;
            tail += e;
        }
        lanes.iter().sum::<f32>() + tail
    }
}

simd_versions! {
    /// In place: `x[i] = (e^(x[i] − shift) − sub) · mul`.
    pub fn exp_shifted_affine_inplace(x: &mut [f32], shift: f32, sub: f32, mul: f32) -> () {
        for v in x.iter_mut() {
            *v = (exp(*v - shift) - sub) * mul;
        }
    }
}

simd_versions! {
    /// `Σ e^(x[i] − shift)` (summed in eight lanes), writing nothing.
    pub fn exp_shifted_sum(x: &[f32], shift: f32) -> f32 {
        let mut lanes = [0f32; 8];
        let mut xc = x.chunks_exact(8);
        for xs in &mut xc {
            for j in 0..8 {
                lanes[j] += exp(xs[j] - shift);
            }
        }
        let tail: f32 = xc.remainder().iter().map(|&v| exp(v - shift)).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

simd_versions! {
    /// The largest value of `x` (−∞ for an empty slice), in eight lanes.
    pub fn max_of(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut xc = x.chunks_exact(8);
        for xs in &mut xc {
            for j in 0..8 {
                lanes[j] = lanes[j].max(xs[j]);
            }
        }
        let tail = xc.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        lanes.iter().copied().fold(tail, f32::max)
    }
}

simd_versions! {
    /// `out = silu(gate) ⊙ up`: `gate, up, out: (n)`.
    pub fn swiglu_into(gate: &[f32], up: &[f32], out: &mut [f32]) -> () {
        for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
            *o = a * sigmoid(a) * b;
        }
    }
}

simd_versions! {
    /// Both input gradients of `silu(gate) ⊙ up` for the output gradient `g`:
    /// `d gate = g ⊙ up ⊙ σ(a)(1 + a(1 − σ(a)))`, `d up = g ⊙ silu(a)`.
    pub fn swiglu_grad_into(gate: &[f32], up: &[f32], g: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) -> () {
        let n = gate.len().min(up.len()).min(g.len()).min(d_gate.len()).min(d_up.len());
        for i in 0..n {
            let (a, u, gv) = (gate[i], up[i], g[i]);
            let s = sigmoid(a);
            d_gate[i] = gv * u * s * (1.0 + a * (1.0 - s));
            d_up[i] = gv * a * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        // Clamped ends: no infinities, no NaN, nothing negative.
        assert!(exp(-1e30).is_finite() && exp(-1e30) > 0.0 && exp(-1e30) < 2e-38);
        assert!(exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(1e30).is_finite());
    }

    #[test]
    fn slice_versions_match_the_scalar_one() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 37) % 200) as f32 * 0.1 - 10.0).collect();
        let mut out = vec![0f32; x.len()];
        let sum = exp_scaled_shifted_into(&x, 1.0, 3.0, &mut out);
        let want: f64 = x.iter().map(|&v| ((v - 3.0) as f64).exp()).sum();
        assert!(((sum as f64 - want) / want).abs() < 1e-5);
        for (o, &v) in out.iter().zip(&x) {
            assert!(((*o as f64 - ((v - 3.0) as f64).exp()) / ((v - 3.0) as f64).exp()).abs() < 3e-7);
        }
        assert!(((exp_shifted_sum(&x, 3.0) - sum) / sum).abs() < 1e-6);
        assert_eq!(max_of(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
        let up: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
        let mut y = vec![0f32; x.len()];
        swiglu_into(&x, &up, &mut y);
        for i in 0..x.len() {
            let a = x[i] as f64;
            let want = a / (1.0 + (-a).exp()) * up[i] as f64;
            assert!((y[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "swiglu {i}: {} vs {want}", y[i]);
        }
    }
}
