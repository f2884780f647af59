//! Corpus BLEU exactly as sacrebleu 2.6.0 computes it with its defaults:
//! `sacrebleu.corpus_bleu(hyps, ref_streams, tokenize="13a", lowercase=...)`, i.e.
//! `BLEU(tokenize="13a", smooth_method="exp", effective_order=False)` with n-gram order 4,
//! on the 0–100 scale.
//!
//! This is *not* the E2E BLEU of [`crate::bleu`] (mteval-v13a: ASCII lowercasing, Perl's
//! whitespace, a 0–1 scale): here the text is case-sensitive unless `lowercase` (then
//! Python's full Unicode `str.lower()`), and every step follows sacrebleu's code:
//!
//! 1. preprocessing of every segment (hypotheses and references alike): optional
//!    `str.lower()`, then `str.rstrip()` (Python's whitespace), then `Tokenizer13a`
//!    ([`tokenize_13a`]); tokens are the result of Python's `str.split()`;
//! 2. per segment: n-grams of orders 1–4; a hypothesis n-gram's matches are clipped to its
//!    maximum count in any single reference of the segment; the reference length is the
//!    reference length closest to the hypothesis length, the shorter one on a tie;
//! 3. corpus: the counts, totals and lengths summed over segments;
//!    `bp = exp(1 - ref_len/sys_len)` if `sys_len < ref_len` (0 if `sys_len` is 0), else 1;
//!    if no n-gram of any order matches, the score and all precisions are 0; otherwise
//!    precision `n` is `100 * correct/total`, or with zero matches `100 / (2^k * total)`
//!    for the `k`-th order without matches ("exp" smoothing; the loop stops at the first
//!    order whose total is 0, leaving that precision and the ones after it at 0);
//!    `score = bp * exp(sum(log p_n) / 4)` with `log 0` taken as `-9999999999`.
//!
//! The arithmetic is done in the same order as sacrebleu's, so the figures are equal to
//! sacrebleu's to the last bit or nearly (`tests/sacrebleu_golden.rs` asserts 1e-9).
//!
//! # Tokenizer
//!
//! sacrebleu's `Tokenizer13a` is the same transformation as `pymteval.py`'s tokenizer, so
//! [`tokenize_13a`] reuses [`crate::tokenize_13a::tokenize_13a_python`] (an empty line gives
//! no token here rather than `[""]`). It differs from `mteval-v13a.pl`
//! ([`crate::tokenize_13a::tokenize_13a_perl`]) only in that the Perl script lowercases
//! ASCII letters itself and splits on Perl's `\s` (which lacks U+001C–U+001F). Note that
//! sacrebleu's BLEU strips trailing whitespace *before* tokenizing, so a segment ending in
//! `"-\n"` keeps its hyphen (`"a-\n"` → `a-`), while the bare tokenizer and mteval drop it
//! (`"a-\n"` → `a`).
//!
//! # Edge cases
//!
//! * Hypotheses and reference groups are paired like Python's `zip`: extra items on
//!   either side are ignored (the signature's `nrefs` still looks at every group, as
//!   sacrebleu's reference caching does).
//! * An empty corpus (sacrebleu raises `IndexError`) gives sacrebleu's formula on zero
//!   statistics: score 0, precisions 0, bp 1, lengths 0, `nrefs:var`.
//! * Empty hypotheses count 0 tokens (all empty: bp 0, score 0).
//! * A segment with no reference at all (sacrebleu raises `TypeError` unless the
//!   hypothesis is empty too) contributes its hypothesis n-grams to the totals, no match
//!   and a reference length of 0.
//! * Lowercasing uses Rust's `str::to_lowercase`, which equals Python's `str.lower()`
//!   (full case mapping, final sigma) except for characters whose case mapping is newer
//!   than the Unicode version of the Python that runs sacrebleu: against Python 3.11
//!   (Unicode 14) with Rust 1.95 these are 55 capitals added in Unicode 16/17 (U+1C89,
//!   7 in U+A7CB–U+A7DC, Garay U+10D50–U+10D65, U+16EA0–U+16EB8), which Python keeps.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::AddAssign;

use crate::text::is_py_space;
use crate::tokenize_13a::tokenize_13a_python;

/// The sacrebleu version these figures and signatures reproduce.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// sacrebleu's default maximum n-gram order.
pub const MAX_NGRAM_ORDER: usize = 4;

/// Number of references per segment, as the signature reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumRefs {
    /// Every segment has this many references.
    Fixed(usize),
    /// Segments have different numbers of references (sacrebleu: `nrefs:var`).
    Variable,
}

impl fmt::Display for NumRefs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumRefs::Fixed(n) => write!(f, "{n}"),
            NumRefs::Variable => f.write_str("var"),
        }
    }
}

/// Sufficient statistics of BLEU (sacrebleu's `[hyp_len, ref_len] + correct + total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub sys_len: usize,
    pub ref_len: usize,
    /// Clipped n-gram matches, orders 1..=4.
    pub correct: [usize; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams, orders 1..=4.
    pub total: [usize; MAX_NGRAM_ORDER],
}

impl AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_NGRAM_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// A corpus BLEU score as sacrebleu reports it (`BLEUScore`).
#[derive(Clone, Debug, PartialEq)]
pub struct SacreBleu {
    /// BLEU on the 0–100 scale.
    pub score: f64,
    /// n-gram precisions (0–100), orders 1..=4.
    pub precisions: [f64; MAX_NGRAM_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens.
    pub sys_len: usize,
    /// Sum of the closest reference lengths.
    pub ref_len: usize,
    /// Clipped n-gram matches (sacrebleu's `counts`).
    pub counts: [usize; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams (sacrebleu's `totals`).
    pub totals: [usize; MAX_NGRAM_ORDER],
    /// References per segment (for the signature).
    pub nrefs: NumRefs,
    /// Whether the text was lowercased (for the signature).
    pub lowercase: bool,
}

impl SacreBleu {
    /// sacrebleu's `BLEU.compute_bleu` ("exp" smoothing, no effective order).
    pub fn from_stats(stats: &BleuStats, nrefs: NumRefs, lowercase: bool) -> Self {
        let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
        let mut bp = 1.0;
        if sys_len < ref_len {
            bp = if sys_len > 0 {
                (1.0 - ref_len as f64 / sys_len as f64).exp()
            } else {
                0.0
            };
        }
        let mut precisions = [0.0; MAX_NGRAM_ORDER];
        let mut result = SacreBleu {
            score: 0.0,
            precisions,
            bp,
            sys_len,
            ref_len,
            counts: stats.correct,
            totals: stats.total,
            nrefs,
            lowercase,
        };
        if stats.correct.iter().all(|&c| c == 0) {
            return result;
        }
        let mut smooth_mteval = 1.0f64;
        for n in 0..MAX_NGRAM_ORDER {
            let total = stats.total[n];
            if total == 0 {
                break;
            }
            let correct = stats.correct[n];
            precisions[n] = if correct == 0 {
                smooth_mteval *= 2.0;
                100.0 / (smooth_mteval * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        // sum() in Python 3.11: left to right from 0
        let mut log_sum = 0.0f64;
        for &p in &precisions {
            log_sum += my_log(p);
        }
        result.precisions = precisions;
        result.score = bp * (log_sum / MAX_NGRAM_ORDER as f64).exp();
        result
    }

    /// `sys_len / ref_len` (0 when `ref_len` is 0), as sacrebleu prints it.
    pub fn ratio(&self) -> f64 {
        if self.ref_len == 0 {
            0.0
        } else {
            self.sys_len as f64 / self.ref_len as f64
        }
    }

    /// sacrebleu's signature, e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    pub fn signature(&self) -> String {
        format!(
            "nrefs:{}|case:{}|eff:no|tok:13a|smooth:exp|version:{SACREBLEU_VERSION}",
            self.nrefs,
            self.case()
        )
    }

    /// sacrebleu's short signature, e.g. `#:1|c:mixed|e:no|tok:13a|s:exp|v:2.6.0`.
    pub fn signature_short(&self) -> String {
        format!(
            "#:{}|c:{}|e:no|tok:13a|s:exp|v:{SACREBLEU_VERSION}",
            self.nrefs,
            self.case()
        )
    }

    fn case(&self) -> &'static str {
        if self.lowercase {
            "lc"
        } else {
            "mixed"
        }
    }

    /// The score with sacrebleu's signature, as the `sacrebleu` command prints it:
    /// `BLEU|nrefs:1|…|version:2.6.0 = 35.12 65.2/40.1/28.0/19.9 (BP = … ref_len = …)`.
    pub fn format_with_signature(&self) -> String {
        format!("BLEU|{} = {}", self.signature(), self.verbose_tail())
    }

    fn verbose_tail(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            prec.join("/"),
            self.bp,
            self.ratio(),
            self.sys_len,
            self.ref_len
        )
    }
}

/// Python's `str(score)`: `BLEU = 35.12 65.2/40.1/28.0/19.9 (BP = 1.000 ratio = 1.012
/// hyp_len = 12345 ref_len = 12200)`.
impl fmt::Display for SacreBleu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BLEU = {}", self.verbose_tail())
    }
}

/// sacrebleu's `my_log`.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9999999999.0
    } else {
        x.ln()
    }
}

/// sacrebleu's `Tokenizer13a` (the tokens of its output line).
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut toks = tokenize_13a_python(line);
    if toks.len() == 1 && toks[0].is_empty() {
        toks.clear();
    }
    toks
}

/// sacrebleu's `BLEU._preprocess_segment` for `tokenize="13a"`: optional `str.lower()`,
/// `str.rstrip()`, [`tokenize_13a`].
pub fn preprocess(segment: &str, lowercase: bool) -> Vec<String> {
    if lowercase {
        let lower = segment.to_lowercase();
        tokenize_13a(lower.trim_end_matches(is_py_space))
    } else {
        tokenize_13a(segment.trim_end_matches(is_py_space))
    }
}

/// n-gram counts of orders 1..=4.
fn ngram_counts(tokens: &[String]) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER.min(tokens.len()) {
        for g in tokens.windows(n) {
            *counts.entry(g).or_insert(0) += 1;
        }
    }
    counts
}

/// sacrebleu's `_get_closest_ref_len` (the shorter one on a tie; 0 without references).
fn closest_ref_len(hyp_len: usize, ref_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && len >= l) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Statistics of one segment from preprocessed (tokenized) text.
pub fn segment_stats(hyp: &[String], refs: &[Vec<String>]) -> BleuStats {
    let mut ref_max: HashMap<&[String], usize> = HashMap::new();
    for r in refs {
        for (g, c) in ngram_counts(r) {
            let e = ref_max.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let mut st = BleuStats {
        sys_len: hyp.len(),
        ref_len: closest_ref_len(hyp.len(), refs.iter().map(Vec::len)),
        ..Default::default()
    };
    for (g, c) in ngram_counts(hyp) {
        let n = g.len() - 1;
        st.total[n] += c;
        if let Some(&rc) = ref_max.get(g) {
            st.correct[n] += c.min(rc);
        }
    }
    st
}

/// sacrebleu's reference count for the signature: the one count every group has, else
/// `var` (also for no group at all).
pub fn num_refs(refs: &[Vec<String>]) -> NumRefs {
    let counts: BTreeSet<usize> = refs.iter().map(Vec::len).collect();
    match counts.len() {
        1 => NumRefs::Fixed(*counts.first().unwrap()),
        _ => NumRefs::Variable,
    }
}

/// Corpus statistics (hypotheses and reference groups paired like Python's `zip`).
pub fn corpus_stats(hyps: &[String], refs: &[Vec<String>], lowercase: bool) -> BleuStats {
    let mut stats = BleuStats::default();
    for (h, group) in hyps.iter().zip(refs) {
        let rt: Vec<Vec<String>> = group.iter().map(|r| preprocess(r, lowercase)).collect();
        stats += segment_stats(&preprocess(h, lowercase), &rt);
    }
    stats
}

/// `sacrebleu.corpus_bleu(hyps, ref_streams, tokenize="13a", lowercase=lowercase)`.
///
/// `refs[i]` holds the references of `hyps[i]` (any number, possibly different from
/// segment to segment); see [`refs_from_streams`] for sacrebleu's stream layout.
pub fn corpus_bleu(hyps: &[String], refs: &[Vec<String>], lowercase: bool) -> SacreBleu {
    SacreBleu::from_stats(
        &corpus_stats(hyps, refs, lowercase),
        num_refs(refs),
        lowercase,
    )
}

/// sacrebleu's reference layout (one stream per reference "system", `None` where a segment
/// lacks that reference) to one reference group per segment (`zip(*streams)`: as many
/// groups as the shortest stream has lines).
pub fn refs_from_streams<S: AsRef<str>>(streams: &[Vec<Option<S>>]) -> Vec<Vec<String>> {
    let n = streams.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            streams
                .iter()
                .filter_map(|s| s[i].as_ref().map(|r| r.as_ref().to_owned()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn closest_ref_len_prefers_shorter_on_tie() {
        assert_eq!(closest_ref_len(5, [7, 3]), 3);
        assert_eq!(closest_ref_len(5, [3, 7]), 3);
        assert_eq!(closest_ref_len(5, [7, 6, 4]), 4);
        assert_eq!(closest_ref_len(5, [9, 6]), 6);
        assert_eq!(closest_ref_len(5, []), 0);
    }

    #[test]
    fn empty_inputs_do_not_panic() {
        let b = corpus_bleu(&[], &[], false);
        assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 1.0, 0, 0));
        assert_eq!(b.precisions, [0.0; 4]);
        assert_eq!(b.nrefs, NumRefs::Variable);
        let b = corpus_bleu(&s(&["", " "]), &[s(&["a b"]), s(&["c"])], true);
        assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 0.0, 0, 3));
        assert_eq!(
            b.signature(),
            "nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
        // a segment without references
        let b = corpus_bleu(&s(&["a b c", "x y z w"]), &[vec![], s(&["x y z w"])], false);
        assert_eq!((b.sys_len, b.ref_len), (7, 4));
        assert_eq!(b.counts, [4, 3, 2, 1]);
        assert_eq!(b.totals, [7, 5, 3, 1]);
        assert_eq!(b.nrefs, NumRefs::Variable);
        // zip semantics
        let b = corpus_bleu(&s(&["a b c d", "e"]), &[s(&["a b c d"])], false);
        assert_eq!((b.sys_len, b.ref_len), (4, 4));
        assert!((b.score - 100.0).abs() < 1e-12);
    }

    #[test]
    fn streams_to_groups() {
        let g = refs_from_streams(&[
            vec![Some("a"), Some("b"), Some("c")],
            vec![None, Some("B"), Some("C")],
        ]);
        assert_eq!(g, vec![s(&["a"]), s(&["b", "B"]), s(&["c", "C"])]);
        assert!(refs_from_streams::<&str>(&[]).is_empty());
    }

    #[test]
    fn preprocess_rstrips_before_tokenizing() {
        assert_eq!(tokenize_13a("a-\n"), s(&["a"]));
        assert_eq!(preprocess("a-\n", false), s(&["a-"]));
        assert_eq!(preprocess("ΣΟΦΟΣ.", true), s(&["σοφος", "."]));
        assert!(tokenize_13a("").is_empty());
        assert!(preprocess(" \u{1c}", false).is_empty());
    }
}
