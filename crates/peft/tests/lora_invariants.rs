//! Shared invariants of LoRA on the tiny Llama: a no-op at init, merged ≈ unmerged, dropout only
//! in training, save → load → save byte-identical, shapes checked on load.
use candle_core::{DType, Device, Tensor};
use lowrank_models::weights::{read_safetensors, write_safetensors};
use lowrank_models::{load_model, Llama, LoadedModel, PlainHook};
use lowrank_peft::{load_lora, save_adapter, AdapterInfo, LoraAdapters, LoraConfig, LoraSite, TargetSpec};
use std::path::PathBuf;

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

fn tiny() -> LoadedModel {
    load_model(&fx().join("hf"), &Device::Cpu, DType::F32).unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[5u32, 60, 61, 62, 100, 7], [9, 10, 11, 300, 2, 1]], &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn all_linear(r: usize) -> LoraConfig {
    LoraConfig { r, alpha: 2.0 * r as f64, targets: TargetSpec::Pattern("all-linear".into()), init_seed: 3, ..Default::default() }
}

/// Gives B random values so the adapter is not a no-op.
fn perturb(adapters: &LoraAdapters) {
    for (i, m) in adapters.modules.values().enumerate() {
        let noise = (Tensor::randn(0f32, 0.1, m.b.dims(), &Device::Cpu).unwrap() * (1.0 + i as f64 * 0.01)).unwrap();
        m.b.set(&noise).unwrap();
    }
}

#[test]
fn lora_is_an_exact_no_op_at_init() {
    let m = tiny();
    let base = Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap().forward(&ids(), None, false).unwrap();
    let adapters = LoraAdapters::init(&all_linear(4), &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    let lora = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.0 }, &Device::Cpu).unwrap();
    let out = lora.forward(&ids(), None, false).unwrap();
    assert_eq!(max_diff(&base, &out), 0.0);
    // A is initialised (kaiming-uniform bound 1/sqrt(d_in)), B is zero.
    let q = &adapters.modules["model.layers.0.self_attn.q_proj"];
    let a_max = q.a.as_tensor().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(a_max > 0.0 && a_max <= 1.0 / 8.0, "{a_max}");
    assert_eq!(q.b.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores() {
    let mut m = tiny();
    let adapters = LoraAdapters::init(&all_linear(4), &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    perturb(&adapters);
    let unmerged = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.0 }, &Device::Cpu).unwrap().forward(&ids(), None, false).unwrap();
    let original = m.weights.get_any("model.layers.1.mlp.down_proj.weight").unwrap();
    adapters.merge_into(&mut m.weights).unwrap();
    let merged = Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap().forward(&ids(), None, false).unwrap();
    let d = max_diff(&merged, &unmerged);
    println!("merged vs unmerged: max |diff| = {d:e}");
    assert!(d < 1e-4, "{d}");
    assert!(max_diff(&merged, &Llama::new(m.config.as_llama().unwrap(), &tiny().weights, &PlainHook, &Device::Cpu).unwrap().forward(&ids(), None, false).unwrap()) > 1e-3);
    adapters.unmerge_from(&mut m.weights).unwrap();
    assert!(max_diff(&m.weights.get_any("model.layers.1.mlp.down_proj.weight").unwrap(), &original) < 1e-6);
}

#[test]
fn dropout_only_in_training() {
    let m = tiny();
    let cfg = LoraConfig { dropout: 0.5, ..all_linear(4) };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    perturb(&adapters);
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.5 }, &Device::Cpu).unwrap();
    let eval1 = model.forward(&ids(), None, false).unwrap();
    let eval2 = model.forward(&ids(), None, false).unwrap();
    assert_eq!(max_diff(&eval1, &eval2), 0.0);
    adapters.dropout_rng.reseed(1);
    let train = model.forward(&ids(), None, true).unwrap();
    assert!(max_diff(&eval1, &train) > 1e-4);
    adapters.dropout_rng.reseed(1);
    assert_eq!(max_diff(&train, &model.forward(&ids(), None, true).unwrap()), 0.0, "same seed, same masks");
}

#[test]
fn save_load_save_is_byte_identical() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LoraConfig { rank_pattern: [("down_proj".to_string(), 2usize)].into(), alpha_pattern: [("o_proj".to_string(), 3.0)].into(), ..all_linear(4) };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    perturb(&adapters);
    assert_eq!(adapters.modules["model.layers.0.mlp.down_proj"].r, 2);
    assert_eq!(adapters.modules["model.layers.0.self_attn.o_proj"].scale, 3.0 / 4.0);
    save_adapter(&dir.path().join("a"), &adapters, &AdapterInfo::new("tiny", "CAUSAL_LM", false)).unwrap();
    let loaded = load_lora(&dir.path().join("a"), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    for (p, module) in &adapters.modules {
        let l = &loaded.adapters.modules[p];
        assert_eq!((l.r, l.scale), (module.r, module.scale), "{p}");
    }
    save_adapter(&dir.path().join("b"), &loaded.adapters, &AdapterInfo::new("tiny", "CAUSAL_LM", false)).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = std::fs::read(dir.path().join("a").join(f)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(f)).unwrap();
        assert!(a == b, "{f} differs after a round trip");
    }
    let keys: Vec<String> = read_safetensors(&dir.path().join("a/adapter_model.safetensors"), &Device::Cpu, None).unwrap().into_keys().collect();
    assert!(keys.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
}

#[test]
fn adapter_with_wrong_shapes_names_key_and_shapes() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fx().join("peft-adapter/adapter_config.json"), dir.path().join("adapter_config.json")).unwrap();
    let mut t = read_safetensors(&fx().join("peft-adapter/adapter_model.safetensors"), &Device::Cpu, None).unwrap();
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight".to_string();
    t.insert(key.clone(), Tensor::zeros((48, 4), DType::F32, &Device::Cpu).unwrap());
    write_safetensors(&dir.path().join("adapter_model.safetensors"), &t, None).unwrap();
    let err = load_lora(dir.path(), &lowrank_models::model_layout(&m.config).unwrap(), &Device::Cpu).err().expect("wrong shape must fail").to_string();
    assert!(err.contains(&key) && err.contains("[48, 4]") && err.contains("[32, 4]"), "{err}");
}

#[test]
fn target_that_matches_nothing_lists_modules() {
    let m = tiny();
    let cfg = LoraConfig { targets: TargetSpec::Names(vec!["c_attn".into()]), ..Default::default() };
    let err = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).err().expect("must fail").to_string();
    assert!(err.contains("c_attn") && err.contains("q_proj") && err.contains("down_proj"), "{err}");
}

#[test]
fn trainable_count_is_r_times_din_plus_dout() {
    let m = tiny();
    let cfg = LoraConfig { r: 8, ..Default::default() };
    let a = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &Device::Cpu).unwrap();
    // 2 layers × (q: 8·(64+64) + v: 8·(64+32))
    assert_eq!(a.trainable_parameters(), 2 * (8 * 128 + 8 * 96));
}

#[test]
fn fused_lora_op_matches_the_composition_with_and_without_dropout() {
    use candle_core::Var;
    use lowrank_models::BaseLinear;
    use lowrank_peft::LoraLinear;
    use lowrank_models::LinearLayer;
    let dev = Device::Cpu;
    let m = tiny();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.3, ..Default::default() };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &dev).unwrap();
    perturb(&adapters);
    let module = adapters.modules["model.layers.0.self_attn.v_proj"].clone();
    let base = BaseLinear { path: module.path.clone(), weight: m.weights.get_any("model.layers.0.self_attn.v_proj.weight").unwrap().into(), bias: Some(Tensor::randn(0f32, 1.0, 32, &dev).unwrap()) };
    let layer = LoraLinear { inner: std::sync::Arc::new(base), module: module.clone(), dropout: 0.3, rng: adapters.dropout_rng.clone(), dora: None };
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap()).unwrap();
    let probe = Tensor::randn(0f32, 1.0, (2, 3, 32), &dev).unwrap();
    for train in [false, true] {
        adapters.dropout_rng.reseed(9);
        let fused = layer.forward_t(x.as_tensor(), train).unwrap();
        adapters.dropout_rng.reseed(9);
        let mask = if train { Some(Tensor::from_vec(lowrank_peft::dropout::DropoutRng::new(9).mask_for_test(&module.path, 6 * 64, 0.3), (6, 64), &dev).unwrap()) } else { None };
        let plain = layer.forward_composed(x.as_tensor(), mask.as_ref(), train).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5, "values differ (train {train})");
        let gf = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("x", x.as_tensor()), ("A", module.a.as_tensor()), ("B", module.b.as_tensor())] {
            let d = max_diff(gf.get(t).unwrap(), gp.get(t).unwrap());
            println!("fused LoRA (train {train}): gradient of {name} max |diff| = {d:e}");
            assert!(d < 1e-4, "gradient of {name} differs by {d} (train {train})");
            // Regression: gradients that carried the forward graph kept every step's activations
            // alive through the optimizer moments (RSS grew ~0.9 GB per step).
            assert!(!gf.get(t).unwrap().track_op(), "gradient of {name} carries a backprop graph");
        }
    }
}

#[test]
fn fused_lora_gives_a_trainable_bias_its_gradient() {
    // Gradient trap: the fused op adds a frozen bias inside; a trainable one (bias tuning beside
    // LoRA) is added outside, where it gets `Σ_rows g`.
    use lowrank_models::{BaseLinear, LinearLayer};
    use lowrank_peft::LoraLinear;
    let dev = Device::Cpu;
    let m = tiny();
    let cfg = LoraConfig { r: 4, alpha: 8.0, ..Default::default() };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &dev).unwrap();
    perturb(&adapters);
    let module = adapters.modules["model.layers.0.self_attn.v_proj"].clone();
    let bias = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, 32, &dev).unwrap()).unwrap();
    let base = BaseLinear { path: module.path.clone(), weight: m.weights.get_any("model.layers.0.self_attn.v_proj.weight").unwrap().into(), bias: Some(bias.as_tensor().clone()) };
    let layer = LoraLinear { inner: std::sync::Arc::new(base), module, dropout: 0.0, rng: adapters.dropout_rng.clone(), dora: None };
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap();
    let probe = Tensor::randn(0f32, 1.0, (2, 3, 32), &dev).unwrap();
    let g = (layer.forward_t(&x, true).unwrap() * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let got = g.get(bias.as_tensor()).expect("a trainable bias got no gradient");
    let want = probe.reshape((6, 32)).unwrap().sum(0).unwrap();
    assert!(max_diff(got, &want) < 1e-5);
}
