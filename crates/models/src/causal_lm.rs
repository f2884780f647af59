//! What the trainer and the decoders need from a language model. Decoder-only models (Llama,
//! GPT-2) read `input_ids` as the whole sequence; an encoder–decoder model (T5) reads them as the
//! encoder input and `labels` as the decoder targets, as Hugging Face's `model(input_ids, labels)`.
use crate::error::Result;
use crate::kv_cache::KvCache;
use candle_core::{Device, Tensor, Var};

/// Back-propagates `scale · sum`: `(its value, n, the gradient of each of vars)`.
fn scaled_backward(sum: Tensor, n: usize, scale: f64, vars: &[Var]) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
    let scaled = (sum * scale)?;
    let value = scaled.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let store = scaled.backward()?;
    Ok((value, n, vars.iter().map(|v| store.get(v.as_tensor()).cloned()).collect()))
}

pub trait CausalLm: Send + Sync {
    fn device(&self) -> &Device;

    /// Decoder-only: causal-LM loss over `input_ids: (b, t)`, logits at position i predict
    /// `labels[i+1]`. Encoder–decoder: `input_ids: (b, s)` feed the encoder, the decoder reads
    /// `labels` shifted right after the start token and position i predicts `labels[i]`.
    /// `IGNORE_INDEX` labels are skipped. Returns `(sum of token losses, number of tokens)`.
    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)>;

    /// Incremental decoding: `input_ids: (b, t_new)` after the cached positions,
    /// `attention_mask: (b, cached + t_new)` → logits of the last position `(b, vocab)`.
    /// Encoder–decoder: the first call (empty cache) takes the prompt as encoder input and
    /// returns the logits after the decoder start token; later calls take decoder tokens.
    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor>;

    /// `scale · loss_sum` and its gradients with respect to `vars` (the trainable tensors), for a
    /// training micro-step: `(scale · loss sum, tokens, gradient per var)`. Models that support
    /// activation checkpointing override it.
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grads(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, scale: f64, vars: &[Var]) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
        let (sum, n) = self.loss_sum(input_ids, attention_mask, labels, label_smoothing, true)?;
        scaled_backward(sum, n, scale, vars)
    }

    /// The decoder start token of an encoder–decoder model; `None` for a decoder-only model.
    fn decoder_start_id(&self) -> Option<u32> {
        None
    }
}

impl CausalLm for crate::llama::Llama {
    fn device(&self) -> &Device {
        crate::llama::Llama::device(self)
    }

    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        crate::llama::Llama::loss_sum(self, input_ids, attention_mask, labels, label_smoothing, train)
    }

    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.forward_cached(input_ids, attention_mask, cache)?;
        self.last_logits(&h)
    }

    fn loss_and_grads(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, scale: f64, vars: &[Var]) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
        if self.activation_checkpointing {
            return self.loss_and_grads_checkpointed(input_ids, attention_mask, labels, label_smoothing, scale, vars);
        }
        let (sum, n) = crate::llama::Llama::loss_sum(self, input_ids, attention_mask, labels, label_smoothing, true)?;
        scaled_backward(sum, n, scale, vars)
    }
}
