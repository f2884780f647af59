//! Adapters written by lowrank for GPT-2 and T5, committed with the logits lowrank computes with
//! them: tests/fixtures/tiny-gpt2/ours-qv-adapter (the LoRA paper's separate q/v factors, exported
//! as PEFT's equivalent fused c_attn adapter) and tests/fixtures/tiny-t5/v1_1/ours-adapter
//! (SEQ_2_SEQ_LM, all linear layers). `python3 scripts/check_ours_gpt2_t5.py` shows that Python
//! PEFT loads both and reproduces those logits; `LOWRANK_WRITE_FIXTURES=1` rewrites them.
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use lowrank_models::{load_model, AnyModel, LoadedModel, ModelConfig};
use lowrank_peft::{load_lora, AdapterInfo, LoraAdapters, LoraConfig, LoraSite, TargetSpec};
use std::collections::BTreeMap;

fn random_b(adapters: &LoraAdapters, seed: u64) {
    let mut rng = lowrank_models::generate::SplitMix64(seed);
    for m in adapters.modules.values() {
        let v: Vec<f32> = (0..m.b.elem_count()).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect();
        m.b.set(&Tensor::from_vec(v, m.b.dims(), &Device::Cpu).unwrap()).unwrap();
    }
}

/// Logits on the fixture's golden batch: decoder-only `(input_ids, mask)`, or T5 with labels.
fn logits(m: &LoadedModel, adapters: &LoraAdapters, g: &BTreeMap<String, Tensor>) -> Tensor {
    let site = LoraSite { adapters, dropout: 0.0 };
    match AnyModel::new(&m.config, &m.weights, &site, &Device::Cpu).unwrap() {
        AnyModel::Gpt2(model) => model.forward(&g["input_ids"], Some(&g["attention_mask"]), false).unwrap(),
        AnyModel::T5(model) => model.forward(&g["input_ids"], Some(&g["attention_mask"]), &rows_i64(&g["labels"]), false).unwrap(),
        AnyModel::Llama(_) | AnyModel::LlamaDecoder(_) => unreachable!("the fixtures here are GPT-2 and T5"),
    }
}

fn check(fixture: &str, adapter_dir: &str, targets: TargetSpec, expect_modules: usize) {
    let dev = Device::Cpu;
    let root = fixture_dir(fixture);
    let g = read_golden(&root.join("golden.safetensors"));
    let m = load_model(&root.join("hf"), &dev, DType::F32).unwrap();
    let dir = root.join(adapter_dir);
    let base = format!("tests/fixtures/{fixture}/hf");
    let info = AdapterInfo::new(base, m.config.peft_task_type(), m.config.fan_in_fan_out());
    if std::env::var("LOWRANK_WRITE_FIXTURES").is_ok() {
        let cfg = LoraConfig { r: 4, alpha: 16.0, targets: targets.clone(), init_seed: 11, ..Default::default() };
        let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &dev).unwrap();
        random_b(&adapters, 5);
        lowrank_peft::save_adapter(&dir, &adapters, &info).unwrap();
        let mut t = BTreeMap::new();
        t.insert("logits".to_string(), logits(&m, &adapters, &g));
        lowrank_models::weights::write_safetensors(&dir.join("logits.safetensors"), &t, None).unwrap();
    }
    let loaded = load_lora(&dir, &lowrank_models::model_layout(&m.config).unwrap(), &dev).unwrap();
    assert_eq!(loaded.adapters.modules.len(), expect_modules, "{adapter_dir}");
    let recorded = read_golden(&dir.join("logits.safetensors"));
    let d = max_abs_diff(&logits(&m, &loaded.adapters, &g), &recorded["logits"]);
    // The recorded logits come from one CPU's gemm kernels (AVX2 or AVX-512, with their own
    // summation orders); another CPU lands within ~1e-5 of them (logits up to ~4.4 here).
    // scripts/check_ours_gpt2_t5.py holds PyTorch + PEFT to 1e-4 of the same file.
    assert!(d < 5e-5, "{fixture}/{adapter_dir}: {d}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["task_type"], m.config.peft_task_type());
    assert_eq!(cfg["fan_in_fan_out"], matches!(m.config, ModelConfig::Gpt2(_)));
}

#[test]
fn gpt2_q_v_parts_adapter_fixture_reproduces_its_logits() {
    // Separate q and v factors in 2 layers, saved as one rank-8 c_attn LoRA per layer.
    check("tiny-gpt2", "ours-qv-adapter", TargetSpec::Names(vec!["q".into(), "v".into()]), 2);
}

#[test]
fn t5_all_linear_adapter_fixture_reproduces_its_logits() {
    // 2 encoder blocks × (4 attention + 3 FFN) + 2 decoder blocks × (8 attention + 3 FFN).
    check("tiny-t5/v1_1", "ours-adapter", TargetSpec::Pattern("all-linear".into()), 2 * 7 + 2 * 11);
}
