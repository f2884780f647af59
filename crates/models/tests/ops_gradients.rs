//! Every custom op against the plain differentiable composition (values and gradients) and
//! against central finite differences.
use candle_core::{Device, Tensor, Var};
use lowrank_models::ops::{cross_entropy_sum, frozen_matmul, reference_cross_entropy_sum, IGNORE_INDEX};
#[path = "../../train/tests/common/mod.rs"]
mod common;
use common::rand;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Central differences of a scalar function at every element of `x`.
fn finite_diff(x: &Tensor, h: f64, f: &dyn Fn(&Tensor) -> f64) -> Tensor {
    let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let g: Vec<f64> = (0..v.len())
        .map(|i| {
            let mut p = v.clone();
            p[i] += h;
            let mut m = v.clone();
            m[i] -= h;
            let tp = Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(m, x.shape(), &Device::Cpu).unwrap();
            (f(&tp) - f(&tm)) / (2.0 * h)
        })
        .collect();
    Tensor::from_vec(g, x.shape(), &Device::Cpu).unwrap()
}

#[test]
fn frozen_matmul_matches_matmul_and_finite_differences() {
    let w = rand(&[5, 4], 1);
    let x0 = rand(&[2, 3, 4], 2);
    let probe = rand(&[2, 3, 5], 3);
    let x = Var::from_tensor(&x0).unwrap();
    let y = frozen_matmul(x.as_tensor(), &w).unwrap();
    let y_ref = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
    assert!(max_diff(&y, &y_ref) < 1e-12);
    let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap();
    let grads_ref = (y_ref * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(max_diff(gx, grads_ref.get(x.as_tensor()).unwrap()) < 1e-12);
    let fd = finite_diff(&x0, 1e-6, &|t| (frozen_matmul(t, &w).unwrap() * &probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap());
    let d = max_diff(gx, &fd);
    println!("frozen matmul: grad vs finite differences max |diff| = {d:e}");
    assert!(d < 1e-6);
    // The frozen weight gets no gradient.
    assert!(grads.get(&w).is_none());
}

#[test]
fn fused_cross_entropy_matches_log_softmax_gather_and_finite_differences() {
    for smoothing in [0.0f32, 0.1] {
        let z0 = rand(&[4, 7], 11);
        let targets = vec![3, IGNORE_INDEX, 0, 6];
        let z = Var::from_tensor(&z0).unwrap();
        let fused = cross_entropy_sum(z.as_tensor(), &targets, smoothing).unwrap();
        let plain = reference_cross_entropy_sum(z.as_tensor(), &targets, smoothing).unwrap();
        let (a, b) = (fused.to_scalar::<f64>().unwrap(), plain.to_scalar::<f64>().unwrap());
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let g_fused = fused.affine(0.5, 0.0).unwrap().backward().unwrap();
        let g_plain = plain.affine(0.5, 0.0).unwrap().backward().unwrap();
        let (gf, gp) = (g_fused.get(z.as_tensor()).unwrap(), g_plain.get(z.as_tensor()).unwrap());
        assert!(max_diff(gf, gp) < 1e-6, "smoothing {smoothing}");
        // The fused op computes in f32: a larger step keeps rounding out of the difference.
        let fd = finite_diff(&z0, 1e-2, &|t| 0.5 * cross_entropy_sum(t, &targets, smoothing).unwrap().to_scalar::<f64>().unwrap());
        let d = max_diff(gf, &fd);
        println!("fused cross-entropy (eps {smoothing}): grad vs finite differences max |diff| = {d:e}");
        assert!(d < 5e-4);
        // The ignored row gets exactly zero gradient.
        assert_eq!(gf.get(1).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
    }
}

#[test]
fn cross_entropy_rejects_out_of_range_targets() {
    let z = rand(&[2, 3], 5).to_dtype(candle_core::DType::F32).unwrap();
    let err = cross_entropy_sum(&z, &[1, 3], 0.0).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// Values and gradients (w.r.t. `x`, through a random probe) of `fused` vs `plain`, in f32.
fn compare_f32(name: &str, x0: &Tensor, fused: &dyn Fn(&Tensor) -> Tensor, plain: &dyn Fn(&Tensor) -> Tensor) {
    let x0 = x0.to_dtype(candle_core::DType::F32).unwrap();
    let x = Var::from_tensor(&x0).unwrap();
    let (yf, yp) = (fused(x.as_tensor()), plain(x.as_tensor()));
    let probe = rand(yf.dims(), 99).to_dtype(candle_core::DType::F32).unwrap();
    let dv = (&yf - &yp).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let gf = (yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gp = (yp * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let dg = (gf.get(x.as_tensor()).unwrap() - gp.get(x.as_tensor()).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    println!("{name}: values max |diff| {dv:e}, gradients max |diff| {dg:e}");
    assert!(dv < 1e-5 && dg < 1e-5, "{name}: {dv} {dg}");
    // And against central finite differences of the fused op itself (f32: a larger step).
    let x64 = x0.to_dtype(candle_core::DType::F64).unwrap();
    let probe64 = probe.to_dtype(candle_core::DType::F64).unwrap();
    let fd = finite_diff(&x64, 1e-2, &|t| {
        let y = fused(&t.to_dtype(candle_core::DType::F32).unwrap()).to_dtype(candle_core::DType::F64).unwrap();
        (y * &probe64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    });
    let g = gf.get(x.as_tensor()).unwrap().to_dtype(candle_core::DType::F64).unwrap();
    let scale = fd.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1.0);
    let dfd = max_diff(&g, &fd) / scale;
    println!("{name}: gradient vs finite differences, max relative |diff| {dfd:e}");
    assert!(dfd < 5e-3, "{name}: finite differences differ by {dfd}");
}

#[test]
fn fused_rms_norm_matches_composition() {
    let w = (rand(&[8], 4) + 1.0).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let x = rand(&[2, 3, 8], 5);
    compare_f32("rms_norm", &x, &|t| lowrank_models::ops::rms_norm::rms_norm(t, &w, 1e-5).unwrap(), &|t| lowrank_models::ops::norms::rms_norm(t, &w, 1e-5).unwrap());
}

#[test]
fn fused_swiglu_matches_composition() {
    let up = rand(&[2, 3, 16], 6).to_dtype(candle_core::DType::F32).unwrap();
    let x = (rand(&[2, 3, 16], 7) * 4.0).unwrap();
    compare_f32("swiglu(gate)", &x, &|t| lowrank_models::ops::swiglu::swiglu(t, &up).unwrap(), &|t| (t.silu().unwrap() * &up).unwrap());
    let gate = x.to_dtype(candle_core::DType::F32).unwrap();
    compare_f32("swiglu(up)", &up, &|t| lowrank_models::ops::swiglu::swiglu(&gate, t).unwrap(), &|t| (gate.silu().unwrap() * t).unwrap());
}

/// SwiGLU followed by a frozen down projection, dense and packed (Q8_0), against the composition
/// SwiGLU → frozen matmul over the same values: through gate and through up.
#[test]
fn fused_swiglu_down_matches_composition() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use lowrank_models::ops::frozen_linear::frozen_weight_matmul;
    use lowrank_models::ops::swiglu::{swiglu, swiglu_down};
    use lowrank_models::packed_matrix::PackedMatrix;
    use lowrank_models::FrozenWeight;
    use std::sync::Arc;
    let f32t = |t: Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    let dense = f32t(rand(&[5, 32], 21));
    let packed = PackedMatrix::from_qtensor(&QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap()).unwrap().unwrap();
    let up = f32t(rand(&[2, 3, 32], 22));
    let gate = f32t((rand(&[2, 3, 32], 23) * 4.0).unwrap());
    for (kind, w) in [("dense", FrozenWeight::Dense(dense.clone())), ("packed", FrozenWeight::Packed(Arc::new(packed)))] {
        compare_f32(&format!("swiglu_down {kind} (gate)"), &gate, &|t| swiglu_down(t, &up, &w).unwrap(), &|t| frozen_weight_matmul(&swiglu(t, &up).unwrap(), &w).unwrap());
        compare_f32(&format!("swiglu_down {kind} (up)"), &up, &|t| swiglu_down(&gate, t, &w).unwrap(), &|t| frozen_weight_matmul(&swiglu(&gate, t).unwrap(), &w).unwrap());
    }
    let err = swiglu_down(&gate, &up, &FrozenWeight::Dense(f32t(rand(&[5, 16], 24)))).unwrap_err().to_string();
    assert!(err.contains("16"), "{err}");
}

/// `to_heads` (split into heads, rotary embedding on the way) and `from_heads` against reshape →
/// transpose → contiguous → rotate-half composition, values and gradients.
#[test]
fn fused_heads_layout_and_rope_match_composition() {
    use lowrank_models::ops::heads::{from_heads, to_heads};
    let (b, h, t, d) = (2, 3, 5, 8);
    let pos = Tensor::arange(0f32, t as f32, &Device::Cpu).unwrap().reshape((t, 1)).unwrap();
    let inv = Tensor::new(&[1f32, 0.1, 0.01, 0.001], &Device::Cpu).unwrap().reshape((1, d / 2)).unwrap();
    let f = pos.broadcast_mul(&inv).unwrap();
    let f = Tensor::cat(&[&f, &f], 1).unwrap();
    let (cos, sin) = (f.cos().unwrap(), f.sin().unwrap());
    let split = |v: &Tensor| v.reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let x = rand(&[b, t, h * d], 8);
    compare_f32("to_heads + rope", &x, &|v| to_heads(v, h, Some((&cos, &sin))).unwrap(), &|v| {
        lowrank_models::ops::norms::apply_rotary(&split(v), &cos, &sin).unwrap()
    });
    compare_f32("to_heads", &x, &|v| to_heads(v, h, None).unwrap(), &|v| split(v));
    let y = rand(&[b, h, t, d], 9);
    compare_f32("from_heads", &y, &|v| from_heads(v).unwrap(), &|v| v.transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap());
    // A width that does not split into the heads is an error, not a panic.
    assert!(to_heads(&x.to_dtype(candle_core::DType::F32).unwrap(), 5, None).is_err());
}

/// The attention core (grouped-query, K/V not repeated) against HF's recipe written out:
/// repeat_kv, scores, additive mask, softmax, weighted sum, heads back to tokens; values and
/// gradients through q, k and v, with padding, after cached positions, and not causal; and a
/// second backward over the same graph (probabilities recomputed) gives the same gradients.
#[test]
fn fused_attention_core_matches_repeat_kv_composition() {
    use lowrank_models::ops::attention_core::attention_core;
    use lowrank_models::ops::masked_softmax::AttentionMask;
    let f32t = |t: Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    let (b, h, kvh, d) = (2usize, 4usize, 2usize, 8usize);
    let keep = std::sync::Arc::new(vec![vec![1u8, 1, 1, 1, 1], vec![1, 1, 1, 0, 0]]);
    let cases = [
        ("causal, padded", AttentionMask { t_q: 5, offset: 0, key_keep: Some(keep), causal: true }, 5usize),
        ("causal, after 4 cached", AttentionMask { t_q: 3, offset: 4, key_keep: None, causal: true }, 7),
        ("not causal", AttentionMask { t_q: 5, offset: 0, key_keep: None, causal: false }, 5),
    ];
    for (name, mask, tk) in cases {
        let t = mask.t_q;
        let scale = 1.0 / (d as f64).sqrt();
        let reference = |q: &Tensor, k: &Tensor, v: &Tensor| -> Tensor {
            let rep = |x: &Tensor| x.unsqueeze(2).unwrap().broadcast_as((b, kvh, h / kvh, tk, d)).unwrap().reshape((b, h, tk, d)).unwrap();
            let scores = (q.matmul(&rep(k).t().unwrap()).unwrap() * scale).unwrap();
            let add = mask.additive(b, tk, &Device::Cpu).unwrap().reshape((b, 1, t, tk)).unwrap();
            let probs = lowrank_models::ops::norms::softmax_last(&scores.broadcast_add(&add).unwrap()).unwrap();
            probs.matmul(&rep(v)).unwrap().transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
        };
        let q0 = (rand(&[b, h, t, d], 31) * 2.0).unwrap();
        let k0 = (rand(&[b, kvh, tk, d], 32) * 2.0).unwrap();
        let v0 = rand(&[b, kvh, tk, d], 33);
        let (q, k, v) = (f32t(q0.clone()), f32t(k0.clone()), f32t(v0.clone()));
        compare_f32(&format!("attention core {name} (q)"), &q0, &|x| attention_core(x, &k, &v, &mask, scale).unwrap(), &|x| reference(x, &k, &v));
        compare_f32(&format!("attention core {name} (k)"), &k0, &|x| attention_core(&q, x, &v, &mask, scale).unwrap(), &|x| reference(&q, x, &v));
        compare_f32(&format!("attention core {name} (v)"), &v0, &|x| attention_core(&q, &k, x, &mask, scale).unwrap(), &|x| reference(&q, &k, x));
        let qv = Var::from_tensor(&q).unwrap();
        let y = attention_core(qv.as_tensor(), &k, &v, &mask, scale).unwrap();
        let probe = f32t(rand(y.dims(), 34));
        let loss = (y * &probe).unwrap().sum_all().unwrap();
        let first = loss.backward().unwrap().get(qv.as_tensor()).unwrap().clone();
        let second = loss.backward().unwrap().get(qv.as_tensor()).unwrap().clone();
        let diff = (first - second).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name}: a second backward differs by {diff}");
    }
    let bad = attention_core(&f32t(rand(&[1, 3, 2, 4], 35)), &f32t(rand(&[1, 2, 2, 4], 36)), &f32t(rand(&[1, 2, 2, 4], 37)), &cases_mask(), 1.0);
    assert!(bad.is_err(), "3 query heads over 2 kv heads must be an error");
}

fn cases_mask() -> lowrank_models::ops::masked_softmax::AttentionMask {
    lowrank_models::ops::masked_softmax::AttentionMask { t_q: 2, offset: 0, key_keep: None, causal: true }
}

#[test]
fn fused_masked_softmax_matches_composition() {
    use lowrank_models::ops::masked_softmax::{masked_softmax, AttentionMask};
    let keep = std::sync::Arc::new(vec![vec![1u8, 1, 1, 1], vec![1, 1, 0, 0]]);
    let mask = AttentionMask { t_q: 4, offset: 0, key_keep: Some(keep), causal: true };
    // (b=2, kv heads=3, g·t = 2·4, t_k = 4)
    let x = (rand(&[2, 3, 8, 4], 9) * 3.0).unwrap();
    compare_f32(
        "masked softmax",
        &x,
        &|v| masked_softmax(v, &mask, 0.5).unwrap(),
        &|v| {
            let add = mask.additive(2, 4, &Device::Cpu).unwrap();
            let s = (v * 0.5).unwrap().reshape((2, 3, 2, 4, 4)).unwrap().broadcast_add(&add).unwrap();
            lowrank_models::ops::norms::softmax_last(&s).unwrap().reshape((2, 3, 8, 4)).unwrap()
        },
    );
}

/// The no-padding path (one visible prefix per row, SIMD passes): causal from the start, causal
/// after cached positions, and not causal; rows longer than one SIMD chunk.
#[test]
fn fused_masked_softmax_without_padding_matches_composition() {
    use lowrank_models::ops::masked_softmax::{masked_softmax, AttentionMask};
    for (t_q, offset, causal) in [(19usize, 0usize, true), (5, 14, true), (19, 0, false)] {
        let t_k = t_q + offset;
        let mask = AttentionMask { t_q, offset, key_keep: None, causal };
        // (b=2, kv heads=2, g·t = 3·t_q, t_k)
        let x = (rand(&[2, 2, 3 * t_q, t_k], 10 + t_q as u64) * 4.0).unwrap();
        compare_f32(
            &format!("masked softmax, no padding (t_q {t_q}, offset {offset}, causal {causal})"),
            &x,
            &|v| masked_softmax(v, &mask, 0.125).unwrap(),
            &|v| {
                let add = mask.additive(2, t_k, &Device::Cpu).unwrap();
                let s = (v * 0.125).unwrap().reshape((2, 2, 3, t_q, t_k)).unwrap().broadcast_add(&add).unwrap();
                lowrank_models::ops::norms::softmax_last(&s).unwrap().reshape((2, 2, 3 * t_q, t_k)).unwrap()
            },
        );
    }
}

/// The fused head + cross-entropy against a frozen matmul followed by the log_softmax + gather
/// composition: loss and hidden-state gradient, with and without label smoothing, ignored rows,
/// a second backward over the same graph (the op then recomputes its logits), and finite differences.
#[test]
fn fused_head_cross_entropy_matches_matmul_then_cross_entropy() {
    use lowrank_models::ops::head_cross_entropy_sum;
    let f32_ = candle_core::DType::F32;
    let head = rand(&[11, 6], 21).to_dtype(f32_).unwrap();
    let h0 = (rand(&[5, 6], 22) * 2.0).unwrap().to_dtype(f32_).unwrap();
    let targets = vec![3, IGNORE_INDEX, 0, 10, 7];
    for smoothing in [0.0f32, 0.1] {
        let h = Var::from_tensor(&h0).unwrap();
        let fused = head_cross_entropy_sum(h.as_tensor(), &head, &targets, smoothing).unwrap();
        let plain = reference_cross_entropy_sum(&frozen_matmul(h.as_tensor(), &head).unwrap(), &targets, smoothing).unwrap();
        let (lf, lp) = (fused.to_scalar::<f32>().unwrap(), plain.to_scalar::<f32>().unwrap());
        println!("head cross-entropy (smoothing {smoothing}): loss {lf} vs {lp}");
        assert!((lf - lp).abs() < 1e-5 * lp.abs().max(1.0), "{lf} vs {lp}");
        let gp = plain.backward().unwrap().get(h.as_tensor()).unwrap().clone();
        let gf = fused.backward().unwrap().get(h.as_tensor()).unwrap().clone();
        let d = (&gf - &gp).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        println!("  gradient max |diff| {d:e}");
        assert!(d < 1e-5, "gradient differs by {d}");
        // The ignored row gets no gradient.
        let row1 = gf.get(1).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(row1, 0.0);
        // Again over the same graph: the saved logits were consumed, so the op recomputes them.
        let again = fused.backward().unwrap().get(h.as_tensor()).unwrap().clone();
        let d2 = (&again - &gf).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d2 < 1e-6, "second backward differs by {d2}");
        // A scaled loss scales the gradient.
        let scaled = (head_cross_entropy_sum(h.as_tensor(), &head, &targets, smoothing).unwrap() * 0.25).unwrap();
        let gs = scaled.backward().unwrap().get(h.as_tensor()).unwrap().clone();
        let d3 = (&gs - (&gf * 0.25).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d3 < 1e-6, "scaled gradient differs by {d3}");
        // Finite differences of the fused loss (in f32: a larger step).
        let fd = finite_diff(&h0.to_dtype(candle_core::DType::F64).unwrap(), 1e-2, &|t| {
            head_cross_entropy_sum(&t.to_dtype(f32_).unwrap(), &head, &targets, smoothing).unwrap().to_scalar::<f32>().unwrap() as f64
        });
        let dfd = max_diff(&gf.to_dtype(candle_core::DType::F64).unwrap(), &fd);
        println!("  gradient vs finite differences max |diff| {dfd:e}");
        assert!(dfd < 2e-3, "finite differences differ by {dfd}");
    }
    // Shapes that do not fit are errors naming both.
    let wrong = head_cross_entropy_sum(&h0.narrow(1, 0, 5).unwrap(), &head, &targets, 0.0).unwrap_err().to_string();
    assert!(wrong.contains("(11, 6)"), "{wrong}");
    let few = head_cross_entropy_sum(&h0, &head, &targets[..3], 0.0).unwrap_err().to_string();
    assert!(few.contains("3 targets for 5 rows"), "{few}");
}

#[test]
fn fused_rms_norm_gives_a_trainable_weight_its_gradient() {
    // Gradient trap: the fused op keeps its weight inside and returns only dx; a trainable
    // weight (LN tuning) must still get dw, equal to the composition's.
    let x0 = rand(&[2, 3, 8], 41).to_dtype(candle_core::DType::F32).unwrap();
    let w0 = rand(&[8], 42).affine(0.5, 1.0).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let probe = rand(&[2, 3, 8], 43).to_dtype(candle_core::DType::F32).unwrap();
    let run = |fused: bool| {
        let (x, w) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap());
        let y = if fused {
            lowrank_models::ops::rms_norm::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap()
        } else {
            lowrank_models::ops::norms::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap()
        };
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        (g.get(x.as_tensor()).expect("dx").clone(), g.get(w.as_tensor()).expect("a trainable norm weight got no gradient").clone())
    };
    let ((dx, dw), (dx_ref, dw_ref)) = (run(true), run(false));
    let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    let (a, b) = (max_diff(&f64s(&dx), &f64s(&dx_ref)), max_diff(&f64s(&dw), &f64s(&dw_ref)));
    println!("rms-norm with a trainable weight: dx {a:e}, dw {b:e}");
    assert!(a < 1e-5 && b < 1e-5 && dw.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}
