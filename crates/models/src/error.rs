//! Typed errors of the models crate: every variant names the file, key or shape at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    WriteIo { path: PathBuf, source: std::io::Error },
    #[error("{what}: `{name}` holds {count} NaN or infinite value(s)")]
    NonFinite { what: String, name: String, count: usize },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: missing required key `{key}`")]
    MissingConfigKey { path: PathBuf, key: String },
    #[error("{path}: key `{key}` must be {expected}, found {found}")]
    ConfigKeyType { path: PathBuf, key: String, expected: String, found: String },
    #[error("{path}: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("missing weight `{name}` (looked in {source_desc})")]
    MissingWeight { name: String, source_desc: String },
    #[error("weight `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{source_desc}: weight `{name}` is stored with shape {actual:?}, expected {expected:?} (Conv1D layout: (d_in, d_out))")]
    ShapeMismatchStored { name: String, source_desc: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    /// A failed write (or create, rename, remove) of `path`.
    pub fn write_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::WriteIo { path: path.into(), source }
    }
}
