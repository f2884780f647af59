//! `cargo bench -p lowrank-models --bench ops`: each fused op against the plain differentiable
//! composition it replaces, forward plus backward, at the shapes of a SmolLM2-135M training step
//! (batch 8 × 128 tokens, d 576, 9 query / 3 key-value heads of 64, MLP 1536, vocabulary 49,152).
//!
//! Prints one line per op and path: the median wall time of the forward alone and of forward plus
//! backward (through `Σ y ⊙ probe`, whose own cost both paths pay), over `REPEATS` timed runs after
//! a warm-up, with the fastest and slowest, and the speed-up of the fused op. Threads follow
//! `RAYON_NUM_THREADS`, and glibc's allocator gets the CLI's settings (no trimming, large blocks
//! from the heap), as in the trainer. A benchmark, not a test: nothing here asserts a time.
//! `LOWRANK_BENCH_REPEATS=N` changes the number of timed runs (default 7). The two `bf16` rows time
//! the same op with bf16 products switched on ("fused" column) and in f32 ("composition").
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor, Var};
use lowrank_models::generate::SplitMix64;
use lowrank_models::ops::{self, AttentionMask};
use lowrank_models::packed_matrix::PackedMatrix;
use lowrank_models::FrozenWeight;
use std::time::Instant;

const BATCH: usize = 8;
const SEQ: usize = 128;
const HIDDEN: usize = 576;
const MLP: usize = 1536;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 49_152;

type BenchResult = candle_core::Result<()>;

fn uniform(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let mut g = SplitMix64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (g.next_f64() * 2.0 - 1.0) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Median, fastest and slowest of `repeats` timed runs of `f` (after one warm-up run), in ms.
fn time_ms(repeats: usize, mut f: impl FnMut() -> BenchResult) -> candle_core::Result<(f64, f64, f64)> {
    f()?;
    let mut ms = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok((ms[ms.len() / 2], ms[0], ms[ms.len() - 1]))
}

/// Forward, then the backward of `Σ y ⊙ probe`, for one op on the given inputs.
fn fwd_bwd(inputs: &[&Var], probe: &Tensor, op: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>) -> BenchResult {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&xs)?;
    let grads = (y * probe)?.sum_all()?.backward()?;
    for x in &xs {
        std::hint::black_box(grads.get(x));
    }
    Ok(())
}

struct Case {
    name: &'static str,
    inputs: Vec<Var>,
    probe_shape: Vec<usize>,
    fused: Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>,
    composition: Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>,
    /// The "fused" column runs with bf16 products switched on (AVX512-BF16; the case is
    /// skipped on a CPU without it), the composition column is the same op in f32.
    bf16: bool,
}

fn cases() -> candle_core::Result<Vec<Case>> {
    let n = BATCH * SEQ;
    let var = |shape: &[usize], seed: u64| -> candle_core::Result<Var> { Var::from_tensor(&uniform(shape, seed)?) };
    // Rotary tables for positions 0..SEQ, Hugging Face's layout (t, d).
    let inv: Vec<f32> = (0..HEAD_DIM / 2).map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / HEAD_DIM as f32)).collect();
    let mut cos = Vec::with_capacity(SEQ * HEAD_DIM);
    let mut sin = Vec::with_capacity(SEQ * HEAD_DIM);
    for p in 0..SEQ {
        for j in 0..HEAD_DIM {
            let a = p as f32 * inv[j % (HEAD_DIM / 2)];
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (SEQ, HEAD_DIM), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (SEQ, HEAD_DIM), &Device::Cpu)?;
    let (cos2, sin2) = (cos.clone(), sin.clone());
    let norm_weight = uniform(&[HIDDEN], 3)?;
    let norm_weight2 = norm_weight.clone();
    let frozen = uniform(&[MLP, HIDDEN], 4)?;
    let frozen_var = Var::from_tensor(&frozen)?;
    let mut g = SplitMix64(5);
    let targets: Vec<i64> = (0..n).map(|_| (g.next_f64() * VOCAB as f64) as i64 % VOCAB as i64).collect();
    let targets2 = targets.clone();
    let mask = AttentionMask { t_q: SEQ, offset: 0, key_keep: None, causal: true };
    let mask2 = mask.clone();
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let group = HEADS / KV_HEADS;
    let (mask3, mask4) = (mask.clone(), mask.clone());
    let down = uniform(&[HIDDEN, MLP], 12)?;
    let down_dense = FrozenWeight::Dense(down.clone());
    let down_dense2 = down_dense.clone();
    let packed = PackedMatrix::from_qtensor(&QTensor::quantize(&frozen, GgmlDType::Q4_1)?)?
        .ok_or_else(|| candle_core::Error::Msg("Q4_1 not kept packed".into()))?;
    let expanded = packed.to_tensor(&Device::Cpu)?;
    let packed = FrozenWeight::Packed(std::sync::Arc::new(packed));
    let (packed2, packed3) = (packed.clone(), packed.clone());
    let head = uniform(&[VOCAB, HIDDEN], 19)?;
    let head2 = head.clone();
    let (targets3, targets4) = (targets.clone(), targets.clone());
    Ok(vec![
        Case {
            name: "rms_norm (1024, 576)",
            inputs: vec![var(&[BATCH, SEQ, HIDDEN], 1)?],
            probe_shape: vec![BATCH, SEQ, HIDDEN],
            fused: Box::new(move |x| ops::rms_norm::rms_norm(&x[0], &norm_weight, 1e-5)),
            bf16: false,
            composition: Box::new(move |x| ops::norms::rms_norm(&x[0], &norm_weight2, 1e-5)),
        },
        Case {
            name: "swiglu (1024, 1536)",
            inputs: vec![var(&[BATCH, SEQ, MLP], 6)?, var(&[BATCH, SEQ, MLP], 7)?],
            probe_shape: vec![BATCH, SEQ, MLP],
            fused: Box::new(|x| ops::swiglu::swiglu(&x[0], &x[1])),
            bf16: false,
            composition: Box::new(|x| x[0].silu()? * &x[1]),
        },
        Case {
            name: "to heads + rope (8, 128, 576)",
            inputs: vec![var(&[BATCH, SEQ, HEADS * HEAD_DIM], 8)?],
            probe_shape: vec![BATCH, HEADS, SEQ, HEAD_DIM],
            fused: Box::new(move |x| ops::heads::to_heads(&x[0], HEADS, Some((&cos, &sin)))),
            bf16: false,
            composition: Box::new(move |x| {
                let heads = x[0].reshape((BATCH, SEQ, HEADS, HEAD_DIM))?.transpose(1, 2)?.contiguous()?;
                ops::norms::apply_rotary(&heads, &cos2, &sin2)
            }),
        },
        Case {
            name: "causal softmax (8, 3, 384, 128)",
            inputs: vec![var(&[BATCH, KV_HEADS, group * SEQ, SEQ], 9)?],
            probe_shape: vec![BATCH, KV_HEADS, group * SEQ, SEQ],
            fused: Box::new(move |x| ops::masked_softmax(&x[0], &mask, scale)),
            bf16: false,
            composition: Box::new(move |x| {
                let add = mask2.additive(BATCH, SEQ, &Device::Cpu)?;
                let s = (&x[0] * scale)?.reshape((BATCH, KV_HEADS, group, SEQ, SEQ))?.broadcast_add(&add)?;
                ops::norms::softmax_last(&s)?.reshape((BATCH, KV_HEADS, group * SEQ, SEQ))
            }),
        },
        Case {
            name: "cross-entropy (1024, 49152)",
            inputs: vec![var(&[n, VOCAB], 10)?],
            probe_shape: vec![],
            fused: Box::new(move |x| ops::cross_entropy_sum(&x[0], &targets, 0.0)),
            bf16: false,
            composition: Box::new(move |x| ops::reference_cross_entropy_sum(&x[0], &targets2, 0.0)),
        },
        Case {
            name: "frozen linear (1024, 576)·(1536, 576)ᵀ",
            inputs: vec![var(&[BATCH, SEQ, HIDDEN], 11)?],
            probe_shape: vec![BATCH, SEQ, MLP],
            fused: Box::new(move |x| ops::frozen_matmul(&x[0], &frozen)),
            // candle's matmul differentiates both operands; the weight is a Var here as it is for
            // any tensor candle cannot tell is frozen.
            bf16: false,
            composition: Box::new(move |x| x[0].broadcast_matmul(&frozen_var.as_tensor().t()?)),
        },
        Case {
            // Not a fusion: the cost of keeping the weight packed (expanded for each product)
            // against the same values held in f32; below 1× is that cost.
            name: "frozen linear, Q4_1 packed vs f32",
            inputs: vec![var(&[BATCH, SEQ, HIDDEN], 13)?],
            probe_shape: vec![BATCH, SEQ, MLP],
            fused: Box::new(move |x| ops::frozen_weight_matmul(&x[0], &packed)),
            bf16: false,
            composition: Box::new(move |x| ops::frozen_matmul(&x[0], &expanded)),
        },
        Case {
            name: "frozen linear Q4_1, bf16 products vs f32",
            inputs: vec![var(&[BATCH, SEQ, HIDDEN], 13)?],
            probe_shape: vec![BATCH, SEQ, MLP],
            fused: Box::new(move |x| ops::frozen_weight_matmul(&x[0], &packed2)),
            bf16: true,
            composition: Box::new(move |x| ops::frozen_weight_matmul(&x[0], &packed3)),
        },
        Case {
            name: "head + cross-entropy, bf16 vs f32",
            inputs: vec![var(&[n, HIDDEN], 20)?],
            probe_shape: vec![],
            fused: Box::new(move |x| ops::head_cross_entropy_sum(&x[0], &head, &targets3, 0.0)),
            bf16: true,
            composition: Box::new(move |x| ops::head_cross_entropy_sum(&x[0], &head2, &targets4, 0.0)),
        },
        Case {
            name: "swiglu + frozen down (1024, 1536)→576",
            inputs: vec![var(&[BATCH, SEQ, MLP], 14)?, var(&[BATCH, SEQ, MLP], 15)?],
            probe_shape: vec![BATCH, SEQ, HIDDEN],
            fused: Box::new(move |x| ops::swiglu::swiglu_down(&x[0], &x[1], &down_dense)),
            bf16: false,
            composition: Box::new(move |x| ops::frozen_weight_matmul(&ops::swiglu::swiglu(&x[0], &x[1])?, &down_dense2)),
        },
        Case {
            // Against the previous path: matmul, the fused masked softmax, matmul, heads to tokens.
            name: "attention core (8, 9/3 heads, 128, 64)",
            inputs: vec![var(&[BATCH, HEADS, SEQ, HEAD_DIM], 16)?, var(&[BATCH, KV_HEADS, SEQ, HEAD_DIM], 17)?, var(&[BATCH, KV_HEADS, SEQ, HEAD_DIM], 18)?],
            probe_shape: vec![BATCH, SEQ, HEADS * HEAD_DIM],
            fused: Box::new(move |x| ops::attention_core::attention_core(&x[0], &x[1], &x[2], &mask3, scale)),
            bf16: false,
            composition: Box::new(move |x| {
                let q = x[0].reshape((BATCH, KV_HEADS, group * SEQ, HEAD_DIM))?;
                let probs = ops::masked_softmax(&q.matmul(&x[1].t()?)?, &mask4, scale)?;
                let ctx = probs.matmul(&x[2])?.reshape((BATCH, HEADS, SEQ, HEAD_DIM))?;
                ops::heads::from_heads(&ctx)
            }),
        },
    ])
}

fn main() -> candle_core::Result<()> {
    lowrank_models::allocator::tune_allocator();
    let repeats = std::env::var("LOWRANK_BENCH_REPEATS").ok().and_then(|s| s.parse().ok()).filter(|&r: &usize| r > 0).unwrap_or(7);
    println!(
        "f32, {} thread(s), median of {repeats} (fastest–slowest), ms; speed-up = composition / fused",
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<40} {:>22} {:>22} {:>7} {:>22} {:>22} {:>7}",
        "op", "forward: fused", "composition", "", "fwd + bwd: fused", "composition", ""
    );
    for case in cases()? {
        let probe = uniform(&case.probe_shape, 99)?;
        let inputs: Vec<&Var> = case.inputs.iter().collect();
        let xs: Vec<Tensor> = case.inputs.iter().map(|v| v.as_tensor().detach()).collect();
        if case.bf16 && !ops::bf16_gemm::set_bf16_products(true) {
            println!("{:<40} skipped: this CPU has no AVX512-BF16", case.name);
            continue;
        }
        let fused_fwd = time_ms(repeats, || (case.fused)(&xs).map(|y| drop(std::hint::black_box(y))))?;
        let fused = time_ms(repeats, || fwd_bwd(&inputs, &probe, &*case.fused))?;
        ops::bf16_gemm::set_bf16_products(false);
        let comp_fwd = time_ms(repeats, || (case.composition)(&xs).map(|y| drop(std::hint::black_box(y))))?;
        let comp = time_ms(repeats, || fwd_bwd(&inputs, &probe, &*case.composition))?;
        let cell = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} ({lo:.1}–{hi:.1})");
        println!(
            "{:<40} {:>22} {:>22} {:>6.1}× {:>22} {:>22} {:>6.1}×",
            case.name,
            cell(fused_fwd),
            cell(comp_fwd),
            comp_fwd.0 / fused_fwd.0,
            cell(fused),
            cell(comp),
            comp.0 / fused.0
        );
    }
    Ok(())
}
