//! GPT-2 against PyTorch + transformers + PEFT on the tiny random model of tests/fixtures/tiny-gpt2
//! (regenerate with `python3 scripts/make_fixtures_gpt2_t5.py`): logits, loss (with label
//! smoothing), LoRA on the fused Conv1D `c_attn` (PEFT's fan_in_fan_out), gradients, 3 AdamW steps,
//! greedy and beam decoding; and the LoRA paper's separate q/v factors inside `c_attn`.
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use lowrank_models::beam::{beam_search, BeamParams};
use lowrank_models::generate::{generate, SamplingParams};
use lowrank_models::gpt2::Gpt2;
use lowrank_models::{load_model, CausalLm, LoadedModel, ModelConfig, PlainHook};
use lowrank_peft::{load_lora, AdapterInfo, LoraAdapters, LoraConfig, LoraSite, TargetSpec};
use lowrank_train::optim::{collect_grads, AdamW, AdamWParams};
use std::collections::BTreeMap;

const EOS: u32 = 0;

fn golden() -> BTreeMap<String, Tensor> {
    read_golden(&fixture_dir("tiny-gpt2").join("golden.safetensors"))
}

fn loaded() -> LoadedModel {
    load_model(&fixture_dir("tiny-gpt2").join("hf"), &Device::Cpu, DType::F32).unwrap()
}

fn gpt2(m: &LoadedModel, site: &dyn lowrank_models::BuildHook) -> Gpt2 {
    let ModelConfig::Gpt2(c) = &m.config else { panic!("not a GPT-2 config") };
    Gpt2::new(c, &m.weights, site, &Device::Cpu).unwrap()
}

fn assert_logits(model: &Gpt2, g: &BTreeMap<String, Tensor>, key: &str) {
    let mask = &g["attention_mask"];
    let logits = model.forward(&g["input_ids"], Some(mask), false).unwrap();
    let (d, scale) = max_diff_masked(&logits, &g[key], &rows_i64(mask));
    println!("{key}: max |diff| = {d:e} (max |logit| {scale})");
    assert!(d <= 1e-5 * scale.max(1.0), "{key} differ by {d}");
}

fn mean_loss(model: &dyn CausalLm, g: &BTreeMap<String, Tensor>, smoothing: f32) -> f32 {
    let labels = rows_i64(&g["labels"]);
    let (sum, n) = model.loss_sum(&g["input_ids"], Some(&g["attention_mask"]), &labels, smoothing, false).unwrap();
    sum.to_scalar::<f32>().unwrap() / n as f32
}

#[test]
fn base_logits_and_loss_match_transformers() {
    let g = golden();
    let m = loaded();
    assert!(!m.weights.contains("lm_head.weight"));
    assert_eq!(m.weights.get_any("transformer.h.0.attn.c_attn.weight").unwrap().dims(), &[96, 32], "Conv1D (in, out) held as (out, in)");
    let model = gpt2(&m, &PlainHook);
    assert_logits(&model, &g, "base.logits");
    let (ours, want) = (mean_loss(&model, &g, 0.0), scalar(&g["base.loss"]));
    println!("base loss: ours {ours} torch {want}");
    assert!((ours - want).abs() <= 1e-5 * want.abs());
}

#[test]
fn peft_adapters_reproduce_peft_logits_and_losses() {
    let g = golden();
    let m = loaded();
    for (dir, key, n) in [("peft-adapter", "peft.logits", 2), ("peft-adapter-all", "peft_all.logits", 8)] {
        let a = load_lora(&fixture_dir("tiny-gpt2").join(dir), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).unwrap();
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        assert_eq!(a.adapters.modules.len(), n, "{dir}");
        let model = gpt2(&m, &LoraSite { adapters: &a.adapters, dropout: 0.0 });
        assert_logits(&model, &g, key);
        if dir == "peft-adapter" {
            for (smoothing, k) in [(0.0, "peft.loss"), (0.1, "peft.loss_ls")] {
                let (ours, want) = (mean_loss(&model, &g, smoothing), scalar(&g[k]));
                println!("{k}: ours {ours} torch {want}");
                assert!((ours - want).abs() <= 1e-5 * want.abs(), "{k}");
            }
        }
        // Merged (W + s·ΔW, held (out, in)) gives the same logits.
        let mut w = m.weights.clone();
        a.adapters.merge_into(&mut w).unwrap();
        let ModelConfig::Gpt2(c) = &m.config else { unreachable!() };
        let merged = Gpt2::new(c, &w, &PlainHook, &Device::Cpu).unwrap();
        assert_logits(&merged, &g, key);
    }
}

#[test]
fn lora_gradients_and_three_adamw_steps_match_pytorch() {
    let g = golden();
    let m = loaded();
    let adapters = load_lora(&fixture_dir("tiny-gpt2").join("peft-adapter"), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).unwrap().adapters;
    let model = gpt2(&m, &LoraSite { adapters: &adapters, dropout: 0.0 });
    let labels = rows_i64(&g["labels"]);
    let vars: Vec<(String, candle_core::Var)> = adapters.named_vars().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v)).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }).unwrap();
    let want_losses = g["step_losses"].to_vec1::<f32>().unwrap();
    for (step, want_loss) in want_losses.iter().enumerate() {
        let (sum, n) = model.loss_sum(&g["input_ids"], Some(&g["attention_mask"]), &labels, 0.0, true).unwrap();
        let loss = (sum / n as f64).unwrap();
        let lv = loss.to_scalar::<f32>().unwrap();
        println!("step {step}: loss ours {lv} torch {want_loss}");
        assert!((lv - want_loss).abs() <= 1e-5 * want_loss.abs());
        let grads = collect_grads(&vars, &loss.backward().unwrap());
        if step == 0 {
            for ((name, _), grad) in vars.iter().zip(&grads) {
                let want = &g[&format!("grad.{name}")];
                let d = max_abs_diff(grad.as_ref().unwrap(), want);
                let scale = max_abs(want);
                println!("grad {name}: max |diff| {d:e} (scale {scale})");
                assert!(d <= 1e-4 * scale.max(1e-3), "gradient of {name} differs by {d}");
            }
        }
        opt.step(&grads, 1e-2).unwrap();
    }
    for (name, var) in &vars {
        let d = max_abs_diff(var.as_tensor(), &g[&format!("step3.{name}")]);
        assert!(d <= 1e-5, "{name} after 3 AdamW steps differs by {d}");
    }
}

fn peft_model() -> Gpt2 {
    let m = loaded();
    let a = load_lora(&fixture_dir("tiny-gpt2").join("peft-adapter"), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).unwrap();
    let mut w = m.weights.clone();
    a.adapters.merge_into(&mut w).unwrap();
    let ModelConfig::Gpt2(c) = &m.config else { unreachable!() };
    Gpt2::new(c, &w, &PlainHook, &Device::Cpu).unwrap()
}

#[test]
fn greedy_and_beam_match_transformers_generate() {
    let g = golden();
    let prompt = ids_u32(&g["greedy.prompt_ids"]).remove(0);
    let model = peft_model();
    let greedy = SamplingParams { max_new_tokens: 12, ignore_stop: true, ..Default::default() };
    let got = generate(&model, &[prompt.clone()], &greedy, EOS).unwrap();
    assert_eq!(got[0], ids_u32(&g["greedy.output_ids"])[0][5..].to_vec(), "greedy");
    let base = gpt2(&loaded(), &PlainHook);
    let got = generate(&base, &[prompt.clone()], &greedy, EOS).unwrap();
    assert_eq!(got[0], ids_u32(&g["greedy.base_output_ids"])[0][5..].to_vec(), "base greedy");
    let beam = BeamParams { num_beams: 3, max_new_tokens: 12, min_new_tokens: 12, length_penalty: 1.0, no_repeat_ngram_size: 0, early_stopping: true, eos_ids: vec![EOS] };
    let got = beam_search(&model, &[prompt.clone()], &beam, EOS).unwrap();
    assert_eq!(got[0], ids_u32(&g["beam.output_ids"])[0][5..].to_vec(), "beam");
    let paper = BeamParams { no_repeat_ngram_size: 2, length_penalty: 0.9, ..beam };
    let got = beam_search(&model, &[prompt], &paper, EOS).unwrap();
    assert_eq!(got[0], ids_u32(&g["beam_nr.output_ids"])[0][5..].to_vec(), "beam with no-repeat n-gram 2, length penalty 0.9");
}

#[test]
fn left_padded_batch_decodes_like_transformers() {
    let g = golden();
    let ids = ids_u32(&g["greedy_leftpad.input_ids"]);
    let mask = rows_i64(&g["greedy_leftpad.attention_mask"]);
    let prompts: Vec<Vec<u32>> = ids.iter().zip(&mask).map(|(r, m)| r.iter().zip(m).filter(|(_, &k)| k == 1).map(|(&t, _)| t).collect()).collect();
    assert!(prompts[1].len() < prompts[0].len(), "the fixture pads row 2 on the left");
    let out = generate(&peft_model(), &prompts, &SamplingParams { max_new_tokens: 12, ignore_stop: true, ..Default::default() }, EOS).unwrap();
    let want = ids_u32(&g["greedy_leftpad.output_ids"]);
    for (row, w) in want.iter().enumerate() {
        assert_eq!(out[row], w[5..].to_vec(), "row {row}");
    }
}

/// The LoRA paper's form: rank-r factors for q and for v inside the fused c_attn (loralib's
/// MergedLinear with enable_lora = [True, False, True]).
fn qv_parts(m: &LoadedModel, r: usize) -> LoraAdapters {
    let cfg = LoraConfig { r, alpha: 32.0, targets: TargetSpec::Names(vec!["q".into(), "v".into()]), init_seed: 3, ..Default::default() };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    let mut rng = lowrank_models::generate::SplitMix64(9);
    for module in adapters.modules.values() {
        let v: Vec<f32> = (0..module.b.elem_count()).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect();
        module.b.set(&Tensor::from_vec(v, module.b.dims(), &Device::Cpu).unwrap()).unwrap();
    }
    adapters
}

#[test]
fn separate_q_v_lora_touches_only_the_q_and_v_blocks() {
    let g = golden();
    let m = loaded();
    let adapters = qv_parts(&m, 4);
    assert_eq!(adapters.modules.len(), 4, "q and v of 2 layers");
    assert!(adapters.modules.keys().all(|k| k.ends_with("c_attn.q") || k.ends_with("c_attn.v")));
    let mut merged = m.weights.clone();
    adapters.merge_into(&mut merged).unwrap();
    let d = 32;
    for layer in 0..2 {
        let key = format!("transformer.h.{layer}.attn.c_attn.weight");
        let (w0, w1) = (m.weights.get_any(&key).unwrap(), merged.get_any(&key).unwrap());
        for (part, block) in [("q", 0), ("k", 1), ("v", 2)] {
            let before = w0.narrow(0, block * d, d).unwrap();
            let after = w1.narrow(0, block * d, d).unwrap();
            let delta = (&after - &before).unwrap();
            match adapters.modules.get(&format!("transformer.h.{layer}.attn.c_attn.{part}")) {
                None => assert_eq!(max_abs(&delta), 0.0, "k block of layer {layer} must stay untouched"),
                Some(module) => {
                    // W + s·B·A with s = alpha / r = 8, computed here without the library.
                    let a = module.a.as_tensor();
                    let b = module.b.as_tensor();
                    let want = (b.matmul(a).unwrap() * (32.0 / 4.0)).unwrap();
                    let err = max_abs_diff(&delta, &want);
                    assert!(max_abs(&want) > 1e-3 && err <= 1e-6, "{part} block of layer {layer}: {err}");
                }
            }
        }
    }
    // Forward through the unmerged parts equals the merged model.
    let live = gpt2(&m, &LoraSite { adapters: &adapters, dropout: 0.0 });
    let ModelConfig::Gpt2(c) = &m.config else { unreachable!() };
    let fused = Gpt2::new(c, &merged, &PlainHook, &Device::Cpu).unwrap();
    let mask = &g["attention_mask"];
    let a = live.forward(&g["input_ids"], Some(mask), false).unwrap();
    let b = fused.forward(&g["input_ids"], Some(mask), false).unwrap();
    let (diff, _) = max_diff_masked(&a, &b, &rows_i64(mask));
    assert!(diff <= 1e-4, "parts vs merged: {diff}");
    // k's gradient path is absent: only q and v factors receive gradients, and both do.
    let labels = rows_i64(&g["labels"]);
    let (sum, _) = live.loss_sum(&g["input_ids"], Some(mask), &labels, 0.1, true).unwrap();
    let store = sum.backward().unwrap();
    for (name, var) in adapters.named_vars() {
        let grad = store.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(max_abs(grad) > 0.0, "{name}");
    }
}

#[test]
fn q_v_parts_export_to_an_equivalent_peft_adapter_and_resume_natively() {
    let g = golden();
    let m = loaded();
    let adapters = qv_parts(&m, 4);
    let info = AdapterInfo::new("tests/fixtures/tiny-gpt2/hf", "CAUSAL_LM", true);
    let dir = tempfile::tempdir().unwrap();
    lowrank_peft::save_adapter(&dir.path().join("peft"), &adapters, &info).unwrap();
    lowrank_peft::save_adapter_native(&dir.path().join("native"), &adapters, &info).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("peft/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["c_attn"]));
    assert_eq!(cfg["rank_pattern"]["c_attn"], 8);
    assert_eq!(cfg["alpha_pattern"]["c_attn"], 64.0, "alpha' / 2r = alpha / r");
    assert_eq!(cfg["fan_in_fan_out"], true);
    let mask = &g["attention_mask"];
    let reference = gpt2(&m, &LoraSite { adapters: &adapters, dropout: 0.0 }).forward(&g["input_ids"], Some(mask), false).unwrap();
    for (form, n) in [("peft", 2), ("native", 4)] {
        let a = load_lora(&dir.path().join(form), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).unwrap().adapters;
        assert_eq!(a.modules.len(), n, "{form}");
        assert_eq!(a.trainable_parameters(), if form == "peft" { 2 * 8 * (32 + 96) } else { adapters.trainable_parameters() });
        let logits = gpt2(&m, &LoraSite { adapters: &a, dropout: 0.0 }).forward(&g["input_ids"], Some(mask), false).unwrap();
        let (d, _) = max_diff_masked(&logits, &reference, &rows_i64(mask));
        assert!(d <= 1e-5, "{form}: {d}");
    }
}

#[test]
fn trainable_counts_equal_peft_and_loralib_for_gpt2_medium() {
    // GPT-2 Medium: n_embd 1024, 24 layers. r = 4 on q and v: 24 · 2 · 4 · (1024 + 1024) = 393,216
    // (loralib MergedLinear); PEFT's c_attn at r = 4: 24 · 4 · (1024 + 3072) = 393,216 as well.
    let cfg = serde_json::json!({"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16, "n_positions": 1024, "vocab_size": 50257});
    let mc = ModelConfig::from_json(&cfg, std::path::Path::new("gpt2-medium/config.json")).unwrap();
    let count = |targets: Vec<&str>| {
        let c = LoraConfig { r: 4, alpha: 32.0, targets: TargetSpec::Names(targets.into_iter().map(String::from).collect()), ..Default::default() };
        LoraAdapters::init(&c, &lowrank_models::model_layout(&mc).unwrap().linear_modules(), &Device::Cpu).unwrap().trainable_parameters()
    };
    assert_eq!(count(vec!["q", "v"]), 393_216);
    assert_eq!(count(vec!["c_attn"]), 393_216);
    // c_attn + attn.c_proj + mlp.c_fc + mlp.c_proj.
    assert_eq!(count(vec!["c_attn", "c_proj", "c_fc"]), 24 * 4 * ((1024 + 3072) + (1024 + 1024) + (1024 + 4096) + (4096 + 1024)));
    let all = LoraConfig { r: 4, targets: TargetSpec::Pattern("all-linear".into()), ..Default::default() };
    let a = LoraAdapters::init(&all, &lowrank_models::model_layout(&mc).unwrap().linear_modules(), &Device::Cpu).unwrap();
    assert_eq!(a.modules.len(), 24 * 4, "all-linear leaves out the virtual q/k/v parts");
    let both = LoraConfig { targets: TargetSpec::Names(vec!["c_attn".into(), "q".into()]), ..Default::default() };
    let err = LoraAdapters::init(&both, &lowrank_models::model_layout(&mc).unwrap().linear_modules(), &Device::Cpu).err().expect("c_attn and its part together").to_string();
    assert!(err.contains("c_attn") && err.contains("both"), "{err}");
}

#[test]
fn merged_checkpoint_is_written_back_in_conv1d_layout() {
    let m = loaded();
    let adapters = qv_parts(&m, 2);
    let mut w = m.weights.clone();
    adapters.merge_into(&mut w).unwrap();
    let out = lowrank_models::loader::checkpoint_tensors(&m.config, &w).unwrap();
    let on_disk = read_golden(&fixture_dir("tiny-gpt2").join("hf/model.safetensors"));
    for (k, t) in &on_disk {
        assert_eq!(out[k].dims(), t.dims(), "{k}");
    }
    let k_block = |t: &Tensor| t.narrow(1, 32, 32).unwrap();
    let key = "transformer.h.0.attn.c_attn.weight";
    assert_eq!(max_abs_diff(&k_block(&out[key]), &k_block(&on_disk[key])), 0.0);
    assert!(max_abs_diff(&out[key], &on_disk[key]) > 0.0);
}
