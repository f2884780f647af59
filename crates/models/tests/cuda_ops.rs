//! The fused ops' CUDA kernels against the plain differentiable composition computed on the CPU
//! in f64: values and input gradients, in f32 and bf16. Built only with `--features cuda`; on a
//! machine without a GPU each test says so and passes without checking anything.
#![cfg(feature = "cuda")]
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::ops::{masked_softmax, reference_cross_entropy_sum, AttentionMask, IGNORE_INDEX};
use std::sync::Arc;
#[path = "../../train/tests/common/mod.rs"]
mod common;
use common::rand;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}): nothing checked");
            None
        }
    }
}

/// max |a − b| / max(1, max |b|), both brought to the CPU in f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    d / m.max(1.0)
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::BF16 { 3e-2 } else { 2e-5 }
}

/// Runs `op` on `inputs` moved to `dev` in `dtype` (as variables) and returns the output and the
/// input gradients of `sum(out · probe)`.
fn value_and_grads(op: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], probe: &Tensor, dev: &Device, dtype: DType) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = op(&ts);
    let p = probe.to_dtype(out.dtype()).unwrap().to_device(dev).unwrap();
    let grads = (&out * &p).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = vars.iter().map(|v| grads.get(v.as_tensor()).expect("an input got no gradient").clone()).collect();
    (out, gs)
}

fn check(name: &str, fused: &dyn Fn(&[Tensor]) -> Tensor, reference: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], probe: &Tensor) {
    let Some(dev) = gpu() else { return };
    let (want, want_g) = value_and_grads(reference, inputs, probe, &Device::Cpu, DType::F64);
    for dtype in [DType::F32, DType::BF16] {
        let (got, got_g) = value_and_grads(fused, inputs, probe, &dev, dtype);
        let dv = rel_diff(&got, &want);
        let dg = got_g.iter().zip(&want_g).map(|(a, b)| rel_diff(a, b)).fold(0.0, f64::max);
        println!("{name} {dtype:?}: value {dv:e}, gradients {dg:e}");
        assert!(dv < tolerance(dtype) && dg < tolerance(dtype), "{name} {dtype:?}: value {dv:e}, gradients {dg:e}");
    }
}

#[test]
fn rms_norm_kernel_matches_the_composition() {
    let w = rand(&[96], 2).affine(0.5, 1.0).unwrap();
    let (wf, wr) = (w.clone(), w.clone());
    check(
        "rms-norm",
        &move |t| lowrank_models::ops::rms_norm::rms_norm(&t[0], &wf.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap(), 1e-5).unwrap(),
        &move |t| lowrank_models::ops::norms::rms_norm(&t[0], &wr, 1e-5).unwrap(),
        &[rand(&[3, 5, 96], 1)],
        &rand(&[3, 5, 96], 3),
    );
}

#[test]
fn swiglu_kernel_matches_the_composition() {
    check(
        "swiglu",
        &|t| lowrank_models::ops::swiglu::swiglu(&t[0], &t[1]).unwrap(),
        &|t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        &[rand(&[3, 7, 101], 4).affine(3.0, 0.0).unwrap(), rand(&[3, 7, 101], 5)],
        &rand(&[3, 7, 101], 6),
    );
}

#[test]
fn masked_softmax_kernel_matches_the_composition() {
    // Two batch rows (the second with two padded keys), 2 kv groups of 3 stacked query heads,
    // 5 queries after 2 cached positions over 7 keys; causal and not.
    for causal in [true, false] {
        let mask = AttentionMask {
            t_q: 5,
            offset: 2,
            key_keep: Some(Arc::new(vec![vec![1; 7], vec![1, 1, 1, 1, 1, 0, 0]])),
            causal,
        };
        let (mf, mr) = (mask.clone(), mask.clone());
        check(
            &format!("masked-softmax causal={causal}"),
            &move |t| masked_softmax(&t[0], &mf, 0.35).unwrap(),
            &move |t| masked_softmax(&t[0], &mr, 0.35).unwrap(),
            &[rand(&[2, 2, 15, 7], 7).affine(4.0, 0.0).unwrap()],
            &rand(&[2, 2, 15, 7], 8),
        );
    }
    // A row with no visible key is uniform, as the composition's all-minimum mask makes it.
    let Some(dev) = gpu() else { return };
    let mask = AttentionMask { t_q: 1, offset: 0, key_keep: Some(Arc::new(vec![vec![0, 0, 0]])), causal: false };
    let x = rand(&[1, 1, 1, 3], 9).to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let y = masked_softmax(&x, &mask, 1.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(y.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6), "{y:?}");
}

#[test]
fn cross_entropy_kernel_matches_log_softmax_gather() {
    let Some(dev) = gpu() else { return };
    // More columns than a block has threads, an ignored row, label smoothing or not.
    let targets = vec![3, IGNORE_INDEX, 999, 0, 517];
    for smoothing in [0.0f32, 0.1] {
        let z0 = rand(&[5, 1000], 10).affine(6.0, 0.0).unwrap();
        let probe = Tensor::new(1.7f64, &Device::Cpu).unwrap();
        let (t1, t2) = (targets.clone(), targets.clone());
        let fused = move |t: &[Tensor]| lowrank_models::ops::cross_entropy_sum(&t[0], &t1, smoothing).unwrap();
        let reference = move |t: &[Tensor]| reference_cross_entropy_sum(&t[0], &t2, smoothing).unwrap();
        let (want, want_g) = value_and_grads(&reference, &[z0.clone()], &probe, &Device::Cpu, DType::F64);
        let (got, got_g) = value_and_grads(&fused, &[z0.clone()], &probe, &dev, DType::F32);
        let (dv, dg) = (rel_diff(&got, &want), rel_diff(&got_g[0], &want_g[0]));
        println!("cross-entropy smoothing={smoothing}: value {dv:e}, gradients {dg:e}");
        assert!(dv < 1e-5 && dg < 1e-5, "cross-entropy smoothing={smoothing}: value {dv:e}, gradients {dg:e}");
    }
    // A target outside the vocabulary is an error, not a read past the row.
    let z = rand(&[2, 10], 11).to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let e = lowrank_models::ops::cross_entropy_sum(&z, &[1, 10], 0.0).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn attention_core_on_the_gpu_matches_the_cpu() {
    let mask = AttentionMask { t_q: 6, offset: 0, key_keep: Some(Arc::new(vec![vec![1; 6], vec![0, 1, 1, 1, 1, 1]])), causal: true };
    let (mf, mr) = (mask.clone(), mask.clone());
    check(
        "attention core",
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mf, 0.25).unwrap(),
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mr, 0.25).unwrap(),
        &[rand(&[2, 4, 6, 8], 12), rand(&[2, 2, 6, 8], 13), rand(&[2, 2, 6, 8], 14)],
        &rand(&[2, 6, 32], 15),
    );
}

#[test]
fn heads_layout_kernel_matches_the_composition() {
    // (b, t, h·d) → (b, h, t, d) rotated by the rope tables, and back (no rope), both differentiated.
    // Hugging Face's tables repeat their frequencies in both halves (the op's contract: its
    // backward is the rotation by −θ).
    let f = rand(&[5, 4], 16).affine(3.0, 0.0).unwrap();
    let f = Tensor::cat(&[&f, &f], 1).unwrap();
    let (cos, sin) = (f.cos().unwrap(), f.sin().unwrap());
    let (c2, s2) = (cos.clone(), sin.clone());
    check(
        "to-heads with rope",
        &move |t| {
            let (c, s) = (c2.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap(), s2.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap());
            lowrank_models::ops::heads::to_heads(&t[0], 3, Some((&c, &s))).unwrap()
        },
        &move |t| lowrank_models::ops::heads::to_heads(&t[0], 3, Some((&cos, &sin))).unwrap(),
        &[rand(&[2, 5, 24], 18)],
        &rand(&[2, 3, 5, 8], 19),
    );
    check(
        "from-heads",
        &|t| lowrank_models::ops::heads::from_heads(&t[0]).unwrap(),
        &|t| lowrank_models::ops::heads::from_heads(&t[0]).unwrap(),
        &[rand(&[2, 3, 5, 8], 20)],
        &rand(&[2, 5, 24], 21),
    );
}

#[test]
fn frozen_matmul_on_the_gpu_matches_the_composition() {
    // cuBLAS against the weight in the forward and (transposed) in the backward; no weight gradient.
    let w = rand(&[40, 24], 22);
    let (wf, wr) = (w.clone(), w.clone());
    check(
        "frozen matmul",
        &move |t| lowrank_models::ops::frozen_matmul(&t[0], &wf.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap()).unwrap(),
        &move |t| t[0].broadcast_matmul(&wr.t().unwrap()).unwrap(),
        &[rand(&[3, 7, 24], 23)],
        &rand(&[3, 7, 40], 24),
    );
}

#[test]
fn swiglu_down_on_the_gpu_matches_the_composition() {
    let w = rand(&[24, 56], 25);
    let (wf, wr) = (w.clone(), w.clone());
    check(
        "swiglu-down",
        &move |t| {
            let down = lowrank_models::FrozenWeight::Dense(wf.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap());
            lowrank_models::ops::swiglu::swiglu_down(&t[0], &t[1], &down).unwrap()
        },
        &move |t| (t[0].silu().unwrap() * &t[1]).unwrap().broadcast_matmul(&wr.t().unwrap()).unwrap(),
        &[rand(&[2, 9, 56], 26).affine(3.0, 0.0).unwrap(), rand(&[2, 9, 56], 27)],
        &rand(&[2, 9, 24], 28),
    );
}

#[test]
fn head_cross_entropy_on_the_gpu_matches_the_composition_over_several_chunks() {
    let Some(dev) = gpu() else { return };
    // 2,100 rows of a 33,000-word vocabulary: the logits come in two chunks of rows (at most
    // 64 Mi at a time); ignored rows in both.
    let (n, d, vocab) = (2100usize, 16usize, 33_000usize);
    let head = rand(&[vocab, d], 29);
    let targets: Vec<i64> = (0..n).map(|i| if i % 7 == 3 { IGNORE_INDEX } else { ((i * 7919) % vocab) as i64 }).collect();
    for smoothing in [0.0f32, 0.1] {
        let probe = Tensor::new(0.37f64, &Device::Cpu).unwrap();
        let (hf, hr, t1, t2) = (head.clone(), head.clone(), targets.clone(), targets.clone());
        let fused = move |t: &[Tensor]| {
            let w = hf.to_dtype(t[0].dtype()).unwrap().to_device(t[0].device()).unwrap();
            lowrank_models::ops::head_cross_entropy_sum(&t[0], &w, &t1, smoothing).unwrap()
        };
        let reference = move |t: &[Tensor]| reference_cross_entropy_sum(&t[0].matmul(&hr.t().unwrap()).unwrap(), &t2, smoothing).unwrap();
        let x = rand(&[n, d], 30).affine(2.0, 0.0).unwrap();
        let (want, want_g) = value_and_grads(&reference, &[x.clone()], &probe, &Device::Cpu, DType::F64);
        for dtype in [DType::F32, DType::BF16] {
            let (got, got_g) = value_and_grads(&fused, &[x.clone()], &probe, &dev, dtype);
            let (dv, dg) = (rel_diff(&got, &want), rel_diff(&got_g[0], &want_g[0]));
            println!("head cross-entropy {dtype:?} smoothing={smoothing}: value {dv:e}, gradients {dg:e}");
            assert!(dv < tolerance(dtype) && dg < tolerance(dtype), "head cross-entropy {dtype:?} smoothing={smoothing}: value {dv:e}, gradients {dg:e}");
        }
    }
    // A target outside the vocabulary is an error naming it.
    let h = rand(&[2, d], 31).to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let w = head.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let e = lowrank_models::ops::head_cross_entropy_sum(&h, &w, &[1, vocab as i64], 0.0).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn attention_core_on_the_gpu_matches_the_cpu_at_a_larger_shape() {
    // 3 kv heads of 3 query heads (SmolLM2's grouping), 37 positions, padding on the left of
    // the second row, causal; and a non-causal call with cached keys (t_k > t).
    let keep = vec![vec![1u8; 37], (0..37).map(|i| u8::from(i >= 5)).collect()];
    let mask = AttentionMask { t_q: 37, offset: 0, key_keep: Some(Arc::new(keep)), causal: true };
    let (mf, mr) = (mask.clone(), mask.clone());
    check(
        "attention core 37 positions",
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mf, 0.125).unwrap(),
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mr, 0.125).unwrap(),
        &[rand(&[2, 9, 37, 16], 32), rand(&[2, 3, 37, 16], 33), rand(&[2, 3, 37, 16], 34)],
        &rand(&[2, 37, 144], 35),
    );
    let mask = AttentionMask { t_q: 4, offset: 6, key_keep: None, causal: false };
    let (mf, mr) = (mask.clone(), mask.clone());
    check(
        "attention core with cached keys",
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mf, 0.3).unwrap(),
        &move |t| lowrank_models::ops::attention_core::attention_core(&t[0], &t[1], &t[2], &mr, 0.3).unwrap(),
        &[rand(&[1, 4, 4, 8], 36), rand(&[1, 2, 10, 8], 37), rand(&[1, 2, 10, 8], 38)],
        &rand(&[1, 4, 32], 39),
    );
}
