//! Tokenised, interned corpus shared by BLEU and NIST.

use serde::{Deserialize, Serialize};

use crate::ngrams::Vocab;
use crate::tokenize_13a::{tokenize_13a_perl, tokenize_13a_python};

/// Which implementation of BLEU/NIST the E2E scripts ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BleuNistMode {
    /// `mteval-v13a-sig.pl` (Perl), what `measure_scores.py` runs by default: the official
    /// E2E numbers.
    #[default]
    Official,
    /// `metrics/pymteval.py` (`measure_scores.py -p`). Its NIST averages reference lengths
    /// per segment (differs from Perl whenever the length penalty is active), and it counts
    /// an empty hypothesis as one (empty) token.
    PythonPort,
}

/// Hypotheses and references tokenised and interned for one [`BleuNistMode`].
pub struct MtevalCorpus {
    pub mode: BleuNistMode,
    pub hyps: Vec<Vec<u32>>,
    pub refs: Vec<Vec<Vec<u32>>>,
    pub vocab: Vocab,
}

impl MtevalCorpus {
    pub fn new(hyps: &[String], refs: &[Vec<String>], mode: BleuNistMode) -> Self {
        let mut vocab = Vocab::default();
        let tok = |s: &str| -> Vec<String> {
            match mode {
                BleuNistMode::Official => tokenize_13a_perl(s),
                BleuNistMode::PythonPort => tokenize_13a_python(s)
                    .into_iter()
                    .map(|t| t.to_lowercase())
                    .collect(),
            }
        };
        let hyps_t: Vec<Vec<u32>> = hyps.iter().map(|h| vocab.ids(&tok(h))).collect();
        let refs_t: Vec<Vec<Vec<u32>>> = refs
            .iter()
            .map(|g| g.iter().map(|r| vocab.ids(&tok(r))).collect())
            .collect();
        MtevalCorpus {
            mode,
            hyps: hyps_t,
            refs: refs_t,
            vocab,
        }
    }
}
