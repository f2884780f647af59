//! LoRA parity of the T5 encoder–decoder with PyTorch + transformers + PEFT on the tiny random
//! models of tests/fixtures/tiny-t5 (`v1_0`: ReLU FFN, tied scaled head; `v1_1`: gated GELU,
//! separate lm_head; regenerate with `python3 scripts/make_fixtures_gpt2_t5.py`): logits and
//! losses (with and without label smoothing) with PEFT-written adapters, every LoRA gradient and
//! the parameters after 3 AdamW steps. The batch has a padded encoder row and a padded label row.
mod common;
use common::{max_abs, max_diff_labelled, rows_i64};
use candle_core::{DType, Device, Tensor};
use lowrank_models::t5::T5;
use lowrank_models::t5_config::T5Config;
use lowrank_models::weights::{load_hf_weights, read_safetensors, Weights};
use lowrank_models::ModelConfig;
use lowrank_peft::{load_lora, LoraSite};
use lowrank_train::optim::{collect_grads, AdamW, AdamWParams};
use std::collections::BTreeMap;
use std::path::PathBuf;

const VERSIONS: [&str; 2] = ["v1_0", "v1_1"];

fn fx(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-t5").join(version)
}

fn golden(version: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(&fx(version).join("golden.safetensors"), &Device::Cpu, None).unwrap()
}

fn base(version: &str) -> (T5Config, Weights) {
    let dir = fx(version).join("hf");
    let ModelConfig::T5(cfg) = ModelConfig::from_json_file(&dir.join("config.json")).unwrap() else { panic!("not a T5 config") };
    (cfg, load_hf_weights(&dir, &Device::Cpu, DType::F32).unwrap())
}

fn scalar(g: &BTreeMap<String, Tensor>, key: &str) -> f32 {
    g[key].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

fn check_adapter(version: &str, dir: &str, prefix: &str, n_modules: usize) {
    let g = golden(version);
    let dev = Device::Cpu;
    let (cfg, w) = base(version);
    let loaded = load_lora(&fx(version).join(dir), &lowrank_models::model_layout(&lowrank_models::ModelConfig::T5(cfg.clone())).unwrap(), &dev).unwrap();
    assert_eq!(loaded.adapters.modules.len(), n_modules, "{version} {dir}");
    let model = T5::new(&cfg, &w, &LoraSite { adapters: &loaded.adapters, dropout: 0.0 }, &dev).unwrap();
    let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
    let labels = rows_i64(&g["labels"]);
    let logits = model.forward(ids, Some(mask), &labels, false).unwrap();
    let (d, scale) = max_diff_labelled(&logits, &g[&format!("{prefix}.logits")], &labels);
    println!("{version} {prefix} logits: max |diff| = {d:e} (max |logit| = {scale})");
    assert!(d <= 1e-4 * scale.max(1.0), "{version} {prefix} logits differ by {d}");
    if prefix == "peft" {
        for (ls, key) in [(0.0, "peft.loss"), (0.1, "peft.loss_ls")] {
            let (sum, n) = model.loss_sum(ids, Some(mask), &labels, ls, false).unwrap();
            let loss = sum.to_scalar::<f32>().unwrap() / n as f32;
            let want = scalar(&g, key);
            println!("{version} {key}: ours {loss} torch {want} (diff {:e})", (loss - want).abs());
            assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0), "{version} {key}");
        }
    }
}

#[test]
fn peft_adapter_on_q_v_reproduces_peft_logits_and_losses() {
    for v in VERSIONS {
        // q and v of 2 encoder self-attention, 2 decoder self- and 2 cross-attention layers.
        check_adapter(v, "peft-adapter", "peft", 12);
    }
}

#[test]
fn peft_adapter_on_all_linear_layers_reproduces_peft_logits() {
    // Attention q, k, v, o (3 attention blocks per decoder layer) and the FFN (2 or 3 layers).
    check_adapter("v1_0", "peft-adapter-all", "peft_all", 2 * (4 + 2) + 2 * (8 + 2));
    check_adapter("v1_1", "peft-adapter-all", "peft_all", 2 * (4 + 3) + 2 * (8 + 3));
}

#[test]
fn lora_gradients_and_three_adamw_steps_match_pytorch() {
    for v in VERSIONS {
        let g = golden(v);
        let dev = Device::Cpu;
        let (cfg, w) = base(v);
        let adapters = load_lora(&fx(v).join("peft-adapter"), &lowrank_models::model_layout(&lowrank_models::ModelConfig::T5(cfg.clone())).unwrap(), &dev).unwrap().adapters;
        let model = T5::new(&cfg, &w, &LoraSite { adapters: &adapters, dropout: 0.0 }, &dev).unwrap();
        let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
        let labels = rows_i64(&g["labels"]);
        let vars: Vec<(String, candle_core::Var)> =
            adapters.named_vars().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v)).collect();
        assert_eq!(vars.len(), 24);
        let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }).unwrap();
        let want_losses = g["step_losses"].to_vec1::<f32>().unwrap();
        assert_eq!(want_losses.len(), 3);
        let mut worst_grad = 0f32;
        for (step, &want_loss) in want_losses.iter().enumerate().take(3) {
            let (sum, n) = model.loss_sum(ids, Some(mask), &labels, 0.0, true).unwrap();
            let loss = (sum / n as f64).unwrap();
            let lv = loss.to_scalar::<f32>().unwrap();
            println!("{v} step {step}: loss ours {lv} torch {want_loss}");
            assert!((lv - want_loss).abs() <= 1e-4 * want_loss.abs(), "{v} step {step}");
            let store = loss.backward().unwrap();
            let grads = collect_grads(&vars, &store);
            if step == 0 {
                for ((name, _), grad) in vars.iter().zip(&grads) {
                    let want = &g[&format!("grad.{name}")];
                    let got = grad.as_ref().unwrap_or_else(|| panic!("{v}: no gradient for {name}"));
                    let d = max_abs(&(got - want).unwrap());
                    let scale = max_abs(want);
                    worst_grad = worst_grad.max(d / scale.max(1e-6));
                    assert!(d <= 1e-4 * scale.max(1e-3), "{v}: gradient of {name} differs by {d} (scale {scale})");
                }
                println!("{v} LoRA gradients: worst relative diff {worst_grad:e}");
            }
            opt.step(&grads, 1e-2).unwrap();
        }
        let mut worst = 0f32;
        for (name, var) in &vars {
            let d = max_abs(&(var.as_tensor() - &g[&format!("step3.{name}")]).unwrap());
            worst = worst.max(d);
            assert!(d <= 1e-4, "{v}: {name} after 3 AdamW steps differs by {d}");
        }
        println!("{v} parameters after 3 AdamW steps: max |diff| = {worst:e}");
    }
}
