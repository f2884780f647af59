//! Inference with block-quantized frozen weights (GGML Q8_0, Q4_1, ...): each linear weight is
//! quantized once and multiplied by candle's quantized kernels, which read a quarter (Q8_0) to an
//! eighth (Q4_x) of the bytes of f32 — what bounds decoding speed on a CPU. Inference only: no
//! gradient flows through a quantized layer.
use crate::error::{ModelError, Result};
use crate::hooks::{BaseLinear, BuildHook, LinearInfo, LinearLayer};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::Arc;

/// The formats offered on the command line.
pub fn parse_quantization(s: &str) -> Result<Option<GgmlDType>> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "none" | "f32" | "" => None,
        "q8_0" => Some(GgmlDType::Q8_0),
        "q4_0" => Some(GgmlDType::Q4_0),
        "q4_1" => Some(GgmlDType::Q4_1),
        "q5_0" => Some(GgmlDType::Q5_0),
        "q5_1" => Some(GgmlDType::Q5_1),
        "q4k" | "q4_k" => Some(GgmlDType::Q4K),
        "q6k" | "q6_k" => Some(GgmlDType::Q6K),
        other => return Err(ModelError::Invalid(format!("unknown quantization `{other}` (none, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k)"))),
    })
}

/// A frozen linear layer with a quantized weight: `x: (b, t, d_in) -> (b, t, d_out)`.
pub struct QuantizedLinear {
    pub path: String,
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl QuantizedLinear {
    /// Quantizes `base.weight: (d_out, d_in)`; `None` when `d_in` is not a multiple of the
    /// format's block size (the layer then stays in f32).
    pub fn quantize(base: &BaseLinear, dtype: GgmlDType) -> Result<Option<Self>> {
        if base.d_in() % dtype.block_size() != 0 {
            return Ok(None);
        }
        let q = QTensor::quantize(&base.weight.to_dense()?, dtype)?;
        Ok(Some(Self { path: base.path.clone(), weight: QMatMul::from_qtensor(q)?, bias: base.bias.clone() }))
    }
}

impl LinearLayer for QuantizedLinear {
    fn forward_t(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(&x.contiguous()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The frozen base layer, quantized to `dtype` where its shape allows.
pub fn quantized_or_plain(base: BaseLinear, dtype: GgmlDType) -> Result<Arc<dyn LinearLayer>> {
    Ok(match QuantizedLinear::quantize(&base, dtype)? {
        Some(q) => Arc::new(q),
        None => Arc::new(base),
    })
}

/// Every frozen linear layer (and the output head) quantized: merged or adapter-free inference,
/// or the base beneath an adapter's hook (an unmerged adapter over a quantized base).
pub struct QuantizedHook {
    pub dtype: GgmlDType,
}

impl BuildHook for QuantizedHook {
    fn linear(&self, _info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> Result<Arc<dyn LinearLayer>> {
        match layer.as_frozen() {
            Some(base) => quantized_or_plain(base.clone(), self.dtype),
            None => Ok(layer),
        }
    }
}
