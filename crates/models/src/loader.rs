//! Opens a model given as a Hugging Face folder or a `.gguf` file.
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::model_config::ModelConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::{load_hf_weights, Weights};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a model came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    HfFolder(PathBuf),
    Gguf(PathBuf),
}

/// Config, weights and tokenizer of a model, ready to build. Every linear weight is held
/// `(d_out, d_in)`, whatever the checkpoint's layout (GPT-2's Conv1D is transposed on load).
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub source: ModelSource,
}

/// Reads only the configuration (cheap: no tensor data).
pub fn load_config(path: &Path) -> Result<ModelConfig> {
    if !path.exists() {
        return Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist")));
    }
    if is_gguf(path) {
        Ok(ModelConfig::Llama(GgufFile::open(path)?.config()?))
    } else {
        ModelConfig::from_json_file(&path.join("config.json"))
    }
}

fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().map(|e| e.eq_ignore_ascii_case("gguf")).unwrap_or(false)
}

/// Brings a checkpoint's tensors to lowrank's in-memory layout: GPT-2 names get their
/// `transformer.` prefix (the original OpenAI conversion has none), attention-mask buffers and
/// tied copies of the embeddings are dropped, Conv1D weights become `(d_out, d_in)`.
pub fn normalize_weights(config: &ModelConfig, weights: &mut Weights) -> Result<()> {
    match config {
        ModelConfig::Gpt2(_) => {
            let old = std::mem::take(&mut weights.tensors);
            for (name, t) in old {
                if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight" {
                    continue;
                }
                let name = if name.starts_with("transformer.") { name } else { format!("transformer.{name}") };
                weights.tensors.insert(name, t);
            }
        }
        ModelConfig::T5(_) => {
            // A separate `lm_head.weight` is kept whatever the config says: transformers 5 writes
            // `tie_word_embeddings: true` next to FLAN-T5's own head.
            if weights.contains("shared.weight") {
                weights.tensors.remove("encoder.embed_tokens.weight");
                weights.tensors.remove("decoder.embed_tokens.weight");
            }
        }
        ModelConfig::Llama(_) => {}
    }
    let names = transposed_weight_names(config)?;
    transpose_named(weights, &names)?;
    weights.transposed.extend(names);
    Ok(())
}

/// Weights stored `(d_in, d_out)` in checkpoints (GPT-2's Conv1D: every linear layer of the
/// family, read off its layout); lowrank keeps every linear weight `(d_out, d_in)` in memory and
/// transposes these on load and save.
pub fn transposed_weight_names(config: &ModelConfig) -> Result<Vec<String>> {
    Ok(match config {
        ModelConfig::Gpt2(_) => crate::any_model::model_layout(config)?.linears.iter().filter(|l| l.part_of.is_none()).map(|l| format!("{}.weight", l.path)).collect(),
        _ => vec![],
    })
}

fn transpose_named(weights: &mut Weights, names: &[String]) -> Result<()> {
    for name in names {
        if let Some(t) = weights.tensors.get(name) {
            let t: Tensor = t.t()?.contiguous()?;
            weights.tensors.insert(name.clone(), t);
        }
    }
    Ok(())
}

/// The tensors as a Hugging Face checkpoint stores them (Conv1D weights back to `(d_in, d_out)`),
/// for writing a merged model.
pub fn checkpoint_tensors(config: &ModelConfig, weights: &Weights) -> Result<BTreeMap<String, Tensor>> {
    let mut w = Weights { tensors: weights.dense_tensors()?, source: weights.source.clone(), ..Default::default() };
    transpose_named(&mut w, &transposed_weight_names(config)?)?;
    Ok(w.tensors)
}

/// Loads a Hugging Face folder (`config.json`, `model.safetensors` or a sharded index,
/// `tokenizer.json`) or a `.gguf` file, with float weights in `dtype`.
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    load_model_with(path, device, dtype, false)
}

/// [`load_model`]; with `keep_quantized` a GGUF file's block-quantized linear weights stay
/// packed (CPU, f32: each is expanded for its gemm, with the same values), as QLoRA keeps a
/// 4-bit base model for training.
pub fn load_model_with(path: &Path, device: &Device, dtype: DType, keep_quantized: bool) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist")));
    }
    if is_gguf(path) {
        let g = GgufFile::open(path)?;
        let config = g.config()?;
        let tokenizer = g.tokenizer()?;
        let weights = g.weights(&config, device, dtype, keep_quantized)?;
        return Ok(LoadedModel { config: ModelConfig::Llama(config), weights, tokenizer, source: ModelSource::Gguf(path.to_path_buf()) });
    }
    if path.is_file() {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: "expected a Hugging Face model folder or a .gguf file".into(),
        });
    }
    let config = ModelConfig::from_json_file(&path.join("config.json"))?;
    let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"), config.bos_token_id(), &config.eos_token_ids(), config.pad_token_id())?;
    let mut weights = load_hf_weights(path, device, dtype)?;
    normalize_weights(&config, &mut weights)?;
    Ok(LoadedModel { config, weights, tokenizer, source: ModelSource::HfFolder(path.to_path_buf()) })
}
