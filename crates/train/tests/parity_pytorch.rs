//! Parity with PyTorch + transformers + PEFT on the tiny random Llama of tests/fixtures/tiny-llama
//! (regenerate with `python3 scripts/make_fixtures.py`): logits, loss, every LoRA gradient and
//! the parameters after 3 AdamW steps.
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use lowrank_models::weights::read_safetensors;
use lowrank_models::{load_model, Llama, PlainHook};
use lowrank_peft::{load_lora, LoraSite};
use lowrank_train::optim::{collect_grads, AdamW, AdamWParams};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    fixture_dir("tiny-llama")
}

fn golden() -> BTreeMap<String, Tensor> {
    read_golden(&fixtures().join("golden.safetensors"))
}

#[test]
fn base_logits_match_transformers() {
    let g = golden();
    let m = load_model(&fixtures().join("hf"), &Device::Cpu, DType::F32).unwrap();
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap();
    let mask = &g["attention_mask"];
    let logits = model.forward(&g["input_ids"], Some(mask), false).unwrap();
    let (d, scale) = max_diff_masked(&logits, &g["base.logits"], &rows_i64(mask));
    println!("base logits: max |diff| = {d:e} (max |logit| = {scale})");
    assert!(d <= 1e-4 * scale.max(1.0), "base logits differ by {d}");
}

#[test]
fn qwen2_logits_match_transformers() {
    let g = golden();
    let m = load_model(&fixtures().join("hf-qwen2"), &Device::Cpu, DType::F32).unwrap();
    assert!(m.config.as_llama().unwrap().attention_bias && !m.config.tie_word_embeddings());
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap();
    let mask = &g["attention_mask"];
    let logits = model.forward(&g["input_ids"], Some(mask), false).unwrap();
    let (d, scale) = max_diff_masked(&logits, &g["qwen2.logits"], &rows_i64(mask));
    println!("qwen2 logits: max |diff| = {d:e}");
    assert!(d <= 1e-4 * scale.max(1.0), "qwen2 logits differ by {d}");
}

fn check_adapter(dir: &str, prefix: &str) {
    let g = golden();
    let dev = Device::Cpu;
    let m = load_model(&fixtures().join("hf"), &dev, DType::F32).unwrap();
    let loaded = load_lora(&fixtures().join(dir), &lowrank_models::model_layout(&m.config).unwrap(), &dev).unwrap();
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &loaded.adapters, dropout: 0.0 }, &dev).unwrap();
    let mask = &g["attention_mask"];
    let logits = model.forward(&g["input_ids"], Some(mask), false).unwrap();
    let (d, scale) = max_diff_masked(&logits, &g[&format!("{prefix}.logits")], &rows_i64(mask));
    println!("{prefix} logits: max |diff| = {d:e}");
    assert!(d <= 1e-4 * scale.max(1.0), "{prefix} logits differ by {d}");
    let labels = rows_i64(&g["labels"]);
    let (sum, n) = model.loss_sum(&g["input_ids"], Some(mask), &labels, 0.0, false).unwrap();
    let loss = sum.to_scalar::<f32>().unwrap() / n as f32;
    let want = g[&format!("{prefix}.loss")].to_vec1::<f32>().unwrap()[0];
    println!("{prefix} loss: ours {loss} torch {want}");
    assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0));
}

#[test]
fn peft_written_adapter_reproduces_peft_logits_and_loss() {
    check_adapter("peft-adapter", "peft");
}

#[test]
fn rslora_adapter_reproduces_peft_logits_and_loss() {
    check_adapter("peft-adapter-rslora", "rslora");
}

/// The tiny Llama with the PEFT-written adapter of the fixtures (no dropout).
fn model_with_peft_adapter() -> (Llama, lowrank_peft::LoraAdapters) {
    let dev = Device::Cpu;
    let m = load_model(&fixtures().join("hf"), &dev, DType::F32).unwrap();
    let adapters = load_lora(&fixtures().join("peft-adapter"), &lowrank_models::model_layout(&m.config).unwrap(), &dev).unwrap().adapters;
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.0 }, &dev).unwrap();
    (model, adapters)
}

#[test]
fn lora_gradients_and_three_adamw_steps_match_pytorch() {
    let g = golden();
    let (model, adapters) = model_with_peft_adapter();
    let mask = &g["attention_mask"];
    let labels = rows_i64(&g["labels"]);
    let vars: Vec<(String, candle_core::Var)> =
        adapters.named_vars().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v)).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }).unwrap();
    let want_losses = g["step_losses"].to_vec1::<f32>().unwrap();
    let mut worst_grad = 0f32;
    for step in 0..3 {
        let (sum, n) = model.loss_sum(&g["input_ids"], Some(mask), &labels, 0.0, true).unwrap();
        let loss = (sum / n as f64).unwrap();
        let lv = loss.to_scalar::<f32>().unwrap();
        println!("step {step}: loss ours {lv} torch {}", want_losses[step]);
        assert!((lv - want_losses[step]).abs() <= 1e-4 * want_losses[step].abs());
        let store = loss.backward().unwrap();
        let grads = collect_grads(&vars, &store);
        if step == 0 {
            for ((name, _), grad) in vars.iter().zip(&grads) {
                let want = &g[&format!("grad.{name}")];
                let got = grad.as_ref().unwrap_or_else(|| panic!("no gradient for {name}"));
                let d = max_abs_diff(got, want);
                let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                worst_grad = worst_grad.max(d / scale.max(1e-6));
                assert!(d <= 1e-4 * scale.max(1e-3), "gradient of {name} differs by {d} (scale {scale})");
            }
            println!("LoRA gradients: worst relative diff {worst_grad:e}");
        }
        opt.step(&grads, 1e-2).unwrap();
    }
    let mut worst = 0f32;
    for (name, var) in &vars {
        let want = &g[&format!("step3.{name}")];
        let d = max_abs_diff(var.as_tensor(), want);
        worst = worst.max(d);
        assert!(d <= 1e-4, "{name} after 3 AdamW steps differs by {d}");
    }
    println!("parameters after 3 AdamW steps: max |diff| = {worst:e}");
}

/// With the frozen products in bf16 (AVX512-BF16, as `dtype = "bf16"` trains on such a CPU), the
/// loss and every LoRA gradient stay within bf16 rounding of PyTorch's f32 values, and differ from
/// our own f32 ones (the bf16 path did run). Skipped on a CPU without AVX512-BF16.
#[test]
fn bf16_products_keep_loss_and_lora_gradients_near_pytorch_f32() {
    use lowrank_models::ops::bf16_gemm::set_bf16_products;
    let g = golden();
    let (model, adapters) = model_with_peft_adapter();
    // The golden batch 8 times over: products of at least BF16_MIN_ROWS rows take the bf16 path,
    // and the mean loss and its gradients are those of the batch itself.
    let copies = 8;
    let repeat = |t: &Tensor| Tensor::cat(&vec![t; copies], 0).unwrap();
    let (ids, mask) = (repeat(&g["input_ids"]), repeat(&g["attention_mask"]));
    assert!(ids.elem_count() >= lowrank_models::ops::bf16_gemm::BF16_MIN_ROWS);
    let labels = rows_i64(&repeat(&g["labels"]));
    let vars: Vec<(String, candle_core::Var)> =
        adapters.named_vars().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v)).collect();
    let loss_and_grads = || {
        let (sum, n) = model.loss_sum(&ids, Some(&mask), &labels, 0.0, true).unwrap();
        let loss = (sum / n as f64).unwrap();
        let grads = collect_grads(&vars, &loss.backward().unwrap());
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (f32_loss, f32_grads) = loss_and_grads();
    if !set_bf16_products(true) {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let (loss, grads) = loss_and_grads();
    set_bf16_products(false);
    let want = g["step_losses"].to_vec1::<f32>().unwrap()[0];
    println!("loss: bf16 products {loss}, f32 {f32_loss}, torch f32 {want}");
    assert!((loss - want).abs() <= 1e-2 * want.abs(), "bf16 loss {loss} vs torch {want}");
    assert!(loss != f32_loss, "the bf16 products did not change the loss: did they run?");
    let mut worst = 0f32;
    for (((name, _), grad), f32_grad) in vars.iter().zip(&grads).zip(&f32_grads) {
        let want = &g[&format!("grad.{name}")];
        let got = grad.as_ref().unwrap_or_else(|| panic!("no gradient for {name}"));
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let d = max_abs_diff(got, want);
        worst = worst.max(d / scale.max(1e-6));
        assert!(d <= 5e-2 * scale.max(1e-3), "bf16 gradient of {name} differs from torch's f32 by {d} (scale {scale})");
        assert!(max_abs_diff(got, f32_grad.as_ref().unwrap()) > 0.0, "{name}: bf16 and f32 gradients are identical");
    }
    println!("LoRA gradients with bf16 products: worst relative diff {worst:e}");
}

/// Our adapter, as committed in tests/fixtures/tiny-llama/ours-adapter with the logits we compute
/// with it. `python3 scripts/make_fixtures.py --check-ours tests/fixtures/tiny-llama/ours-adapter`
/// shows that Python PEFT loads it and reproduces those logits. `LOWRANK_WRITE_FIXTURES=1`
/// rewrites it.
#[test]
fn our_adapter_fixture_reproduces_its_recorded_logits() {
    use lowrank_peft::{LoraAdapters, LoraConfig, TargetSpec};
    let g = golden();
    let dev = Device::Cpu;
    let dir = fixtures().join("ours-adapter");
    let m = load_model(&fixtures().join("hf"), &dev, DType::F32).unwrap();
    if std::env::var("LOWRANK_WRITE_FIXTURES").is_ok() {
        let cfg = LoraConfig { r: 4, alpha: 16.0, targets: TargetSpec::Pattern("all-linear".into()), init_seed: 11, ..Default::default() };
        let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &dev).unwrap();
        let mut rng = lowrank_models::generate::SplitMix64(5);
        for module in adapters.modules.values() {
            let n = module.b.elem_count();
            let v: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect();
            module.b.set(&Tensor::from_vec(v, module.b.dims(), &dev).unwrap()).unwrap();
        }
        lowrank_peft::save_adapter(&dir, &adapters, &lowrank_peft::AdapterInfo::new("tests/fixtures/tiny-llama/hf", "CAUSAL_LM", false)).unwrap();
        let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.0 }, &dev).unwrap();
        let logits = model.forward(&g["input_ids"], Some(&g["attention_mask"]), false).unwrap();
        let mut t = BTreeMap::new();
        t.insert("logits".to_string(), logits);
        lowrank_models::weights::write_safetensors(&dir.join("logits.safetensors"), &t, None).unwrap();
    }
    let loaded = load_lora(&dir, &lowrank_models::model_layout(&m.config).unwrap(), &dev).unwrap();
    assert_eq!(loaded.adapters.modules.len(), 14);
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &loaded.adapters, dropout: 0.0 }, &dev).unwrap();
    let logits = model.forward(&g["input_ids"], Some(&g["attention_mask"]), false).unwrap();
    let recorded = read_safetensors(&dir.join("logits.safetensors"), &dev, None).unwrap();
    let d = max_abs_diff(&logits, &recorded["logits"]);
    assert!(d < 1e-5, "{d}");
}
