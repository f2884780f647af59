//! Typed errors of the training crate.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: line {line}: {reason}")]
    Data { path: PathBuf, line: usize, reason: String },
    #[error("{path}: the data set is empty{hint}")]
    EmptyData { path: PathBuf, hint: String },
    #[error("{path}: no column `{column}`; columns: {available}")]
    MissingColumn { path: PathBuf, column: String, available: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("training stopped at step {step}: {what}")]
    NonFinite { step: usize, what: String },
    #[error("run folder {path} {reason}")]
    RunFolder { path: PathBuf, reason: String },
    #[error("{reason}; {kept}")]
    FinalWrite { reason: String, kept: String },
    #[error("cannot write {path}: {source}")]
    WriteIo { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Peft(#[from] lowrank_peft::PeftError),
    #[error(transparent)]
    Model(#[from] lowrank_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }

    /// A failed write (or create, rename, remove) of `path`.
    pub fn write_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::WriteIo { path: path.into(), source }
    }
}
