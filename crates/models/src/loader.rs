//! Opens a model given as a Hugging Face folder or a `.gguf` file.
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::TextTokenizer;
use crate::weights::{load_hf_weights, Weights};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// Where a model came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    HfFolder(PathBuf),
    Gguf(PathBuf),
}

/// Config, weights and tokenizer of a model, ready to build.
pub struct LoadedModel {
    pub config: LlamaConfig,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub source: ModelSource,
}

/// Reads only the configuration (cheap: no tensor data).
pub fn load_config(path: &Path) -> Result<LlamaConfig> {
    if is_gguf(path) {
        GgufFile::open(path)?.config()
    } else {
        LlamaConfig::from_json_file(&path.join("config.json"))
    }
}

fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().map(|e| e.eq_ignore_ascii_case("gguf")).unwrap_or(false)
}

/// Loads a Hugging Face folder (`config.json`, `model.safetensors` or a sharded index,
/// `tokenizer.json`) or a `.gguf` file, with float weights in `dtype`.
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist")));
    }
    if is_gguf(path) {
        let g = GgufFile::open(path)?;
        let config = g.config()?;
        let tokenizer = g.tokenizer()?;
        let weights = g.weights(&config, device, dtype)?;
        return Ok(LoadedModel { config, weights, tokenizer, source: ModelSource::Gguf(path.to_path_buf()) });
    }
    if path.is_file() {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            reason: "expected a Hugging Face model folder or a .gguf file".into(),
        });
    }
    let config = LlamaConfig::from_json_file(&path.join("config.json"))?;
    let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"), config.bos_token_id, &config.eos_token_ids, config.pad_token_id)?;
    let weights = load_hf_weights(path, device, dtype)?;
    Ok(LoadedModel { config, weights, tokenizer, source: ModelSource::HfFolder(path.to_path_buf()) })
}
