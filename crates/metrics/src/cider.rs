//! CIDEr-D as pycocoevalcap's `Cider` computes it (on PTB-tokenized captions).
//!
//! n = 1..4 tf-idf vectors, document frequencies from the references of the evaluated
//! corpus (`idf = ln(#MRs) - ln(max(1, df))`), clipped cosine similarity per order, a
//! Gaussian length penalty (`sigma = 6`, on the caption "lengths" pycocoevalcap uses, which
//! are bigram counts), averaged over orders and references, times 10, mean over MRs.
//! With a single MR every idf is 0, so the score is 0.

use crate::ngrams::{FxHashMap, NGram, Vocab};
use crate::text::py_split;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// `numpy.mean` of a float64 vector (pairwise summation, as numpy does).
pub fn np_mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    pairwise_sum(x) / x.len() as f64
}

fn pairwise_sum(x: &[f64]) -> f64 {
    // numpy's pairwise summation: blocks of 8 accumulators below 128 elements
    const PW_BLOCKSIZE: usize = 128;
    let n = x.len();
    if n < 8 {
        let mut s = 0.0;
        for &v in x {
            s += v;
        }
        s
    } else if n <= PW_BLOCKSIZE {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&x[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for k in 0..8 {
                r[k] += x[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += x[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&x[..n2]) + pairwise_sum(&x[n2..])
    }
}

/// Sorted n-gram counts of a sentence (orders 1..=4).
fn sorted_counts(toks: &[u32]) -> Vec<(NGram, u32)> {
    let mut v: Vec<NGram> = Vec::with_capacity(toks.len() * N);
    for n in 1..=N.min(toks.len()) {
        for w in toks.windows(n) {
            v.push(NGram::new(w));
        }
    }
    v.sort_unstable();
    let mut out: Vec<(NGram, u32)> = Vec::with_capacity(v.len());
    for g in v {
        match out.last_mut() {
            Some((h, c)) if *h == g => *c += 1,
            _ => out.push((g, 1)),
        }
    }
    out
}

struct Vecs {
    /// per order: (n-gram, tf-idf weight), sorted by n-gram
    vec: [Vec<(NGram, f64)>; N],
    norm: [f64; N],
    length: f64,
}

fn counts2vec(counts: &[(NGram, u32)], df: &FxHashMap<NGram, f64>, ref_len: f64) -> Vecs {
    let mut v = Vecs {
        vec: Default::default(),
        norm: [0.0; N],
        length: 0.0,
    };
    for (g, tf) in counts {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = g.len() - 1;
        let w = *tf as f64 * (ref_len - d);
        v.vec[n].push((*g, w));
        v.norm[n] += w * w;
        if n == 1 {
            v.length += *tf as f64;
        }
    }
    for x in v.norm.iter_mut() {
        *x = x.sqrt();
    }
    v
}

fn sim(h: &Vecs, r: &Vecs) -> [f64; N] {
    let delta = h.length - r.length;
    let mut val = [0.0; N];
    for n in 0..N {
        let rv = &r.vec[n];
        let mut k = 0;
        for (g, wh) in &h.vec[n] {
            while k < rv.len() && rv[k].0 < *g {
                k += 1;
            }
            let wr = if k < rv.len() && rv[k].0 == *g {
                rv[k].1
            } else {
                0.0
            };
            val[n] += wh.min(wr) * wr;
        }
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            val[n] /= h.norm[n] * r.norm[n];
        }
        val[n] *= std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    }
    val
}

/// Per-MR CIDEr-D scores of tokenized hypotheses against tokenized references.
pub fn cider_d_sentences(hyps: &[String], refs: &[Vec<String>]) -> Vec<f64> {
    let mut vocab = Vocab::default();
    let mut ids = |s: &str| -> Vec<u32> {
        let w: Vec<&str> = py_split(s).collect();
        vocab.ids(&w)
    };
    let hyp_counts: Vec<Vec<(NGram, u32)>> = hyps.iter().map(|h| sorted_counts(&ids(h))).collect();
    let ref_counts: Vec<Vec<Vec<(NGram, u32)>>> = refs
        .iter()
        .map(|g| g.iter().map(|r| sorted_counts(&ids(r))).collect())
        .collect();
    // document frequency: number of MRs whose references contain the n-gram
    let mut df: FxHashMap<NGram, f64> = FxHashMap::default();
    let mut seen: Vec<NGram> = Vec::new();
    for g in &ref_counts {
        seen.clear();
        seen.extend(g.iter().flat_map(|r| r.iter().map(|x| x.0)));
        seen.sort_unstable();
        seen.dedup();
        for k in &seen {
            *df.entry(*k).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (refs.len() as f64).ln();
    hyp_counts
        .iter()
        .zip(&ref_counts)
        .map(|(hc, rcs)| {
            let hv = counts2vec(hc, &df, ref_len);
            let mut score = [0.0f64; N];
            for rc in rcs {
                let rv = counts2vec(rc, &df, ref_len);
                let s = sim(&hv, &rv);
                for n in 0..N {
                    score[n] += s[n];
                }
            }
            let mut avg = np_mean(&score);
            avg /= rcs.len() as f64;
            avg * 10.0
        })
        .collect()
}

/// Corpus CIDEr-D: mean of the per-MR scores.
pub fn cider_d(hyps: &[String], refs: &[Vec<String>]) -> f64 {
    if hyps.is_empty() {
        return 0.0;
    }
    np_mean(&cider_d_sentences(hyps, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_mr_scores_zero() {
        assert_eq!(cider_d(&["a b c".into()], &[vec!["a b c".into()]]), 0.0);
    }

    #[test]
    fn identical_better_than_different() {
        let refs = vec![vec!["a b c d".to_owned()], vec!["e f g h".to_owned()]];
        let same = cider_d(&["a b c d".into(), "e f g h".into()], &refs);
        let diff = cider_d(&["e f g h".into(), "a b c d".into()], &refs);
        assert!(same > 1.0 && diff == 0.0, "{same} {diff}");
    }

    #[test]
    fn numpy_mean() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64).sqrt()).collect();
        let m = np_mean(&x);
        assert!((m - x.iter().sum::<f64>() / 1000.0).abs() < 1e-12);
    }
}
