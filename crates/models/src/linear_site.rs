//! The one seam through which every linear layer of a model is built: it knows the module path
//! and returns either the frozen base layer or the base layer with adapters attached.
use crate::error::Result;
use crate::ops::frozen_matmul;
use candle_core::Tensor;
use std::sync::Arc;

/// A linear layer as the model calls it: `x: (b, t, d_in) -> (b, t, d_out)`.
pub trait LinearLayer: Send + Sync {
    /// `train` turns on training-only behaviour (adapter dropout).
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;
}

/// A frozen base linear layer: `weight: (d_out, d_in)`, optional `bias: (d_out)`.
#[derive(Clone, Debug)]
pub struct BaseLinear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl BaseLinear {
    pub fn d_in(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }
    pub fn d_out(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }
}

impl LinearLayer for BaseLinear {
    fn forward_t(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let y = frozen_matmul(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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
