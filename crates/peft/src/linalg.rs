//! The dense linear algebra LoRA's initialisations need, in f64 on the CPU: an orthonormal basis
//! of columns (modified Gram–Schmidt, twice), the leading singular triplets of a matrix (subspace
//! iteration with oversampling, run to convergence), and the leading part of a QR factorisation.
//! Matrices are row-major `Vec<f64>` with their sizes alongside. Results are unique up to the
//! sign of each component, which cancels in the products LoRA uses (`B·A`).
use lowrank_models::generate::SplitMix64;

/// `c (m, n) = a (m, k) · b (k, n)`.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            if aip == 0.0 {
                continue;
            }
            let (row, brow) = (&mut c[i * n..(i + 1) * n], &b[p * n..(p + 1) * n]);
            for (cv, bv) in row.iter_mut().zip(brow) {
                *cv += aip * bv;
            }
        }
    }
    c
}

/// `aᵀ (n, m)` of `a (m, n)`.
fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

/// Orthonormalises the `k` columns of `y (m, k)` in place (modified Gram–Schmidt, two passes);
/// a column that vanishes is left zero.
pub fn orthonormalize(y: &mut [f64], m: usize, k: usize) {
    for _ in 0..2 {
        for j in 0..k {
            for p in 0..j {
                let dot: f64 = (0..m).map(|i| y[i * k + j] * y[i * k + p]).sum();
                for i in 0..m {
                    y[i * k + j] -= dot * y[i * k + p];
                }
            }
            let norm = (0..m).map(|i| y[i * k + j] * y[i * k + j]).sum::<f64>().sqrt();
            let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            for i in 0..m {
                y[i * k + j] *= inv;
            }
        }
    }
}

/// Eigenvalues and eigenvectors of the symmetric `a (k, k)` (cyclic Jacobi): `(values, vectors
/// as columns of a (k, k) row-major matrix)`.
fn symmetric_eigen(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..k).flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * k + j] * a[i * k + j]).sum();
        let diag: f64 = (0..k).map(|i| a[i * k + i] * a[i * k + i]).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|i| a[i * k + i]).collect(), v)
}

/// The `r` leading singular triplets of `w (m, n)`: `(u (m, r), s (r), vt (r, n))`, singular
/// values descending, with `w ≈ u · diag(s) · vt` on its leading part. Subspace iteration on a
/// block of `r + 10` vectors from a fixed start, until the leading singular values agree to
/// 1e-13 between iterations.
pub fn top_svd(w: &[f64], m: usize, n: usize, r: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = (r + 10).min(m.min(n));
    let mut rng = SplitMix64(0x5eed_5eed);
    let omega: Vec<f64> = (0..n * k).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
    let mut q = matmul(w, &omega, m, n, k);
    orthonormalize(&mut q, m, k);
    let (mut u, mut s, mut vt) = (vec![], vec![], vec![]);
    for _ in 0..5000 {
        // Z = orth(Wᵀ Q), Q = orth(W Z): one step of subspace iteration on W Wᵀ.
        let qt = transpose(&q, m, k);
        let mut z = transpose(&matmul(&qt, w, k, m, n), k, n); // (n, k) = (Qᵀ W)ᵀ
        orthonormalize(&mut z, n, k);
        q = matmul(w, &z, m, n, k);
        orthonormalize(&mut q, m, k);
        // Rayleigh–Ritz: B = Qᵀ W (k, n), B Bᵀ = U_b Λ U_bᵀ, sorted descending.
        let b = matmul(&transpose(&q, m, k), w, k, m, n);
        let bbt = matmul(&b, &transpose(&b, k, n), k, n, k);
        let (vals, vecs) = symmetric_eigen(&bbt, k);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]));
        s = order.iter().take(r).map(|&i| vals[i].max(0.0).sqrt()).collect();
        // U = Q · U_b[:, :r]; Vt = diag(1/s) · U_b[:, :r]ᵀ · B.
        let ub: Vec<f64> = (0..k).flat_map(|row| order.iter().take(r).map(move |&c| (row, c))).map(|(row, c)| vecs[row * k + c]).collect();
        u = matmul(&q, &ub, m, k, r);
        vt = matmul(&transpose(&ub, k, r), &b, r, k, n);
        for (i, si) in s.iter().enumerate() {
            let inv = if *si > 1e-300 { 1.0 / si } else { 0.0 };
            vt[i * n..(i + 1) * n].iter_mut().for_each(|x| *x *= inv);
        }
        // Converged when every triplet holds: ‖W vᵢ − sᵢ uᵢ‖ ≤ 1e-12 · s₀.
        let wv = matmul(w, &transpose(&vt, r, n), m, n, r);
        let worst = (0..r).map(|i| (0..m).map(|row| (wv[row * r + i] - s[i] * u[row * r + i]).powi(2)).sum::<f64>().sqrt()).fold(0.0, f64::max);
        if worst <= 1e-12 * s[0].max(1e-300) {
            break;
        }
    }
    (u, s, vt)
}

/// The leading `r` columns of Q and rows of R of `w (m, n) = Q R` (thin QR): `(q_r (m, r),
/// r_r (r, n))` with `r_r = q_rᵀ w`.
pub fn leading_qr(w: &[f64], m: usize, n: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    let r = r.min(m).min(n);
    let mut q: Vec<f64> = (0..m).flat_map(|i| (0..r).map(move |j| (i, j))).map(|(i, j)| w[i * n + j]).collect();
    orthonormalize(&mut q, m, r);
    let rr = matmul(&transpose(&q, m, r), w, r, m, n);
    (q, rr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Vec<f64> {
        let mut g = SplitMix64(seed);
        (0..m * n).map(|_| g.next_f64() - 0.5).collect()
    }

    #[test]
    fn leading_singular_triplets_reconstruct_and_are_orthonormal() {
        let (m, n, r) = (30, 20, 4);
        let w = random(m, n, 1);
        let (u, s, vt) = top_svd(&w, m, n, r);
        assert!(s.windows(2).all(|p| p[0] >= p[1]));
        // Each triplet: W vᵢ = sᵢ uᵢ.
        for i in 0..r {
            let v: Vec<f64> = vt[i * n..(i + 1) * n].to_vec();
            let wv = matmul(&w, &v, m, n, 1);
            for row in 0..m {
                assert!((wv[row] - s[i] * u[row * r + i]).abs() < 1e-10, "triplet {i}");
            }
        }
        // The largest singular value equals the power method's.
        let mut x = vec![1.0; n];
        for _ in 0..2000 {
            let y = matmul(&transpose(&w, m, n), &matmul(&w, &x, m, n, 1), n, m, 1);
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            x = y.iter().map(|v| v / norm).collect();
        }
        let s0 = matmul(&w, &x, m, n, 1).iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((s0 - s[0]).abs() < 1e-10, "{s0} vs {}", s[0]);
    }

    #[test]
    fn leading_qr_gives_the_first_columns_back() {
        let (m, n, r) = (12, 9, 3);
        let w = random(m, n, 2);
        let (q, rr) = leading_qr(&w, m, n, r);
        let qr = matmul(&q, &rr, m, r, n);
        // Q_r R_r equals W on its first r columns (they span Q_r).
        for i in 0..m {
            for j in 0..r {
                assert!((qr[i * n + j] - w[i * n + j]).abs() < 1e-12);
            }
        }
    }
}
