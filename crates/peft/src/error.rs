//! Typed errors of the adapter crate.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: missing required key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("target pattern `{pattern}` matches no module of the model; modules that exist: {available}")]
    NoMatch { pattern: String, available: String },
    #[error("invalid regular expression `{pattern}`: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("{file}: tensor `{key}` has shape {actual:?}, but the model's `{module}` needs {expected:?}")]
    ShapeMismatch { file: PathBuf, key: String, module: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{file}: tensor `{key}` is for module `{module}`, which the model does not have")]
    UnknownModule { file: PathBuf, key: String, module: String },
    #[error("{file}: missing tensor `{key}`")]
    MissingTensor { file: PathBuf, key: String },
    #[error("invalid adapter setting: {0}")]
    Invalid(String),
    #[error("{method} cannot be merged into the base weights: {reason}")]
    NotMergeable { method: String, reason: String },
    #[error("unknown PEFT method `{name}` (lowrank has: {known})")]
    UnknownMethod { name: String, known: String },
    #[error("{path}: peft_type `{peft_type}` is not supported (lowrank reads: {known})")]
    UnknownPeftType { path: PathBuf, peft_type: String, known: String },
    #[error("the adapter has a module `{module}` that the model never attached (its modules: {available})")]
    Unattached { module: String, available: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] lowrank_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, PeftError>;
