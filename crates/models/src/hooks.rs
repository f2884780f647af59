//! The one seam through which every linear layer and every norm of a model is built. A family
//! names each module by its Hugging Face path and its **role** (query, key, value, the fused qkv,
//! attention output, feed-forward gate/up/down, head; the norms before attention, cross-attention
//! and feed-forward, and the final one); a [`BuildHook`] sees the module and the layer built so
//! far and returns the layer to use. Hooks compose ([`Hooks`]): a quantized base, then an
//! adapter; two adapters stacked. Building a model with the [`RecordingHook`] gives its layout
//! ([`ModelLayout`]): the one list of its modules, read off the model itself.
use crate::error::Result;
use crate::frozen_weight::FrozenWeight;
use crate::ops::frozen_weight_matmul;
use candle_core::Tensor;
use std::sync::{Arc, Mutex};

/// What a linear layer does in its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Query,
    Key,
    Value,
    /// Query, key and value in one matrix (GPT-2's `c_attn`), parts in that order.
    FusedQkv,
    AttentionOutput,
    /// The activated branch of a gated feed-forward block (`gate_proj`, T5's `wi_0`).
    FfnGate,
    /// The feed-forward input: the linear branch of a gated block (`up_proj`, `wi_1`) or the
    /// only input of an ungated one (GPT-2's `c_fc`, T5's `wi`).
    FfnUp,
    /// The feed-forward output (`down_proj`, `wo`, GPT-2's `mlp.c_proj`).
    FfnDown,
    /// The output projection to the vocabulary.
    Head,
}

impl Role {
    /// Feed-forward roles (IA3 scales their input rather than their output, PEFT's rule for
    /// `feedforward_modules` applies to the output layer).
    pub fn is_feed_forward(self) -> bool {
        matches!(self, Role::FfnGate | Role::FfnUp | Role::FfnDown)
    }
}

/// Which normalisation a norm layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormRole {
    /// Before self-attention (`input_layernorm`, `ln_1`, T5's `layer.0.layer_norm`).
    Attention,
    /// Before cross-attention (T5's decoder `layer.1.layer_norm`).
    CrossAttention,
    /// Before the feed-forward block.
    FeedForward,
    /// After the last block (`model.norm`, `ln_f`, T5's `final_layer_norm`).
    Final,
}

/// RMSNorm (weight only) or LayerNorm (weight and bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

/// A linear module as the model builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearInfo {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub role: Role,
    pub d_in: usize,
    pub d_out: usize,
    /// Whether the checkpoint has a bias for it.
    pub bias: bool,
    /// For a part of a fused projection (GPT-2's `c_attn.q`): the fused module's path and the
    /// part's index, which places it at output rows `index·d_out ..` of the fused weight.
    pub part_of: Option<(String, usize)>,
}

/// A norm module as the model builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct NormInfo {
    /// Hugging Face module path, e.g. `model.layers.0.input_layernorm` (its weight is
    /// `<path>.weight`, a LayerNorm's bias `<path>.bias`).
    pub path: String,
    pub role: NormRole,
    pub kind: NormKind,
    pub dim: usize,
}

/// A linear layer as the model calls it: `x: (b, t, d_in) -> (b, t, d_out)`.
pub trait LinearLayer: Send + Sync {
    /// `train` turns on training-only behaviour (adapter dropout).
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;

    /// The layer itself when it is a plain frozen layer (no adapter), so a model may fuse it with
    /// the op before it, and an adapter with its own product.
    fn as_frozen(&self) -> Option<&BaseLinear> {
        None
    }
}

/// A frozen base linear layer: `weight: (d_out, d_in)`, optional `bias: (d_out)`.
#[derive(Clone, Debug)]
pub struct BaseLinear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// Dense, or block-quantized and kept packed.
    pub weight: FrozenWeight,
    pub bias: Option<Tensor>,
}

impl BaseLinear {
    pub fn d_in(&self) -> usize {
        self.weight.dims2().map(|(_, i)| i).unwrap_or(0)
    }
    pub fn d_out(&self) -> usize {
        self.weight.dims2().map(|(o, _)| o).unwrap_or(0)
    }
}

impl LinearLayer for BaseLinear {
    fn forward_t(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let y = frozen_weight_matmul(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn as_frozen(&self) -> Option<&BaseLinear> {
        Some(self)
    }
}

/// A norm layer: `x: (..., d) -> (..., d)`.
pub trait NormLayer: Send + Sync {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// The layer itself when it is the checkpoint's norm (no adapter).
    fn as_base(&self) -> Option<&BaseNorm> {
        None
    }
}

/// A norm with its checkpoint's weight (and a LayerNorm's bias); trainable when they are
/// variables (LN tuning), frozen otherwise.
#[derive(Clone, Debug)]
pub struct BaseNorm {
    pub kind: NormKind,
    /// `(d)`.
    pub weight: Tensor,
    /// `(d)`, LayerNorm only.
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl NormLayer for BaseNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Trainable parameters may be held in another dtype (f32 beside a bf16 model): the cast
        // carries their gradients back.
        let weight = self.weight.to_dtype(x.dtype())?;
        match (self.kind, &self.bias) {
            (NormKind::Rms, _) => crate::ops::rms_norm::rms_norm(x, &weight, self.eps),
            (NormKind::Layer, Some(b)) => crate::ops::norms::layer_norm(x, &weight, &b.to_dtype(x.dtype())?, self.eps),
            (NormKind::Layer, None) => crate::ops::norms::layer_norm(x, &weight, &weight.zeros_like()?, self.eps),
        }
    }

    fn as_base(&self) -> Option<&BaseNorm> {
        Some(self)
    }
}

/// Decides what each module of a model becomes; both methods default to keeping the layer.
pub trait BuildHook: Sync {
    fn linear(&self, _info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> Result<Arc<dyn LinearLayer>> {
        Ok(layer)
    }
    fn norm(&self, _info: &NormInfo, layer: Arc<dyn NormLayer>) -> Result<Arc<dyn NormLayer>> {
        Ok(layer)
    }
}

/// Every module stays as the checkpoint has it (inference, merged models).
pub struct PlainHook;

impl BuildHook for PlainHook {}

/// Hooks applied in order, each to what the one before returned.
pub struct Hooks<'a>(pub Vec<&'a dyn BuildHook>);

impl BuildHook for Hooks<'_> {
    fn linear(&self, info: &LinearInfo, mut layer: Arc<dyn LinearLayer>) -> Result<Arc<dyn LinearLayer>> {
        for h in &self.0 {
            layer = h.linear(info, layer)?;
        }
        Ok(layer)
    }
    fn norm(&self, info: &NormInfo, mut layer: Arc<dyn NormLayer>) -> Result<Arc<dyn NormLayer>> {
        for h in &self.0 {
            layer = h.norm(info, layer)?;
        }
        Ok(layer)
    }
}

/// A model's modules, in the order the model builds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLayout {
    /// Every linear layer, the head included; a fused projection is followed by its parts.
    pub linears: Vec<LinearInfo>,
    pub norms: Vec<NormInfo>,
}

impl ModelLayout {
    /// `(path, d_in, d_out)` of every linear layer an adapter may take: all but the head, parts
    /// of fused projections included.
    pub fn linear_modules(&self) -> Vec<(String, usize, usize)> {
        self.adaptable().map(|l| (l.path.clone(), l.d_in, l.d_out)).collect()
    }

    /// The linear layers an adapter may take (all but the head).
    pub fn adaptable(&self) -> impl Iterator<Item = &LinearInfo> {
        self.linears.iter().filter(|l| l.role != Role::Head)
    }

    pub fn linear(&self, path: &str) -> Option<&LinearInfo> {
        self.linears.iter().find(|l| l.path == path)
    }

    pub fn norm(&self, path: &str) -> Option<&NormInfo> {
        self.norms.iter().find(|n| n.path == path)
    }
}

/// Records every module it sees and keeps the layers as they are.
#[derive(Default)]
pub struct RecordingHook(Mutex<ModelLayout>);

impl RecordingHook {
    pub fn layout(self) -> ModelLayout {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl BuildHook for RecordingHook {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> Result<Arc<dyn LinearLayer>> {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.linears.push(info.clone());
        if info.role == Role::FusedQkv {
            // The parts an adapter may take separately (the LoRA paper's q and v of `c_attn`).
            let d = info.d_out / 3;
            for (i, (name, role)) in [("q", Role::Query), ("k", Role::Key), ("v", Role::Value)].into_iter().enumerate() {
                l.linears.push(LinearInfo { path: format!("{}.{name}", info.path), role, d_in: info.d_in, d_out: d, bias: info.bias, part_of: Some((info.path.clone(), i)) });
            }
        }
        Ok(layer)
    }
    fn norm(&self, info: &NormInfo, layer: Arc<dyn NormLayer>) -> Result<Arc<dyn NormLayer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).norms.push(info.clone());
        Ok(layer)
    }
}

/// What the families build their modules with: the checkpoint's tensors and the hook.
pub struct ModuleBuilder<'a> {
    pub weights: &'a crate::weights::Weights,
    pub hook: &'a dyn BuildHook,
}

impl ModuleBuilder<'_> {
    /// The linear layer at `path` (`<path>.weight: (d_out, d_in)`, `<path>.bias` when `bias`).
    pub fn linear(&self, path: String, role: Role, d_in: usize, d_out: usize, bias: bool) -> Result<Arc<dyn LinearLayer>> {
        let weight = self.weights.frozen(&format!("{path}.weight"), &[d_out, d_in])?;
        let b = if bias { Some(self.weights.get(&format!("{path}.bias"), &[d_out])?) } else { None };
        let info = LinearInfo { path: path.clone(), role, d_in, d_out, bias, part_of: None };
        self.hook.linear(&info, Arc::new(BaseLinear { path, weight, bias: b }))
    }

    /// The output head over `weight: (vocab, d)` (`lm_head.weight`, or the tied embedding).
    pub fn head(&self, weight: Tensor) -> Result<Arc<dyn LinearLayer>> {
        let (d_out, d_in) = weight.dims2()?;
        let info = LinearInfo { path: "lm_head".into(), role: Role::Head, d_in, d_out, bias: false, part_of: None };
        self.hook.linear(&info, Arc::new(BaseLinear { path: "lm_head".into(), weight: weight.into(), bias: None }))
    }

    /// The norm at `path` (`<path>.weight: (dim)`, a LayerNorm's `<path>.bias`).
    pub fn norm(&self, path: String, role: NormRole, kind: NormKind, dim: usize, eps: f64) -> Result<Arc<dyn NormLayer>> {
        let weight = self.weights.get(&format!("{path}.weight"), &[dim])?;
        let bias = match kind {
            NormKind::Layer => Some(self.weights.get(&format!("{path}.bias"), &[dim])?),
            NormKind::Rms => None,
        };
        let info = NormInfo { path, role, kind, dim };
        self.hook.norm(&info, Arc::new(BaseNorm { kind, weight, bias, eps }))
    }
}
