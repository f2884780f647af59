//! Activation checkpointing gives the loss and every LoRA gradient of the plain backward (with
//! adapter dropout too: masks are keyed by module path, so a recomputed layer draws the same).
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::{load_model, CausalLm, Llama};
use lowrank_peft::{LoraAdapters, LoraConfig, LoraSite, TargetSpec};
use std::path::PathBuf;

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn checkpointed_backward_equals_the_plain_backward() {
    let dev = Device::Cpu;
    let m = load_model(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama/hf"), &dev, DType::F32).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.2, targets: TargetSpec::Pattern("all-linear".into()), init_seed: 5, ..Default::default() };
    let adapters = LoraAdapters::init(&cfg, &lowrank_models::model_layout(&m.config).unwrap().linear_modules(), &dev).unwrap();
    for module in adapters.modules.values() {
        module.b.set(&(Tensor::randn(0f32, 0.1, module.b.dims(), &dev).unwrap())).unwrap();
    }
    let mut model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &LoraSite { adapters: &adapters, dropout: 0.2 }, &dev).unwrap();
    let ids = Tensor::new(&[[5u32, 60, 61, 62, 100, 7, 8, 9], [9, 10, 11, 300, 2, 1, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]], &dev).unwrap();
    let labels = vec![vec![-100, -100, 61, 62, 100, 7, 8, 9], vec![-100, 10, 11, 300, 2, 1, -100, -100]];
    let vars: Vec<Var> = adapters.named_vars().into_iter().map(|(_, v)| v).collect();
    adapters.dropout_rng.reseed(77);
    let (plain_loss, n1, plain) = model.loss_and_grads(&ids, Some(&mask), &labels, 0.1, 0.5, &vars).unwrap();
    model.activation_checkpointing = true;
    adapters.dropout_rng.reseed(77);
    let (ck_loss, n2, ck) = model.loss_and_grads(&ids, Some(&mask), &labels, 0.1, 0.5, &vars).unwrap();
    assert_eq!((n1, n2), (11, 11));
    assert!((plain_loss - ck_loss).abs() < 1e-6 * plain_loss.abs(), "{plain_loss} vs {ck_loss}");
    let mut worst = 0f32;
    for (i, (a, b)) in plain.iter().zip(&ck).enumerate() {
        let (a, b) = (a.as_ref().expect("plain gradient"), b.as_ref().expect("checkpointed gradient"));
        let d = max_abs(&(a - b).unwrap()) / max_abs(a).max(1e-6);
        worst = worst.max(d);
        assert!(d < 1e-4, "gradient {i} differs by {d} (relative)");
    }
    println!("activation checkpointing: {} gradients, worst relative diff {worst:e}", ck.len());
    // Dropout is on: a different seed gives a different loss.
    adapters.dropout_rng.reseed(78);
    let (other, _, _) = model.loss_and_grads(&ids, Some(&mask), &labels, 0.1, 0.5, &vars).unwrap();
    assert!((other - ck_loss).abs() > 1e-6);
}
