//! What the trainer and the decoders need from a causal language model. Llama implements it;
//! GPT-2 (fused `c_attn`, Conv1D weights) plugs in the same way, and an encoder–decoder (T5) adds
//! the encoder input to the same calls.
use crate::error::Result;
use crate::llama::KvCache;
use candle_core::{Device, Tensor};

pub trait CausalLm: Send + Sync {
    fn device(&self) -> &Device;

    /// Causal-LM loss over `input_ids: (b, t)`: logits at position i predict `labels[i+1]`
    /// (`IGNORE_INDEX` skipped). Returns `(sum of token losses, number of tokens)`.
    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)>;

    /// Incremental decoding: `input_ids: (b, t_new)` after the cached positions,
    /// `attention_mask: (b, cached + t_new)` → logits of the last position `(b, vocab)`.
    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor>;
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
}
