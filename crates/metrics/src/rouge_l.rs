//! ROUGE-L as pycocoevalcap computes it (on PTB-tokenized, punctuation-free captions).
//!
//! Per MR: `P = max_r LCS(h, r) / |h|`, `R = max_r LCS(h, r) / |r|` (maxima taken
//! separately), `F = (1 + b^2) P R / (R + b^2 P)` with `b = 1.2`; the corpus score is the
//! mean over MRs. Tokens are obtained with `str.split(" ")`, so an empty caption is one
//! empty token (and scores 0).

const BETA: f64 = 1.2;

/// Length of the longest common subsequence of two token sequences.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

/// ROUGE-L of one tokenized hypothesis against its tokenized references.
pub fn rouge_l_sentence(hyp: &str, refs: &[String]) -> f64 {
    let h: Vec<&str> = hyp.split(' ').collect();
    let mut p_max = 0.0f64;
    let mut r_max = 0.0f64;
    for r in refs {
        let rt: Vec<&str> = r.split(' ').collect();
        let l = lcs_len(&rt, &h) as f64;
        p_max = p_max.max(l / h.len() as f64);
        r_max = r_max.max(l / rt.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        ((1.0 + BETA * BETA) * p_max * r_max) / (r_max + BETA * BETA * p_max)
    } else {
        0.0
    }
}

/// Corpus ROUGE-L: mean of the sentence scores.
pub fn rouge_l(hyps: &[String], refs: &[Vec<String>]) -> f64 {
    if hyps.is_empty() {
        return 0.0;
    }
    let scores: Vec<f64> = hyps
        .iter()
        .zip(refs)
        .map(|(h, r)| rouge_l_sentence(h, r))
        .collect();
    crate::cider::np_mean(&scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs() {
        assert_eq!(lcs_len(&["a", "b", "c", "d"], &["b", "d"]), 2);
        assert_eq!(lcs_len::<&str>(&[], &["b"]), 0);
    }

    #[test]
    fn rouge_sentence() {
        assert!((rouge_l_sentence("a b c", &["a b c".into()]) - 1.0).abs() < 1e-12);
        assert_eq!(rouge_l_sentence("", &["a b".into()]), 0.0);
        // P = 2/3, R = 2/2
        let p: f64 = 2.0 / 3.0;
        let want = (1.0 + 1.44) * p / (1.0 + 1.44 * p);
        assert!((rouge_l_sentence("a x b", &["a b".into()]) - want).abs() < 1e-12);
    }
}
