//! Corpus-level NIST (n = 5) as `mteval-v13a.pl` / `pymteval.py` compute it for E2E.
//!
//! Information weights come from the n-gram counts over *all* references of the corpus:
//! `info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn))` (for unigrams the numerator is the
//! total number of reference words). The score is `sum_n (sum of info of matched n-grams /
//! number of hypothesis n-grams)` times the length penalty
//! `exp(-beta * ln^2(min(1, hyp_words / avg_ref_words)))`, `beta = -ln 0.5 / ln^2 1.5`.
//!
//! The two modes differ in the average reference length: Perl divides the total reference
//! words by the average number of (non-empty) references per segment, the Python port sums
//! per-segment averages.

use crate::mteval::{BleuNistMode, MtevalCorpus};
use crate::ngrams::{count_ngrams_into, max_ref_counts_into, FxHashMap, NGram};

const N: usize = 5;

/// NIST's beta: the penalty is 0.5 when the hypothesis is 2/3 of the reference length.
pub fn nist_beta() -> f64 {
    -(0.5f64).ln() / (1.5f64).ln() / (1.5f64).ln()
}

fn length_penalty(ratio: f64) -> f64 {
    if ratio >= 1.0 {
        1.0
    } else if ratio <= 0.0 {
        0.0
    } else {
        (-nist_beta() * ratio.ln() * ratio.ln()).exp()
    }
}

/// Corpus NIST of a prepared corpus.
pub fn corpus_nist(c: &MtevalCorpus) -> f64 {
    // reference n-gram counts over the whole corpus
    let mut ref_counts: FxHashMap<NGram, u64> = FxHashMap::default();
    let mut tot_words: u64 = 0;
    for refs in &c.refs {
        for r in refs {
            tot_words += r.len() as u64;
            for n in 1..=N.min(r.len()) {
                for w in r.windows(n) {
                    *ref_counts.entry(NGram::new(w)).or_insert(0) += 1;
                }
            }
        }
    }
    // mteval treats the (n-1)-gram "0" as false and uses the total word count instead
    let zero_id = c
        .vocab
        .words
        .iter()
        .position(|w| w == "0")
        .map(|i| i as u32);
    let info = |g: &NGram| -> f64 {
        let cnt = match ref_counts.get(g) {
            Some(&x) => x as f64,
            None => return 0.0,
        };
        let denom = match g.prefix() {
            None => tot_words as f64,
            Some(p) => {
                if c.mode == BleuNistMode::Official && p.len() == 1 && Some(p.first()) == zero_id {
                    tot_words as f64
                } else {
                    ref_counts.get(&p).copied().unwrap_or(0) as f64
                }
            }
        };
        match c.mode {
            BleuNistMode::Official => -(cnt / denom).ln() / std::f64::consts::LN_2,
            BleuNistMode::PythonPort => (denom / cnt).ln() / std::f64::consts::LN_2,
        }
    };

    let mut hit_info = [0.0f64; N];
    let mut totals = [0i64; N];
    let mut ref_words_total: u64 = 0;
    let mut nonempty_refs: u64 = 0;
    let mut avg_ref_len_py = 0.0f64;
    let (mut maxref, mut scratch, mut hc) = (
        FxHashMap::default(),
        FxHashMap::default(),
        FxHashMap::default(),
    );
    for (hyp, refs) in c.hyps.iter().zip(&c.refs) {
        let l = hyp.len() as i64;
        max_ref_counts_into(refs, N, &mut maxref, &mut scratch);
        count_ngrams_into(hyp, N, &mut hc);
        let mut seg_info = [0.0f64; N];
        for (g, &cnt) in hc.iter() {
            if let Some(&m) = maxref.get(g) {
                let hits = cnt.min(m);
                if hits > 0 {
                    seg_info[g.len() - 1] += info(g) * hits as f64;
                }
            }
        }
        for n in 0..N {
            hit_info[n] += seg_info[n];
            totals[n] += match c.mode {
                BleuNistMode::Official => (l - n as i64).max(0),
                BleuNistMode::PythonPort => l - n as i64,
            };
        }
        let seg_ref_words: u64 = refs.iter().map(|r| r.len() as u64).sum();
        ref_words_total += seg_ref_words;
        nonempty_refs += refs.iter().filter(|r| !r.is_empty()).count() as u64;
        if !refs.is_empty() {
            avg_ref_len_py += seg_ref_words as f64 / refs.len() as f64;
        }
    }
    let nseg = c.hyps.len() as f64;
    match c.mode {
        BleuNistMode::Official => {
            let mut score = 0.0;
            for n in 0..N {
                score += hit_info[n] / (totals[n].max(1) as f64);
            }
            let nsys = nonempty_refs as f64 / nseg;
            let avg_ref = ref_words_total as f64 / nsys;
            if avg_ref.is_nan() || avg_ref <= 0.0 {
                return 0.0;
            }
            score * length_penalty(totals[0] as f64 / avg_ref)
        }
        BleuNistMode::PythonPort => {
            let mut score = 0.0;
            for n in 0..N {
                // Python raises ZeroDivisionError here; an empty order contributes nothing
                if totals[n] != 0 {
                    score += hit_info[n] / totals[n] as f64;
                }
            }
            if avg_ref_len_py == 0.0 {
                return 0.0;
            }
            score * length_penalty(totals[0] as f64 / avg_ref_len_py)
        }
    }
}
