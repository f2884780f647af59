//! A GGUF base model kept block-quantized (`keep_quantized`) trains exactly as the same model
//! expanded to f32 on load: same loss and the same LoRA gradients, bit for bit (the packed
//! weights expand to the very values candle's dequantize gives), with and without activation
//! checkpointing (LoRA on q and v: the other layers are plain frozen layers); merging an adapter
//! into it gives the dense merge.
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::{load_model_with, CausalLm, Llama};
use lowrank_peft::{LoraAdapters, LoraConfig, LoraSite, TargetSpec};
use std::path::PathBuf;

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama").join(file)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn packed_base_gives_the_dense_loss_and_gradients() {
    let dev = Device::Cpu;
    for file in ["model-q4_1.gguf", "model-q8_0.gguf"] {
        let dense = load_model_with(&fixture(file), &dev, DType::F32, false).unwrap();
        let packed = load_model_with(&fixture(file), &dev, DType::F32, true).unwrap();
        assert!(dense.weights.packed.is_empty());
        assert!(packed.weights.packed.contains_key("model.layers.0.self_attn.q_proj.weight"), "{file}: q_proj not kept packed");
        assert!(packed.weights.packed.contains_key("model.layers.1.mlp.down_proj.weight"), "{file}: down_proj not kept packed");
        assert_eq!(dense.weights.parameter_count(), packed.weights.parameter_count());
        let (stored, as_f32) = packed.weights.packed_bytes();
        assert!(stored * 3 < as_f32, "{file}: {stored} bytes packed vs {as_f32} in f32");

        let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.2, targets: TargetSpec::Names(vec!["q_proj".into(), "v_proj".into()]), init_seed: 5, ..Default::default() };
        let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&dense.config).unwrap().linear_modules(), &dev).unwrap();
        for module in adapters.modules.values() {
            module.b.set(&(Tensor::randn(0f32, 0.1, module.b.dims(), &dev).unwrap())).unwrap();
        }
        let site = LoraSite { adapters: &adapters, dropout: 0.2 };
        let mut on_dense = Llama::new(dense.config.as_llama().unwrap(), &dense.weights, &site, &dev).unwrap();
        let mut on_packed = Llama::new(packed.config.as_llama().unwrap(), &packed.weights, &site, &dev).unwrap();
        let ids = Tensor::new(&[[5u32, 60, 61, 62, 100, 7, 8, 9], [9, 10, 11, 300, 2, 1, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]], &dev).unwrap();
        let labels = vec![vec![-100, -100, 61, 62, 100, 7, 8, 9], vec![-100, 10, 11, 300, 2, 1, -100, -100]];
        let vars: Vec<Var> = adapters.named_vars().into_iter().map(|(_, v)| v).collect();
        for checkpointing in [false, true] {
            on_dense.activation_checkpointing = checkpointing;
            on_packed.activation_checkpointing = checkpointing;
            adapters.dropout_rng.reseed(77);
            let (l1, n1, g1) = on_dense.loss_and_grads(&ids, Some(&mask), &labels, 0.1, 0.5, &vars).unwrap();
            adapters.dropout_rng.reseed(77);
            let (l2, n2, g2) = on_packed.loss_and_grads(&ids, Some(&mask), &labels, 0.1, 0.5, &vars).unwrap();
            assert_eq!(n1, n2);
            assert_eq!(l1.to_bits(), l2.to_bits(), "{file} (checkpointing {checkpointing}): loss {l1} vs {l2}");
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                let d = max_abs_diff(a.as_ref().expect("dense gradient"), b.as_ref().expect("packed gradient"));
                assert_eq!(d, 0.0, "{file} (checkpointing {checkpointing}): gradient {i} differs by {d}");
            }
        }
        // Inference logits too, and the merge (which expands the packed weight it changes).
        let logits_dense = on_dense.forward(&ids, Some(&mask), false).unwrap();
        let logits_packed = on_packed.forward(&ids, Some(&mask), false).unwrap();
        assert_eq!(max_abs_diff(&logits_dense, &logits_packed), 0.0, "{file}: logits differ");
        let (mut wd, mut wp) = (dense.weights.clone(), packed.weights.clone());
        adapters.merge_into(&mut wd).unwrap();
        adapters.merge_into(&mut wp).unwrap();
        assert!(wp.packed.contains_key("model.layers.1.self_attn.k_proj.weight"), "{file}: an unadapted weight stays packed");
        assert!(!wp.packed.contains_key("model.layers.1.self_attn.q_proj.weight"), "{file}: a merged weight is dense");
        let key = "model.layers.1.self_attn.q_proj.weight";
        assert_eq!(max_abs_diff(&wd.get_any(key).unwrap(), &wp.get_any(key).unwrap()), 0.0, "{file}: merged {key} differs");
    }
}
