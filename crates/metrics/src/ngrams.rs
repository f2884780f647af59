//! Token interning and n-gram counting shared by BLEU, NIST and CIDEr.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small, fast, deterministic hasher (FxHash) for integer keys.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut v = [0u8; 8];
            v[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(v));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuild>;

/// Maximum n-gram order stored in an [`NGram`].
pub const MAX_N: usize = 5;

/// An n-gram of interned token ids (n <= [`MAX_N`]); unused slots are `u32::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct NGram {
    ids: [u32; MAX_N],
}

impl NGram {
    pub fn new(toks: &[u32]) -> Self {
        debug_assert!(!toks.is_empty() && toks.len() <= MAX_N);
        let mut ids = [u32::MAX; MAX_N];
        ids[..toks.len()].copy_from_slice(toks);
        NGram { ids }
    }
    pub fn is_empty(&self) -> bool {
        self.ids[0] == u32::MAX
    }
    pub fn len(&self) -> usize {
        self.ids
            .iter()
            .position(|&x| x == u32::MAX)
            .unwrap_or(MAX_N)
    }
    /// The n-gram without its last token (`None` for a unigram).
    pub fn prefix(&self) -> Option<NGram> {
        let n = self.len();
        if n <= 1 {
            return None;
        }
        let mut p = *self;
        p.ids[n - 1] = u32::MAX;
        Some(p)
    }
    pub fn first(&self) -> u32 {
        self.ids[0]
    }
}

/// Interns token strings to dense ids.
#[derive(Default)]
pub struct Vocab {
    map: FxHashMap<String, u32>,
    pub words: Vec<String>,
}

impl Vocab {
    pub fn id(&mut self, w: &str) -> u32 {
        if let Some(&i) = self.map.get(w) {
            return i;
        }
        let i = self.words.len() as u32;
        self.map.insert(w.to_owned(), i);
        self.words.push(w.to_owned());
        i
    }
    pub fn ids<S: AsRef<str>>(&mut self, toks: &[S]) -> Vec<u32> {
        toks.iter().map(|t| self.id(t.as_ref())).collect()
    }
}

/// Counts of all n-grams of order `1..=max_n` of a token sequence.
pub fn count_ngrams(toks: &[u32], max_n: usize) -> FxHashMap<NGram, u32> {
    let mut m = FxHashMap::default();
    for n in 1..=max_n {
        if toks.len() < n {
            break;
        }
        for w in toks.windows(n) {
            *m.entry(NGram::new(w)).or_insert(0) += 1;
        }
    }
    m
}

/// Add the n-gram counts (orders `1..=max_n`) of `toks` to `m` (cleared first).
pub fn count_ngrams_into(toks: &[u32], max_n: usize, m: &mut FxHashMap<NGram, u32>) {
    m.clear();
    for n in 1..=max_n {
        if toks.len() < n {
            break;
        }
        for w in toks.windows(n) {
            *m.entry(NGram::new(w)).or_insert(0) += 1;
        }
    }
}

/// Per n-gram maximum count over several token sequences, into `out` (cleared first);
/// `scratch` is a reusable buffer.
pub fn max_ref_counts_into(
    refs: &[Vec<u32>],
    max_n: usize,
    out: &mut FxHashMap<NGram, u32>,
    scratch: &mut FxHashMap<NGram, u32>,
) {
    out.clear();
    for r in refs {
        count_ngrams_into(r, max_n, scratch);
        for (g, &c) in scratch.iter() {
            let e = out.entry(*g).or_insert(0);
            if c > *e {
                *e = c;
            }
        }
    }
}

/// Per n-gram maximum count over several token sequences (BLEU/NIST clipping).
pub fn max_ref_counts(refs: &[Vec<u32>], max_n: usize) -> FxHashMap<NGram, u32> {
    let mut m: FxHashMap<NGram, u32> = FxHashMap::default();
    for r in refs {
        for (g, c) in count_ngrams(r, max_n) {
            let e = m.entry(g).or_insert(0);
            if c > *e {
                *e = c;
            }
        }
    }
    m
}
