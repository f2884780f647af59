//! GPT-2 configuration from a Hugging Face `config.json` (`model_type = "gpt2"`).
use crate::config::Keys;
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

/// A GPT-2 decoder: learned positions, pre-LayerNorm blocks, fused `c_attn` (q|k|v), `gelu_new`
/// MLP, output head tied to the token embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    /// MLP width (`n_inner`, default `4 · n_embd`).
    pub n_inner: usize,
    pub layer_norm_epsilon: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The file as read, written back unchanged next to merged weights.
    pub raw: Value,
}

impl Gpt2Config {
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let k = Keys { path, v };
        let act = k.str_opt("activation_function")?.unwrap_or("gelu_new");
        if act != "gelu_new" {
            return Err(ModelError::Unsupported { path: path.to_path_buf(), reason: format!("activation_function `{act}` (supported: gelu_new)") });
        }
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if k.bool_opt(flag)?.unwrap_or(false) {
                return Err(ModelError::Unsupported { path: path.to_path_buf(), reason: format!("`{flag}: true` is not supported") });
            }
        }
        if !k.bool_opt("scale_attn_weights")?.unwrap_or(true) {
            return Err(ModelError::Unsupported { path: path.to_path_buf(), reason: "`scale_attn_weights: false` is not supported".into() });
        }
        let n_embd = k.usize_req("n_embd")?;
        let n_head = k.usize_req("n_head")?;
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(ModelError::Unsupported { path: path.to_path_buf(), reason: format!("n_embd = {n_embd} is not a multiple of n_head = {n_head}") });
        }
        Ok(Self {
            vocab_size: k.usize_req("vocab_size")?,
            n_embd,
            n_layer: k.usize_req("n_layer")?,
            n_head,
            n_positions: k.usize_opt("n_positions")?.unwrap_or(1024),
            n_inner: k.usize_opt("n_inner")?.unwrap_or(4 * n_embd),
            layer_norm_epsilon: k.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-5),
            bos_token_id: k.ids("bos_token_id")?.first().copied(),
            eos_token_ids: k.ids("eos_token_id")?,
            pad_token_id: k.ids("pad_token_id")?.first().copied(),
            raw: v.clone(),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

}
