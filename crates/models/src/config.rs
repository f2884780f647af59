//! Model configuration as read from a Hugging Face `config.json` or GGUF metadata.
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Rotary position scaling (`rope_scaling` in config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// The decoder-only Llama family (Llama, SmolLM2, Qwen2, Mistral-style configs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `LlamaForCausalLM`, `Qwen2ForCausalLM`, ...
    pub architecture: String,
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// Typed access to a config.json object that names the file and key when one is missing.
pub(crate) struct Keys<'a> {
    pub path: &'a Path,
    pub v: &'a Value,
}

impl Keys<'_> {
    pub(crate) fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingConfigKey { path: self.path.to_path_buf(), key: key.to_string() }
    }
    /// `key` present with a value of the wrong type (null counts as absent).
    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ModelError {
        let shown = found.to_string();
        let shown = if shown.chars().count() > 40 { format!("{}…", shown.chars().take(40).collect::<String>()) } else { shown };
        ModelError::ConfigKeyType { path: self.path.to_path_buf(), key: key.to_string(), expected: expected.to_string(), found: shown }
    }
    fn present(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }
    pub(crate) fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }
    pub(crate) fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.present(key) {
            None => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| self.wrong_type(key, "a non-negative integer", x)),
        }
    }
    pub(crate) fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.present(key) {
            None => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", x)),
        }
    }
    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.present(key) {
            None => Ok(None),
            Some(x) => x.as_bool().map(Some).ok_or_else(|| self.wrong_type(key, "true or false", x)),
        }
    }
    /// A token id or a list of them (empty when absent).
    pub(crate) fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let id = |x: &Value| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32);
        match self.present(key) {
            None => Ok(vec![]),
            Some(x @ Value::Number(_)) => id(x).map(|i| vec![i]).ok_or_else(|| self.wrong_type(key, "a token id", x)),
            Some(Value::Array(a)) => a.iter().map(|x| id(x).ok_or_else(|| self.wrong_type(key, "a list of token ids", x))).collect(),
            Some(x) => Err(self.wrong_type(key, "a token id or a list of them", x)),
        }
    }
    /// A string (None when absent).
    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.present(key) {
            None => Ok(None),
            Some(x) => x.as_str().map(Some).ok_or_else(|| self.wrong_type(key, "a string", x)),
        }
    }
}

impl LlamaConfig {
    /// Reads `config.json`; names the file and the key when a required key is missing.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        Self::from_json(&v, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let k = Keys { path, v };
        let architecture = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or("LlamaForCausalLM")
            .to_string();
        let model_type = k.str_opt("model_type")?.unwrap_or("llama").to_string();
        match model_type.as_str() {
            "llama" | "qwen2" | "mistral" => {}
            other => {
                return Err(ModelError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("model_type `{other}` (supported: llama, qwen2, mistral)"),
                })
            }
        }
        let hidden_size = k.usize_req("hidden_size")?;
        let num_attention_heads = k.usize_req("num_attention_heads")?;
        let head_dim = k.usize_opt("head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("");
                let f = |key: &str| -> Result<f64> {
                    rs.get(key).and_then(Value::as_f64).ok_or_else(|| k.missing(&format!("rope_scaling.{key}")))
                };
                match kind {
                    "linear" => Some(RopeScaling::Linear { factor: f("factor")? }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    }),
                    "default" => None,
                    other => {
                        return Err(ModelError::Unsupported {
                            path: path.to_path_buf(),
                            reason: format!("rope_scaling type `{other}` (supported: linear, llama3)"),
                        })
                    }
                }
            }
        };
        Ok(Self {
            hidden_size,
            intermediate_size: k.usize_req("intermediate_size")?,
            num_hidden_layers: k.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: k.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: k.usize_req("vocab_size")?,
            rms_norm_eps: k.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            // transformers 5 keeps it under `rope_parameters`.
            rope_theta: k
                .f64_opt("rope_theta")?
                .or_else(|| v.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Value::as_f64))
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: k.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: k.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: k.bool_opt("attention_bias")?.unwrap_or(model_type == "qwen2"),
            bos_token_id: k.ids("bos_token_id")?.first().copied(),
            eos_token_ids: k.ids("eos_token_id")?,
            pad_token_id: k.ids("pad_token_id")?.first().copied(),
            architecture,
            model_type,
        })
    }

    /// A `config.json` that `transformers` loads (used when merging a GGUF base to a HF folder).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.model_type == "llama" {
            v["attention_bias"] = Value::Bool(self.attention_bias);
            v["mlp_bias"] = Value::Bool(false);
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        if let Some(p) = self.pad_token_id {
            v["pad_token_id"] = p.into();
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": factor,
                    "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings})
            }
        }
        v
    }
}
