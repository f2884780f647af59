//! The one seam through which every linear layer of a model is built: it knows the module path
//! and returns either the frozen base layer or the base layer with adapters attached.
use crate::error::Result;
use crate::frozen_weight::FrozenWeight;
use crate::ops::frozen_weight_matmul;
use candle_core::Tensor;
use std::sync::Arc;

/// A linear layer as the model calls it: `x: (b, t, d_in) -> (b, t, d_out)`.
pub trait LinearLayer: Send + Sync {
    /// `train` turns on training-only behaviour (adapter dropout).
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;

    /// The layer itself when it is a plain frozen layer (no adapter), so a model may fuse it with
    /// the op before it.
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

/// Decides what each linear layer of a model becomes.
pub trait LinearSite {
    fn build(&self, base: BaseLinear) -> Result<Arc<dyn LinearLayer>>;
}

/// Every layer stays the frozen base layer (inference, merged models).
pub struct PlainSite;

impl LinearSite for PlainSite {
    fn build(&self, base: BaseLinear) -> Result<Arc<dyn LinearLayer>> {
        Ok(Arc::new(base))
    }
}
