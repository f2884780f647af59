//! GGUF (llama.cpp) files: metadata → [`LlamaConfig`], tensors dequantized and renamed to the
//! Hugging Face layout (Q and K rows un-permuted), tokenizer rebuilt from the metadata.
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::packed_matrix::PackedMatrix;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn gguf_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), reason: reason.to_string() }
}

/// An opened GGUF file: its metadata and tensor directory.
pub struct GgufFile {
    pub path: std::path::PathBuf,
    pub content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut f).map_err(|e| gguf_err(path, format!("{e} (truncated or not a GGUF file?)")))?;
        let file_len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
        Self::check_tensor_extents(path, &content, file_len)?;
        Ok(Self { path: path.to_path_buf(), content })
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingConfigKey { path: self.path.clone(), key: key.to_string() })
    }

    fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self.meta(key)?;
        v.to_u32().or_else(|_| v.to_u64().map(|x| x as u32)).map_err(|e| gguf_err(&self.path, format!("{key}: {e}")))
    }

    fn meta_f32_opt(&self, key: &str) -> Option<f32> {
        self.content.metadata.get(key).and_then(|v| v.to_f32().ok())
    }

    fn meta_str_opt(&self, key: &str) -> Option<String> {
        self.content.metadata.get(key).and_then(|v| v.to_string().ok().cloned())
    }

    fn meta_u32_opt(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }

    /// `general.architecture`; only `llama` and `qwen2` are read.
    pub fn architecture(&self) -> Result<String> {
        Ok(self.meta("general.architecture")?.to_string().map_err(|e| gguf_err(&self.path, e))?.clone())
    }

    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        if arch != "llama" && arch != "qwen2" {
            return Err(ModelError::Unsupported { path: self.path.clone(), reason: format!("GGUF architecture `{arch}` (supported: llama, qwen2)") });
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden_size = self.meta_u32(&k("embedding_length"))? as usize;
        let heads = self.meta_u32(&k("attention.head_count"))? as usize;
        let kv_heads = self.meta_u32_opt(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
        let vocab_size = match self.meta_u32_opt(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self.meta("tokenizer.ggml.tokens")?.to_vec().map_err(|e| gguf_err(&self.path, e))?.len(),
        };
        let head_dim = self.meta_u32_opt(&k("attention.key_length")).map(|v| v as usize).unwrap_or(hidden_size / heads.max(1));
        let eos = self.meta_u32_opt("tokenizer.ggml.eos_token_id");
        Ok(LlamaConfig {
            architecture: if arch == "qwen2" { "Qwen2ForCausalLM".into() } else { "LlamaForCausalLM".into() },
            model_type: arch.clone(),
            hidden_size,
            intermediate_size: self.meta_u32(&k("feed_forward_length"))? as usize,
            num_hidden_layers: self.meta_u32(&k("block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: self.meta_f32_opt(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
            rope_theta: self.meta_f32_opt(&k("rope.freq_base")).unwrap_or(10_000.0) as f64,
            rope_scaling: None,
            max_position_embeddings: self.meta_u32_opt(&k("context_length")).unwrap_or(2048) as usize,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            bos_token_id: self.meta_u32_opt("tokenizer.ggml.bos_token_id"),
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: self.meta_u32_opt("tokenizer.ggml.padding_token_id"),
        })
    }

    /// All tensors under Hugging Face names, dequantized to `dtype`; with `keep_packed` (CPU,
    /// f32) the linear layers' Q4_0 / Q4_1 / Q8_0 weights stay block-quantized instead
    /// ([`Weights::packed`]).
    pub fn weights(&self, cfg: &LlamaConfig, device: &Device, dtype: DType, keep_packed: bool) -> Result<Weights> {
        let keep_packed = keep_packed && device.is_cpu() && dtype == DType::F32;
        let mut f = std::fs::File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut tensors = BTreeMap::new();
        let mut packed = BTreeMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(hf) = hf_name(name) else {
                // rope_freqs and other llama.cpp-only tensors have no HF counterpart.
                continue;
            };
            let q = self.content.tensor(&mut f, name, &Device::Cpu).map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
            // NaN or infinity, read off the raw blocks (their scales) before anything expands them.
            let raw_bad = crate::finite::count_nonfinite_ggml(q.dtype(), &q.data().map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?);
            if let Some(bad @ 1..) = raw_bad {
                return Err(ModelError::NonFinite { what: format!("{} (damaged weights)", self.path.display()), name: name.clone(), count: bad });
            }
            let rotary_heads = if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
                Some(cfg.num_attention_heads)
            } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
                Some(cfg.num_key_value_heads)
            } else {
                None
            };
            if keep_packed && is_linear_weight(name) {
                let matrix = PackedMatrix::from_qtensor(&q).map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
                if let Some(matrix) = matrix {
                    let matrix = match rotary_heads {
                        Some(heads) => {
                            let (rows, _) = matrix.dims();
                            if heads == 0 || rows % (2 * heads) != 0 {
                                return Err(gguf_err(&self.path, format!("tensor `{name}`: {rows} rows do not split into {heads} rotary heads")));
                            }
                            matrix.permute_rows(|i| unpermuted_source_row(i, rows / heads))
                        }
                        None => matrix,
                    };
                    packed.insert(hf, Arc::new(matrix));
                    continue;
                }
            }
            let mut t = q.dequantize(&Device::Cpu).map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
            let bad = if raw_bad.is_none() { crate::finite::count_nonfinite(&t)? } else { 0 };
            if bad > 0 {
                return Err(ModelError::NonFinite { what: format!("{} (damaged weights)", self.path.display()), name: name.clone(), count: bad });
            }
            if let Some(heads) = rotary_heads {
                t = unpermute_rotary(&t, heads)?;
            }
            tensors.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
        }
        Ok(Weights { tensors, packed, source: self.path.display().to_string(), ..Default::default() })
    }

    /// Every tensor's data lies inside the file (a truncated download fails here, naming the first
/// tensor cut off, not later or never).
fn check_tensor_extents(path: &Path, content: &Content, file_len: u64) -> Result<()> {
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    for (name, info) in infos {
        let Some(elements) = info.shape.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            return Err(gguf_err(path, format!("tensor `{name}`: shape {:?} has more values than memory can address", info.shape.dims())));
        };
        if elements == 0 {
            // No weight is empty; and candle reads an empty tensor through a misaligned pointer
            // (found by fuzzing).
            return Err(gguf_err(path, format!("tensor `{name}` has no values (shape {:?})", info.shape.dims())));
        }
        let block = info.ggml_dtype.block_size();
        if block == 0 || elements % block != 0 {
            return Err(gguf_err(path, format!("tensor `{name}`: {elements} values do not fill whole {:?} blocks of {block}", info.ggml_dtype)));
        }
        let bytes = ((elements / block) as u64).checked_mul(info.ggml_dtype.type_size() as u64);
        let end = bytes.and_then(|b| content.tensor_data_offset.checked_add(info.offset).and_then(|o| o.checked_add(b)));
        match end {
            None => return Err(gguf_err(path, format!("tensor `{name}`: its size or offset overflows (a damaged file)"))),
            Some(e) if e > file_len => {
                return Err(gguf_err(path, format!("tensor `{name}` needs bytes up to {e} but the file has {file_len} (truncated download?)")));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Rebuilds the byte-level BPE tokenizer stored in the metadata (`tokenizer.ggml.*`).
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let model = self.meta_str_opt("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(ModelError::Unsupported { path: self.path.clone(), reason: format!("tokenizer.ggml.model `{model}` (supported: gpt2 byte-level BPE)") });
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            self.meta(key)?
                .to_vec()
                .map_err(|e| gguf_err(&self.path, format!("{key}: {e}")))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| gguf_err(&self.path, format!("{key}: {e}"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match self.content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map_err(|e| gguf_err(&self.path, e))?.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = self.meta_str_opt("tokenizer.ggml.pre").unwrap_or_default();
        TextTokenizer::from_bpe_parts(
            &self.path,
            &tokens,
            &merges,
            &types,
            &pre,
            self.meta_u32_opt("tokenizer.ggml.bos_token_id"),
            self.meta_u32_opt("tokenizer.ggml.eos_token_id"),
            self.meta_u32_opt("tokenizer.ggml.padding_token_id"),
            self.meta_str_opt("tokenizer.chat_template"),
        )
    }
}

/// llama.cpp tensor name → Hugging Face name.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (part, kind) = tail.rsplit_once('.')?;
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// A linear layer's weight inside a block (`blk.N.attn_q.weight`, `blk.N.ffn_down.weight`, ...).
fn is_linear_weight(gguf: &str) -> bool {
    gguf.starts_with("blk.") && gguf.ends_with(".weight") && ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].iter().any(|p| gguf.contains(&format!(".{p}.")))
}

/// Row `i` of the un-permuted matrix comes from this row of the stored one (heads of
/// `head_rows` rows; see [`unpermute_rotary`]): stored `(head, j, parity)` → `(head, parity, j)`.
fn unpermuted_source_row(i: usize, head_rows: usize) -> usize {
    let half = head_rows / 2;
    let (head, within) = (i / head_rows, i % head_rows);
    let (parity, j) = (within / half, within % half);
    head * head_rows + j * 2 + parity
}

/// Undoes llama.cpp's rotary row permutation: rows stored as `(heads, head_dim/2, 2, ...)` back
/// to `(heads, 2, head_dim/2, ...)`. `w: (heads·head_dim, d_in)` or a bias `(heads·head_dim)`.
pub fn unpermute_rotary(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    let t = w.reshape((heads, half, 2, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(t.reshape(dims)?)
}
