//! Typed errors of the metrics library.

use std::path::PathBuf;

/// Everything that can go wrong while reading inputs or computing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (the METEOR table cache).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input file is not valid UTF-8.
    #[error("{path} is not valid UTF-8 (byte offset {offset})")]
    Utf8 { path: PathBuf, offset: usize },
    /// A CSV/TSV reference file is malformed.
    #[error("{path}: malformed CSV at line {line}: {message}")]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The number of hypotheses and of reference groups differ.
    #[error("number of hypotheses ({hyps}) differs from number of reference groups ({refs})")]
    LengthMismatch { hyps: usize, refs: usize },
    /// A reference group has no reference at all.
    #[error("reference group {index} is empty (every MR needs at least one reference)")]
    EmptyReferenceGroup { index: usize },
    /// Every reference is the empty string.
    #[error("every reference is empty (a wrong reference column?); nothing to score against")]
    AllReferencesEmpty,
    /// There is nothing to score.
    #[error("no hypotheses to score")]
    EmptyCorpus,
    /// METEOR resources are missing or unreadable.
    #[error("METEOR data unavailable: {0}")]
    MeteorData(String),
}

impl MetricsError {
    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Write { path: path.into(), source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.into(),
            source,
        }
    }
}
