//! The configuration of any supported model, dispatched on `config.json`'s `model_type`.
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gpt2_config::Gpt2Config;
use crate::t5_config::T5Config;
use serde_json::Value;
use std::path::Path;

/// Which family a model belongs to, with its configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// Llama, SmolLM2, Qwen2, Mistral-style decoders.
    Llama(LlamaConfig),
    Gpt2(Gpt2Config),
    /// T5 v1.0, v1.1 and FLAN-T5 encoder–decoders.
    T5(T5Config),
}

impl ModelConfig {
    /// Reads `config.json`; names the file and the key when a required key is missing.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        Self::from_json(&v, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        match v.get("model_type").and_then(Value::as_str).unwrap_or("llama") {
            "gpt2" => Ok(ModelConfig::Gpt2(Gpt2Config::from_json(v, path)?)),
            "t5" => Ok(ModelConfig::T5(T5Config::from_json(v, path)?)),
            "llama" | "qwen2" | "mistral" => Ok(ModelConfig::Llama(LlamaConfig::from_json(v, path)?)),
            other => Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("model_type `{other}` (supported: llama, qwen2, mistral, gpt2, t5)"),
            }),
        }
    }

    /// `llama`, `qwen2`, `gpt2`, `t5`, ...
    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::Llama(c) => &c.model_type,
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::T5(_) => "t5",
        }
    }

    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, ModelConfig::T5(_))
    }

    /// PEFT's `task_type` for adapters of this model.
    pub fn peft_task_type(&self) -> &'static str {
        if self.is_encoder_decoder() {
            "SEQ_2_SEQ_LM"
        } else {
            "CAUSAL_LM"
        }
    }

    /// PEFT's default LoRA targets for this family (`q_proj, v_proj`; GPT-2 `c_attn`; T5 `q, v`).
    pub fn default_lora_targets(&self) -> Vec<String> {
        let names: &[&str] = match self {
            ModelConfig::Llama(_) => &["q_proj", "v_proj"],
            ModelConfig::Gpt2(_) => &["c_attn"],
            ModelConfig::T5(_) => &["q", "v"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Whether GPT-2-style Conv1D layers are present (PEFT's `fan_in_fan_out`).
    pub fn fan_in_fan_out(&self) -> bool {
        matches!(self, ModelConfig::Gpt2(_))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::T5(c) => c.vocab_size,
        }
    }

    /// The output head shares the token embedding matrix.
    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ModelConfig::Llama(c) => c.tie_word_embeddings,
            ModelConfig::Gpt2(_) => true,
            ModelConfig::T5(c) => c.tie_word_embeddings,
        }
    }

    /// Longest sequence the model takes (T5 has no limit of its own: 512 by convention).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::T5(_) => 512,
        }
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Llama(c) => c.bos_token_id,
            ModelConfig::Gpt2(c) => c.bos_token_id,
            ModelConfig::T5(_) => None,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            ModelConfig::Llama(c) => c.eos_token_ids.clone(),
            ModelConfig::Gpt2(c) => c.eos_token_ids.clone(),
            ModelConfig::T5(c) => vec![c.eos_token_id],
        }
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Llama(c) => c.pad_token_id,
            ModelConfig::Gpt2(c) => c.pad_token_id,
            ModelConfig::T5(c) => Some(c.pad_token_id),
        }
    }

    /// A `config.json` that `transformers` loads, for a merged model.
    pub fn to_hf_json(&self) -> Value {
        match self {
            ModelConfig::Llama(c) => c.to_hf_json(),
            ModelConfig::Gpt2(c) => c.raw.clone(),
            ModelConfig::T5(c) => c.raw.clone(),
        }
    }

    /// One line describing the architecture, for `lowrank inspect`.
    pub fn summary(&self) -> String {
        match self {
            ModelConfig::Llama(c) => format!(
                "{} ({}): hidden {}, layers {}, heads {} (kv {}), intermediate {}, vocab {}, tied embeddings {}",
                c.architecture, c.model_type, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.vocab_size, c.tie_word_embeddings
            ),
            ModelConfig::Gpt2(c) => format!(
                "GPT2LMHeadModel (gpt2): n_embd {}, layers {}, heads {}, inner {}, positions {}, vocab {}, tied embeddings true",
                c.n_embd, c.n_layer, c.n_head, c.n_inner, c.n_positions, c.vocab_size
            ),
            ModelConfig::T5(c) => format!(
                "T5ForConditionalGeneration (t5): d_model {}, layers {} + {}, heads {} × d_kv {}, d_ff {} ({:?}), vocab {}, tied embeddings {}",
                c.d_model, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_kv, c.d_ff, c.feed_forward, c.vocab_size, c.tie_word_embeddings
            ),
        }
    }

    pub fn as_llama(&self) -> Option<&LlamaConfig> {
        match self {
            ModelConfig::Llama(c) => Some(c),
            _ => None,
        }
    }
}
