//! METEOR's WordNet-based synonym dictionary (`synonym/english.{synsets,exceptions}`).

use std::collections::HashSet;

use crate::ngrams::FxHashMap;

use crate::text::java_tokens;

/// Word -> synset ids, plus irregular inflections -> base forms.
#[derive(Default)]
pub struct SynonymDictionary {
    word_to_bases: FxHashMap<String, Vec<String>>,
    word_to_synsets: FxHashMap<String, Vec<i32>>,
}

/// WordNet's detachment rules (noun, verb, adjective suffixes) in METEOR's order.
const SUFX: [&str; 20] = [
    "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed",
    "ing", "ing", "er", "est", "er", "est",
];
const ADDR: [&str; 20] = [
    "", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e", "e",
];

impl SynonymDictionary {
    /// Parse the exceptions file (base line, then a line of inflected forms) and the synset
    /// file (word line, then a line of synset ids).
    pub fn parse(exceptions: &str, synsets: &str) -> Self {
        let mut d = SynonymDictionary::default();
        let mut it = exceptions.split('\n');
        while let Some(base) = it.next() {
            let base = base.trim_end_matches('\r');
            let forms = match it.next() {
                Some(f) => f,
                None => break,
            };
            for form in java_tokens(forms) {
                d.word_to_bases
                    .entry(form.to_owned())
                    .or_default()
                    .push(base.to_owned());
            }
        }
        let mut it = synsets.split('\n');
        while let Some(word) = it.next() {
            let word = word.trim_end_matches('\r');
            let ids = match it.next() {
                Some(f) => f,
                None => break,
            };
            let mut v: Vec<i32> = java_tokens(ids).filter_map(|x| x.parse().ok()).collect();
            v.sort_unstable();
            v.dedup();
            d.word_to_synsets.insert(word.to_owned(), v);
        }
        d
    }

    fn synsets(&self, w: &str) -> &[i32] {
        self.word_to_synsets
            .get(w)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// WordNet-style base form lookup ("" when none applies).
    fn morph(&self, word: &str) -> String {
        if word.ends_with("ss") || word.encode_utf16().count() <= 2 {
            return word.to_owned();
        }
        for (s, a) in SUFX.iter().zip(ADDR.iter()) {
            if let Some(stem) = word.strip_suffix(s) {
                let cand = format!("{stem}{a}");
                if self.word_to_synsets.contains_key(&cand) {
                    return cand;
                }
            }
        }
        String::new()
    }

    /// Synsets of a word and of its base forms (what the synonym module compares).
    pub fn all_synsets(&self, word: &str) -> HashSet<i32> {
        let mut set: HashSet<i32> = self.synsets(word).iter().copied().collect();
        match self.word_to_bases.get(word) {
            Some(bases) => {
                for b in bases {
                    set.extend(self.synsets(b).iter().copied());
                }
            }
            None => set.extend(self.synsets(&self.morph(word)).iter().copied()),
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn morph_and_exceptions() {
        let d =
            SynonymDictionary::parse("child\nchildren\n", "child\n1 2\nrestaurant\n7\neat\n9\n");
        assert!(d.all_synsets("children").contains(&1));
        assert!(d.all_synsets("restaurants").contains(&7));
        assert!(d.all_synsets("eating").contains(&9));
        assert!(d.all_synsets("xyz").is_empty());
    }
}
