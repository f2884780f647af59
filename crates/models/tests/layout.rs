//! A model's layout is read off the model itself (built once over shape-only weights with the
//! recording hook): every linear layer and norm with its path, role and shapes, for each family;
//! hooks compose in order.
use candle_core::{DType, Device, Tensor};
use lowrank_models::{load_model, model_layout, AnyModel, BuildHook, Hooks, LinearInfo, LinearLayer, NormKind, NormRole, Role};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

#[test]
fn llama_layout_lists_every_module_with_its_role() {
    let m = load_model(&fixture("tiny-llama/hf"), &Device::Cpu, DType::F32).unwrap();
    let layout = model_layout(&m.config).unwrap();
    // 2 layers × 7 projections, then the head.
    assert_eq!(layout.linear_modules().len(), 14);
    let q = layout.linear("model.layers.1.self_attn.q_proj").unwrap();
    assert_eq!((q.role, q.d_in, q.d_out, q.bias), (Role::Query, 64, 64, false));
    let k = layout.linear("model.layers.0.self_attn.k_proj").unwrap();
    assert_eq!((k.role, k.d_out), (Role::Key, 32));
    assert_eq!(layout.linear("model.layers.0.mlp.down_proj").unwrap().role, Role::FfnDown);
    assert_eq!(layout.linear("lm_head").unwrap().role, Role::Head);
    // Norms: two per layer and the final one, RMS.
    assert_eq!(layout.norms.len(), 5);
    let n = layout.norm("model.layers.0.post_attention_layernorm").unwrap();
    assert_eq!((n.role, n.kind, n.dim), (NormRole::FeedForward, NormKind::Rms, 64));
    assert_eq!(layout.norm("model.norm").unwrap().role, NormRole::Final);
    // The layout of the real weights equals the shape-only one.
    let rec = lowrank_models::hooks::RecordingHook::default();
    AnyModel::new(&m.config, &m.weights, &rec, &Device::Cpu).unwrap();
    assert_eq!(rec.layout(), layout);
}

#[test]
fn gpt2_layout_has_the_fused_projection_and_its_parts() {
    let m = load_model(&fixture("tiny-gpt2/hf"), &Device::Cpu, DType::F32).unwrap();
    let layout = model_layout(&m.config).unwrap();
    let c_attn = layout.linear("transformer.h.0.attn.c_attn").unwrap();
    assert_eq!(c_attn.role, Role::FusedQkv);
    let v = layout.linear("transformer.h.0.attn.c_attn.v").unwrap();
    assert_eq!((v.role, v.d_out * 3, v.part_of.clone()), (Role::Value, c_attn.d_out, Some(("transformer.h.0.attn.c_attn".to_string(), 2))));
    assert_eq!(layout.linear("transformer.h.1.mlp.c_fc").unwrap().role, Role::FfnUp);
    assert!(layout.norms.iter().all(|n| n.kind == NormKind::Layer));
    assert_eq!(layout.norm("transformer.ln_f").unwrap().role, NormRole::Final);
}

#[test]
fn t5_layout_covers_both_stacks_and_cross_attention() {
    for (version, gated) in [("v1_0", false), ("v1_1", true)] {
        let m = load_model(&fixture("tiny-t5").join(version).join("hf"), &Device::Cpu, DType::F32).unwrap();
        let layout = model_layout(&m.config).unwrap();
        assert_eq!(layout.linear("decoder.block.0.layer.1.EncDecAttention.k").unwrap().role, Role::Key);
        assert_eq!(layout.norm("decoder.block.0.layer.1.layer_norm").unwrap().role, NormRole::CrossAttention);
        if gated {
            assert_eq!(layout.linear("encoder.block.0.layer.1.DenseReluDense.wi_0").unwrap().role, Role::FfnGate);
            assert_eq!(layout.linear("encoder.block.0.layer.1.DenseReluDense.wi_1").unwrap().role, Role::FfnUp);
        } else {
            assert_eq!(layout.linear("encoder.block.0.layer.1.DenseReluDense.wi").unwrap().role, Role::FfnUp);
        }
    }
}

/// Records the order in which it saw a module, wrapping nothing.
struct Tag(&'static str, Arc<Mutex<Vec<String>>>);

impl BuildHook for Tag {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        if info.path == "model.layers.0.self_attn.q_proj" {
            self.1.lock().unwrap().push(format!("{}:{}", self.0, layer.as_frozen().is_some()));
        }
        Ok(Arc::new(Scaled(layer)))
    }
}

/// Doubles the layer's output.
struct Scaled(Arc<dyn LinearLayer>);

impl LinearLayer for Scaled {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0.forward_t(x, train)? * 2.0
    }
}

#[test]
fn hooks_compose_in_order_each_seeing_the_layer_before() {
    let m = load_model(&fixture("tiny-llama/hf"), &Device::Cpu, DType::F32).unwrap();
    let seen = Arc::new(Mutex::new(vec![]));
    let (a, b) = (Tag("first", seen.clone()), Tag("second", seen.clone()));
    AnyModel::new(&m.config, &m.weights, &Hooks(vec![&a, &b]), &Device::Cpu).unwrap();
    // The first hook sees the frozen base layer, the second what the first made of it.
    assert_eq!(*seen.lock().unwrap(), vec!["first:true".to_string(), "second:false".to_string()]);
}
