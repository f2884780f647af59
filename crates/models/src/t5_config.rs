//! T5 / FLAN-T5 configuration from a Hugging Face `config.json` (`model_type = "t5"`).
use crate::config::Keys;
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

/// The feed-forward block: T5 v1.0 uses `wi → ReLU → wo`; v1.1 / FLAN-T5 a gated GELU
/// `(gelu_new(wi_0 x) ⊙ wi_1 x) → wo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5FeedForward {
    Relu,
    GatedGelu,
    /// Ungated `wi → GELU → wo` with the exact erf form (`feed_forward_proj = "gelu"`).
    Gelu,
    /// Ungated `wi → gelu_new → wo` (tanh form, `feed_forward_proj = "gelu_new"`).
    GeluNew,
    /// Gated with ReLU (`gated-relu`).
    GatedRelu,
}

impl T5FeedForward {
    pub fn is_gated(self) -> bool {
        matches!(self, T5FeedForward::GatedGelu | T5FeedForward::GatedRelu)
    }
}

/// An encoder–decoder T5.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Per-head size (`d_kv`); `num_heads · d_kv` need not equal `d_model`.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward: T5FeedForward,
    /// v1.0: the output head is the embedding matrix. v1.1 / FLAN-T5: a separate
    /// `lm_head.weight` (used whenever the checkpoint has one: transformers 5 writes `true` here
    /// next to FLAN-T5's own head).
    pub tie_word_embeddings: bool,
    /// The decoder output is scaled by `d_model^-0.5` before the head: `scale_decoder_outputs`
    /// (transformers 5), else `tie_word_embeddings` (T5 v1.0).
    pub scale_decoder_outputs: bool,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    /// The file as read, written back unchanged next to merged weights.
    pub raw: Value,
}

impl T5Config {
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let k = Keys { path, v };
        let act = k.str_opt("feed_forward_proj")?.unwrap_or("relu");
        let feed_forward = match act {
            "relu" => T5FeedForward::Relu,
            "gated-gelu" => T5FeedForward::GatedGelu,
            "gelu" => T5FeedForward::Gelu,
            "gelu_new" => T5FeedForward::GeluNew,
            "gated-relu" => T5FeedForward::GatedRelu,
            other => {
                return Err(ModelError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("feed_forward_proj `{other}` (supported: relu, gated-gelu, gelu, gated-relu)"),
                })
            }
        };
        let num_layers = k.usize_req("num_layers")?;
        let pad = k.ids("pad_token_id")?.first().copied().unwrap_or(0);
        let cfg = Self {
            vocab_size: k.usize_req("vocab_size")?,
            d_model: k.usize_req("d_model")?,
            d_kv: k.usize_req("d_kv")?,
            d_ff: k.usize_req("d_ff")?,
            num_layers,
            num_decoder_layers: k.usize_opt("num_decoder_layers")?.unwrap_or(num_layers),
            num_heads: k.usize_req("num_heads")?,
            relative_attention_num_buckets: k.usize_opt("relative_attention_num_buckets")?.unwrap_or(32),
            relative_attention_max_distance: k.usize_opt("relative_attention_max_distance")?.unwrap_or(128),
            layer_norm_epsilon: k.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-6),
            feed_forward,
            tie_word_embeddings: k.bool_opt("tie_word_embeddings")?.unwrap_or(true),
            scale_decoder_outputs: k.bool_opt("scale_decoder_outputs")?.or(k.bool_opt("tie_word_embeddings")?).unwrap_or(true),
            pad_token_id: pad,
            eos_token_id: k.ids("eos_token_id")?.first().copied().unwrap_or(1),
            decoder_start_token_id: k.ids("decoder_start_token_id")?.first().copied().unwrap_or(pad),
            raw: v.clone(),
        };
        if cfg.num_heads == 0 || cfg.d_kv == 0 || cfg.relative_attention_num_buckets < 2 {
            return Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                reason: "num_heads, d_kv must be positive and relative_attention_num_buckets at least 2".into(),
            });
        }
        Ok(cfg)
    }

    /// Attention width `num_heads · d_kv`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}
