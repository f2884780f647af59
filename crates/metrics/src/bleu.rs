//! Corpus-level BLEU-4 as `mteval-v13a.pl` (and `pymteval.py`) compute it for E2E.
//!
//! Counts are clipped by the maximum count over the references of a segment and the
//! brevity penalty uses the reference length closest to the hypothesis length (ties go to
//! the shorter reference). For the official (Perl) mode this equals
//! `sacrebleu.corpus_bleu(hyps, refs, lowercase=True)` on ASCII text; mteval only
//! lowercases ASCII letters.

use crate::mteval::{BleuNistMode, MtevalCorpus};
use crate::ngrams::{count_ngrams_into, max_ref_counts_into, FxHashMap};

const N: usize = 4;

/// Sufficient statistics of corpus BLEU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BleuStats {
    /// Clipped n-gram matches, n = 1..=4.
    pub matches: [i64; N],
    /// Hypothesis n-gram counts, n = 1..=4 (negative contributions possible in the
    /// Python port, which counts `len - n + 1` even for short hypotheses).
    pub totals: [i64; N],
    /// Sum of the closest reference lengths.
    pub ref_len: i64,
}

/// Collect BLEU statistics over the corpus.
pub fn bleu_stats(c: &MtevalCorpus) -> BleuStats {
    let mut st = BleuStats::default();
    let (mut maxref, mut scratch, mut hc) = (
        FxHashMap::default(),
        FxHashMap::default(),
        FxHashMap::default(),
    );
    for (hyp, refs) in c.hyps.iter().zip(&c.refs) {
        let l = hyp.len() as i64;
        max_ref_counts_into(refs, N, &mut maxref, &mut scratch);
        count_ngrams_into(hyp, N, &mut hc);
        for (g, &cnt) in hc.iter() {
            if let Some(&m) = maxref.get(g) {
                st.matches[g.len() - 1] += cnt.min(m) as i64;
            }
        }
        for n in 0..N {
            st.totals[n] += match c.mode {
                BleuNistMode::Official => (l - n as i64).max(0),
                BleuNistMode::PythonPort => l - n as i64,
            };
        }
        st.ref_len += match c.mode {
            BleuNistMode::Official => closest_ref_len_perl(l, refs),
            BleuNistMode::PythonPort => refs
                .iter()
                .map(|r| r.len() as i64)
                .min_by_key(|&rl| ((rl - l).abs(), rl))
                .unwrap_or(0),
        };
    }
    st
}

/// `brevity_penalty_closest` folded over the references in order: later empty references
/// (mteval's padding for MRs with fewer references) are ignored, the first one never is.
fn closest_ref_len_perl(l: i64, refs: &[Vec<u32>]) -> i64 {
    let mut cur = match refs.first() {
        Some(r) => r.len() as i64,
        None => return 0,
    };
    for r in &refs[1..] {
        let rl = r.len() as i64;
        if rl == 0 {
            continue;
        }
        let (dn, dc) = ((l - rl).abs(), (l - cur).abs());
        if dn < dc || (dn == dc && cur > rl) {
            cur = rl;
        }
    }
    cur
}

/// BLEU from statistics, as a fraction in [0, 1].
pub fn bleu_from_stats(st: &BleuStats, mode: BleuNistMode) -> f64 {
    match mode {
        BleuNistMode::Official => {
            // mteval `bleu_score` (with its default smoothing of zero-match orders)
            let t1 = st.totals[0] as f64;
            let exp_len_score = if st.totals[0] > 0 {
                (1.0 - st.ref_len as f64 / t1).min(0.0).exp()
            } else {
                0.0
            };
            let mut score = 0.0;
            let mut smooth = 1.0;
            for n in 0..N {
                let iscore = if st.totals[n] == 0 {
                    0.0
                } else if st.matches[n] == 0 {
                    smooth *= 2.0;
                    (1.0 / (smooth * st.totals[n] as f64)).ln()
                } else {
                    (st.matches[n] as f64 / st.totals[n] as f64).ln()
                };
                score += iscore;
            }
            (score / N as f64).exp() * exp_len_score
        }
        BleuNistMode::PythonPort => {
            let c0 = st.totals[0] as f64;
            let r = st.ref_len as f64;
            let bp = if c0 <= r {
                (1.0 - r / if c0 != 0.0 { c0 } else { 1e-5 }).exp()
            } else {
                1.0
            };
            let mut log_sum = 0.0;
            for n in 0..N {
                let hits = (st.matches[n] as f64).max(1e-15);
                let len = (st.totals[n] as f64).max(1e-9);
                log_sum += (hits / len).ln();
            }
            bp * ((1.0 / N as f64) * log_sum).exp()
        }
    }
}

/// Corpus BLEU of a prepared corpus.
pub fn corpus_bleu(c: &MtevalCorpus) -> f64 {
    bleu_from_stats(&bleu_stats(c), c.mode)
}
