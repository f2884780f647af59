//! Element-wise pieces of the CPU decoder, written to vectorise: `exp` of non-positive values and
//! the SwiGLU product.
use crate::ops::cpu_util::simd_versions;

/// `e^x` for `x ≤ 0` (attention scores less their maximum, `−|g|` in SiLU), in plain arithmetic
/// that vectorises: Cephes' polynomial on `x − n·ln 2`, times `2^n` built from its bits; within
/// 2.5 ulp of `f32::exp`, and `e^−87` (1.6e-38) below −87.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E - 0.5) as i32; // rounds to nearest (x ≤ 0)
    let nf = n as f32;
    let r = x - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

simd_versions! {
    /// `silu(gate) · up` into `out` (all the same length), `silu(g) = g · σ(g)` with `σ` from
    /// `e^{−|g|}`, which never overflows.
    pub fn swiglu_into(gate: &[f32], up: &[f32], out: &mut [f32]) -> () {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            let e = exp_nonpositive(-g.abs());
            let sigmoid = if g >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
            *o = g * sigmoid * u;
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

    #[test]
    fn swiglu_matches_the_formula() {
        let gate: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) * 0.37).collect();
        let up: Vec<f32> = (0..300).map(|i| 1.0 + (i as f32 * 0.1).sin()).collect();
        let mut out = vec![0f32; 300];
        swiglu_into(&gate, &up, &mut out);
        for ((o, &g), &u) in out.iter().zip(&gate).zip(&up) {
            let want = (g as f64 / (1.0 + (-g as f64).exp())) * u as f64;
            assert!((*o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{g}: {o} vs {want}");
        }
    }
}
