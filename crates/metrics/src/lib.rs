//! E2E NLG Challenge metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) computed the way the
//! official scripts (github.com/tuetschek/e2e-metrics `measure_scores.py`) compute them:
//!
//! * BLEU, NIST: `mteval-v13a.pl` (or its Python port with [`BleuNistMode::PythonPort`]);
//! * METEOR 1.5 (`-l en -norm`), ROUGE-L, CIDEr-D: the MS-COCO caption evaluation code
//!   (pycocoevalcap), after its PTB tokenization.
//!
//! # Fidelity
//!
//! Checked against the official implementations on the E2E test set (630 MRs, 4,693
//! references) with varied outputs (`tests/golden.rs`, `scripts/metrics_golden.py`):
//! BLEU and NIST equal mteval-v13a.pl's (and `pymteval.py`'s with
//! [`BleuNistMode::PythonPort`]) to ~1e-11; METEOR, ROUGE-L and CIDEr equal
//! pycocoevalcap's bit for bit. The PTB tokenizer is a re-implementation of CoreNLP 3.4.1's
//! lexer behaviour ([`ptb_tokenize`]); the METEOR aligner reproduces METEOR 1.5's search
//! including its quirks ([`meteor`]).
//!
//! # Performance
//!
//! The whole E2E test set scores in about 1 s on two cores (METEOR included; loading the
//! METEOR data adds ~0.2 s, so reuse it with [`MeteorSource::Loaded`] when scoring
//! repeatedly). The first METEOR use builds a paraphrase index (~5 s, ~95 MB on disk).
//!
//! ```no_run
//! use lowrank_metrics::{read_hypotheses, read_references, score_all, format_table, ScoreOptions};
//! let hyps = read_hypotheses("outputs.txt")?;
//! let refs = read_references("data/e2e/testset_w_refs.csv")?;
//! let scores = score_all(&hyps, &refs, &ScoreOptions::default())?;
//! print!("{}", format_table(&scores));
//! # Ok::<(), lowrank_metrics::MetricsError>(())
//! ```

// index loops mirror the reference implementations' arithmetic order
#![allow(clippy::needless_range_loop)]

pub mod bleu;
pub mod cider;
pub mod error;
pub mod meteor;
pub mod mteval;
pub mod ngrams;
pub mod nist;
pub mod ptb_tokenize;
pub mod refs_io;
pub mod report;
pub mod rouge_l;
pub mod sacrebleu;
pub mod text;
pub mod tokenize_13a;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::MetricsError;
pub use meteor::{Meteor, METEOR_DATA_ENV};
pub use mteval::BleuNistMode;
pub use refs_io::{read_hypotheses, read_references};
pub use report::{format_table, Scores};
pub use sacrebleu::SacreBleu;

/// Where METEOR's resources come from.
#[derive(Clone, Default)]
pub enum MeteorSource {
    /// `$LOWRANK_METEOR_DATA`, else `~/.cache/lowrank/meteor`.
    #[default]
    Auto,
    /// An explicit data directory.
    Dir(PathBuf),
    /// Already loaded resources (reuse across calls).
    Loaded(Arc<Meteor>),
    /// Do not compute METEOR.
    Disabled,
}

/// Options of [`score_all`].
#[derive(Clone, Default)]
pub struct ScoreOptions {
    pub bleu_nist_mode: BleuNistMode,
    pub meteor: MeteorSource,
}

/// Checks a corpus before scoring: as many reference groups as hypotheses, something to score,
/// no empty group, and not every reference empty (a wrong reference column, say).
pub fn check_inputs(hyps: &[String], refs: &[Vec<String>]) -> Result<(), MetricsError> {
    if hyps.len() != refs.len() {
        return Err(MetricsError::LengthMismatch {
            hyps: hyps.len(),
            refs: refs.len(),
        });
    }
    if hyps.is_empty() {
        return Err(MetricsError::EmptyCorpus);
    }
    if let Some(index) = refs.iter().position(|g| g.is_empty()) {
        return Err(MetricsError::EmptyReferenceGroup { index });
    }
    if refs.iter().flatten().all(|r| r.trim().is_empty()) {
        return Err(MetricsError::AllReferencesEmpty);
    }
    Ok(())
}

/// BLEU (as a fraction) and NIST.
pub fn bleu_nist(
    hyps: &[String],
    refs: &[Vec<String>],
    mode: BleuNistMode,
) -> Result<(f64, f64), MetricsError> {
    check_inputs(hyps, refs)?;
    let c = mteval::MtevalCorpus::new(hyps, refs, mode);
    Ok((bleu::corpus_bleu(&c), nist::corpus_nist(&c)))
}

/// Hypotheses and references after pycocoevalcap's PTB tokenization.
pub struct CocoTokenized {
    pub hyps: Vec<String>,
    pub refs: Vec<Vec<String>>,
}

/// Tokenize hypotheses and references as pycocoevalcap does (references and hypotheses
/// are tokenized as two separate streams, like the two CoreNLP calls).
pub fn coco_tokenize_corpus(hyps: &[String], refs: &[Vec<String>]) -> CocoTokenized {
    let flat: Vec<String> = refs.iter().flatten().cloned().collect();
    let mut flat_tok = ptb_tokenize::coco_tokenize(&flat).into_iter();
    let refs_t = refs
        .iter()
        .map(|g| g.iter().map(|_| flat_tok.next().unwrap()).collect())
        .collect();
    CocoTokenized {
        hyps: ptb_tokenize::coco_tokenize(hyps),
        refs: refs_t,
    }
}

/// Compute all five metrics.
pub fn score_all(
    hyps: &[String],
    refs: &[Vec<String>],
    opts: &ScoreOptions,
) -> Result<Scores, MetricsError> {
    check_inputs(hyps, refs)?;
    let (bleu, nist) = bleu_nist(hyps, refs, opts.bleu_nist_mode)?;
    let tok = coco_tokenize_corpus(hyps, refs);
    let rouge = rouge_l::rouge_l(&tok.hyps, &tok.refs);
    let cider = cider::cider_d(&tok.hyps, &tok.refs);
    let (meteor, reason) = match &opts.meteor {
        MeteorSource::Disabled => (None, Some("disabled".to_owned())),
        src => {
            let m = match src {
                MeteorSource::Loaded(m) => Ok(m.clone()),
                MeteorSource::Dir(d) => Meteor::load(d).map(Arc::new),
                _ => Meteor::load_default().map(Arc::new),
            };
            match m {
                Ok(m) => (Some(m.corpus_score(&tok.hyps, &tok.refs)), None),
                Err(e) => (None, Some(e.to_string())),
            }
        }
    };
    Ok(Scores {
        bleu,
        nist,
        meteor,
        meteor_unavailable_reason: reason,
        rouge_l: rouge,
        cider,
    })
}
