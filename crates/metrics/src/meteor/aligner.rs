//! METEOR 1.5's aligner: candidate matches from the exact, stem, synonym and paraphrase
//! modules, then a beam search (width 40) for the alignment with the most (module
//! weighted) matched words, fewest chunks and smallest distance, reproducing METEOR's
//! search order and tie-breaking.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use super::paraphrase::{ParaRef, ParaphraseTable};
use super::synonyms::SynonymDictionary;
use crate::ngrams::FxHashMap;
use crate::text::java_hash;

pub const MODULE_EXACT: usize = 0;
pub const MODULE_STEM: usize = 1;
pub const MODULE_SYNONYM: usize = 2;
pub const MODULE_PARAPHRASE: usize = 3;
pub const N_MODULES: usize = 4;

/// Weights the beam search uses (METEOR's scorer resets the aligner's weights to these).
const SEARCH_WEIGHTS: [f64; N_MODULES] = [1.0, 0.5, 0.5, 0.5];
const BEAM_SIZE: usize = 40;

/// A match of `length` words at `start` in line 2 (reference) with `match_length` words at
/// `match_start` in line 1 (hypothesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub start: usize,
    pub length: usize,
    pub match_start: usize,
    pub match_length: usize,
    pub module: usize,
}

/// Paraphrases found from one position: (phrase length, paraphrase word ids).
pub type ParaPaths = Arc<[(usize, Vec<u32>)]>;

/// Everything the matchers need to know about one line, computed once per line.
#[derive(Clone, Debug, Default)]
pub struct LineInfo {
    pub words: Vec<String>,
    /// Java `hashCode` of each word (METEOR compares words by hash)
    pub hash: Vec<i32>,
    /// Java `hashCode` of each word's stem
    pub stem_hash: Vec<i32>,
    /// sorted synset ids of each word (incl. its base forms)
    pub synsets: Vec<Arc<[i32]>>,
    /// (synset id, position) of every word's synsets, sorted
    pub syn_pos: Vec<(i32, u32)>,
    /// paraphrase-table ids of the words
    pub para_ids: Vec<u32>,
    /// paraphrases of the phrases starting at each position: (phrase length, words)
    pub para_paths: Vec<ParaPaths>,
    /// (paraphrase id, position) of every word, sorted (to find where a phrase may occur)
    pub para_pos: Vec<(u32, usize)>,
    /// is each word a function word
    pub function: Vec<bool>,
}

/// Per-word matcher data.
#[derive(Clone)]
struct WordInfo {
    hash: i32,
    stem_hash: i32,
    synsets: Arc<[i32]>,
    para_id: u32,
    function: bool,
}

/// Builds [`LineInfo`]s, caching per-word data and paraphrase lookups.
pub struct LineInfoBuilder<'a> {
    stem: &'a dyn Fn(&str) -> String,
    synonyms: Option<&'a SynonymDictionary>,
    paraphrase: Option<&'a ParaphraseTable>,
    function_words: &'a HashSet<String>,
    words: FxHashMap<String, WordInfo>,
    paths: FxHashMap<Vec<u32>, ParaPaths>,
}

impl<'a> LineInfoBuilder<'a> {
    pub fn new(
        stem: &'a dyn Fn(&str) -> String,
        synonyms: Option<&'a SynonymDictionary>,
        paraphrase: Option<&'a ParaphraseTable>,
        function_words: &'a HashSet<String>,
    ) -> Self {
        LineInfoBuilder {
            stem,
            synonyms,
            paraphrase,
            function_words,
            words: Default::default(),
            paths: Default::default(),
        }
    }

    fn word(&mut self, w: &str) -> &WordInfo {
        if !self.words.contains_key(w) {
            let mut synsets: Vec<i32> = self
                .synonyms
                .map(|d| d.all_synsets(w).into_iter().collect())
                .unwrap_or_default();
            synsets.sort_unstable();
            let info = WordInfo {
                hash: java_hash(w),
                stem_hash: java_hash(&(self.stem)(w)),
                synsets: synsets.into(),
                para_id: self
                    .paraphrase
                    .map_or(super::paraphrase::UNKNOWN, |pt| pt.translate(w)),
                function: self.function_words.contains(&w.to_lowercase()),
            };
            self.words.insert(w.to_owned(), info);
        }
        &self.words[w]
    }

    pub fn build(&mut self, words: Vec<String>) -> LineInfo {
        let infos: Vec<WordInfo> = words.iter().map(|w| self.word(w).clone()).collect();
        let para_ids: Vec<u32> = infos.iter().map(|i| i.para_id).collect();
        let para_paths = match self.paraphrase {
            Some(pt) => (0..para_ids.len())
                .map(|i| {
                    // the paraphrases found from position i depend only on the words up to
                    // the first unknown one and at most the longest reference phrase ahead
                    let end = para_ids[i..]
                        .iter()
                        .position(|&x| x == super::paraphrase::UNKNOWN)
                        .map_or(para_ids.len(), |k| i + k);
                    let key = &para_ids[i..end.min(i + pt.max_ref_len())];
                    if let Some(v) = self.paths.get(key) {
                        return Arc::clone(v);
                    }
                    let v: ParaPaths = pt
                        .paths(&para_ids, i)
                        .into_iter()
                        .map(|(len, r): (usize, ParaRef)| (len, pt.para_words(r).to_vec()))
                        .collect();
                    self.paths.insert(key.to_vec(), v.clone());
                    v
                })
                .collect(),
            None => vec![Arc::from(Vec::new()); words.len()],
        };
        let mut para_pos: Vec<(u32, usize)> = para_ids.iter().copied().zip(0..).collect();
        para_pos.sort_unstable();
        let mut syn_pos: Vec<(i32, u32)> = infos
            .iter()
            .enumerate()
            .flat_map(|(j, w)| w.synsets.iter().map(move |&x| (x, j as u32)))
            .collect();
        syn_pos.sort_unstable();
        LineInfo {
            syn_pos,
            hash: infos.iter().map(|i| i.hash).collect(),
            stem_hash: infos.iter().map(|i| i.stem_hash).collect(),
            synsets: infos.iter().map(|i| i.synsets.clone()).collect(),
            function: infos.iter().map(|i| i.function).collect(),
            words,
            para_ids,
            para_paths,
            para_pos,
        }
    }
}

/// Result of aligning line 1 (hypothesis) with line 2 (reference).
#[derive(Clone, Debug, Default)]
pub struct Alignment {
    pub len1: usize,
    pub len2: usize,
    pub function1: usize,
    pub function2: usize,
    pub content_matches1: [usize; N_MODULES],
    pub content_matches2: [usize; N_MODULES],
    pub function_matches1: [usize; N_MODULES],
    pub function_matches2: [usize; N_MODULES],
    pub chunks: usize,
}

const NONE: u32 = u32::MAX;

/// A set of word positions (inline up to 128 words).
#[derive(Clone)]
enum Bits {
    Inline([u64; 2]),
    Heap(Box<[u64]>),
}

impl Bits {
    fn new(n: usize) -> Self {
        if n <= 128 {
            Bits::Inline([0; 2])
        } else {
            Bits::Heap(vec![0; n.div_ceil(64)].into_boxed_slice())
        }
    }
    fn words(&self) -> &[u64] {
        match self {
            Bits::Inline(a) => a,
            Bits::Heap(b) => b,
        }
    }
    fn get(&self, i: usize) -> bool {
        self.words()[i >> 6] >> (i & 63) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        let w = match self {
            Bits::Inline(a) => &mut a[..],
            Bits::Heap(b) => &mut b[..],
        };
        w[i >> 6] |= 1 << (i & 63);
    }
}

/// A partial alignment: used words of both lines, the chosen matches (as a chain in the
/// search's trail arena) and METEOR's ranking statistics.
#[derive(Clone)]
struct Partial {
    used1: Bits,
    used2: Bits,
    /// last entry of this path in the trail arena (NONE: no match chosen yet)
    trail: u32,
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: i64,
    distance: i32,
}

impl Partial {
    fn is_used(&self, m: &Match) -> bool {
        (0..m.length).any(|i| self.used2.get(m.start + i))
            || (0..m.match_length).any(|i| self.used1.get(m.match_start + i))
    }
    fn set_used(&mut self, m: &Match) {
        for i in 0..m.length {
            self.used2.set(m.start + i);
        }
        for i in 0..m.match_length {
            self.used1.set(m.match_start + i);
        }
    }
}

/// METEOR's `PARTIAL_COMPARE_TOTAL`: more matches, then fewer chunks, then less distance.
fn compare(x: &Partial, y: &Partial) -> Ordering {
    let match_diff = (y.matches1 + y.matches2) - (x.matches1 + x.matches2);
    // (same as Cand::key_cmp)
    if match_diff > 0 {
        return Ordering::Greater;
    }
    if match_diff < 0 {
        return Ordering::Less;
    }
    let chunk_diff = x.chunks - y.chunks;
    if chunk_diff != 0 {
        return chunk_diff.cmp(&0);
    }
    (x.distance - y.distance).cmp(&0)
}

struct Stage {
    all: Vec<Match>,
    /// indices into `all` of the matches starting at each reference position
    matches: Vec<Vec<u32>>,
    cov1: Vec<i32>,
    cov2: Vec<i32>,
}

impl Stage {
    fn add(&mut self, m: Match) {
        for k in 0..m.match_length {
            self.cov1[m.match_start + k] += 1;
        }
        for k in 0..m.length {
            self.cov2[m.start + k] += 1;
        }
        self.matches[m.start].push(self.all.len() as u32);
        self.all.push(m);
    }
}

fn one(start: usize, match_start: usize, module: usize) -> Match {
    Match {
        start,
        length: 1,
        match_start,
        match_length: 1,
        module,
    }
}

/// Align hypothesis line `l1` with reference line `l2`.
pub fn align(l1: &LineInfo, l2: &LineInfo) -> Alignment {
    let (n1, n2) = (l1.words.len(), l2.words.len());
    let mut s = Stage {
        all: Vec::new(),
        matches: vec![Vec::new(); n2],
        cov1: vec![0; n1],
        cov2: vec![0; n2],
    };
    let mods_used = if l1.hash == l2.hash { 1 } else { N_MODULES };
    for module in 0..mods_used {
        match module {
            MODULE_EXACT => {
                for j in 0..n2 {
                    for i in 0..n1 {
                        if l1.hash[i] == l2.hash[j] {
                            s.add(one(j, i, module));
                        }
                    }
                }
            }
            MODULE_STEM => {
                for j in 0..n2 {
                    for i in 0..n1 {
                        if l1.stem_hash[i] == l2.stem_hash[j] && l1.hash[i] != l2.hash[j] {
                            s.add(one(j, i, module));
                        }
                    }
                }
            }
            MODULE_SYNONYM => {
                // share[i * n2 + j]: do hypothesis word i and reference word j share a synset
                let mut share = vec![false; n1 * n2];
                if !l2.syn_pos.is_empty() {
                    for i in 0..n1 {
                        for &x in l1.synsets[i].iter() {
                            let from = l2.syn_pos.partition_point(|&(y, _)| y < x);
                            for &(y, j) in &l2.syn_pos[from..] {
                                if y != x {
                                    break;
                                }
                                share[i * n2 + j as usize] = true;
                            }
                        }
                    }
                }
                for j in 0..n2 {
                    for i in 0..n1 {
                        if share[i * n2 + j] && l1.hash[i] != l2.hash[j] {
                            s.add(one(j, i, module));
                        }
                    }
                }
            }
            MODULE_PARAPHRASE => {
                // positions (in increasing order) where `words` occurs in `line`
                let occurrences = |line: &LineInfo, words: &[u32], out: &mut Vec<usize>| {
                    out.clear();
                    if words.is_empty() {
                        out.extend(0..line.para_ids.len());
                        return;
                    }
                    let from = line.para_pos.partition_point(|&(id, _)| id < words[0]);
                    for &(id, at) in &line.para_pos[from..] {
                        if id != words[0] {
                            break;
                        }
                        if (0..words.len()).all(|k| {
                            at + k < line.para_ids.len() && line.para_ids[at + k] == words[k]
                        }) {
                            out.push(at);
                        }
                    }
                };
                let mut occ = Vec::new();
                for j in 0..n2 {
                    for (len, words) in l2.para_paths[j].iter() {
                        occurrences(l1, words, &mut occ);
                        for &i in &occ {
                            s.add(Match {
                                start: j,
                                length: *len,
                                match_start: i,
                                match_length: words.len(),
                                module,
                            });
                        }
                    }
                }
                for i in 0..n1 {
                    for (len, words) in l1.para_paths[i].iter() {
                        occurrences(l2, words, &mut occ);
                        for &j in &occ {
                            s.add(Match {
                                start: j,
                                length: words.len(),
                                match_start: i,
                                match_length: *len,
                                module,
                            });
                        }
                    }
                }
            }
            _ => unreachable!(),
        }
    }

    // matches that cannot conflict with anything are fixed up front
    let mut initial = Partial {
        used1: Bits::new(n1),
        used2: Bits::new(n2),
        trail: NONE,
        matches1: 0,
        matches2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: -1,
        distance: 0,
    };
    // matches fixed up front (the only ones a path holds before reaching their position)
    let mut fixed: Vec<u32> = vec![NONE; n2];
    for i in 0..n2 {
        if s.matches[i].len() == 1 {
            let mi = s.matches[i][0];
            let m = s.all[mi as usize];
            let overlap = (0..m.length).any(|j| s.cov2[i + j] != 1)
                || (0..m.match_length).any(|j| s.cov1[m.match_start + j] != 1);
            if !overlap {
                fixed[i] = mi;
                initial.set_used(&m);
            }
        }
    }
    let chosen_idx = resolve(&s, initial, &fixed);
    let chosen: Vec<Option<Match>> = chosen_idx
        .iter()
        .map(|&k| {
            if k == NONE {
                None
            } else {
                Some(s.all[k as usize])
            }
        })
        .collect();

    let mut a = Alignment {
        len1: n1,
        len2: n2,
        ..Default::default()
    };
    a.function1 = l1.function.iter().filter(|&&b| b).count();
    a.function2 = l2.function.iter().filter(|&&b| b).count();
    for m in chosen.iter().flatten() {
        for j in 0..m.match_length {
            if l1.function[m.match_start + j] {
                a.function_matches1[m.module] += 1;
            } else {
                a.content_matches1[m.module] += 1;
            }
        }
        for j in 0..m.length {
            if l2.function[m.start + j] {
                a.function_matches2[m.module] += 1;
            } else {
                a.content_matches2[m.module] += 1;
            }
        }
    }
    a.chunks = count_chunks(&chosen);
    a
}

fn count_chunks(matches: &[Option<Match>]) -> usize {
    let mut chunks = 0;
    let mut idx = 0;
    let mut last_match_end: i64 = -1;
    while idx < matches.len() {
        match matches[idx] {
            None => {
                if last_match_end != -1 {
                    chunks += 1;
                    last_match_end = -1;
                }
                idx += 1;
            }
            Some(m) => {
                if last_match_end != -1 && m.match_start as i64 != last_match_end {
                    chunks += 1;
                }
                idx = m.start + m.length;
                last_match_end = (m.match_start + m.match_length) as i64;
            }
        }
    }
    if last_match_end != -1 {
        chunks += 1;
    }
    chunks
}

/// A path of the next beam step, not materialized yet: its scalar state, the path it
/// extends and the match it adds (if any).
#[derive(Clone, Copy)]
struct Cand {
    parent: usize,
    add: u32,
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: i64,
    distance: i32,
}

impl Cand {
    fn of(p: &Partial, parent: usize) -> Self {
        Cand {
            parent,
            add: NONE,
            matches1: p.matches1,
            matches2: p.matches2,
            chunks: p.chunks,
            idx: p.idx,
            last_match_end: p.last_match_end,
            distance: p.distance,
        }
    }
    /// Account for taking match `m` (METEOR adds weighted lengths into int fields, which
    /// truncates).
    fn take(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[m.module];
        self.matches1 = (self.matches1 as f64 + m.match_length as f64 * w) as i32;
        self.matches2 = (self.matches2 as f64 + m.length as f64 * w) as i32;
        if self.last_match_end != -1 && m.match_start as i64 != self.last_match_end {
            self.chunks += 1;
        }
        self.idx = m.start + m.length;
        self.last_match_end = (m.match_start + m.match_length) as i64;
    }
}

/// METEOR's beam search. Candidates are generated in METEOR's order and ranked like its
/// stable sort, so the kept paths (and ties) are exactly METEOR's; only the kept ones are
/// materialized. Returns the chosen match (index into `s.all`) at each reference position.
fn resolve(s: &Stage, start: Partial, fixed: &[u32]) -> Vec<u32> {
    let n = s.matches.len();
    let mut paths: Vec<Partial> = vec![start];
    let mut cands: Vec<Cand> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    // (previous trail entry, reference position, match)
    let mut trail: Vec<(u32, u32, u32)> = Vec::new();
    for current in 0..n {
        cands.clear();
        for (pi, path) in paths.iter().enumerate() {
            let mut me = Cand::of(path, pi);
            if path.used2.get(current) {
                if current < path.idx {
                    cands.push(me);
                } else if fixed[path.idx] != NONE {
                    let m = &s.all[fixed[path.idx] as usize];
                    me.take(m);
                    me.distance += (m.start as i32 - m.match_start as i32).abs();
                    cands.push(me);
                }
                continue;
            }
            for &mi in &s.matches[current] {
                let m = &s.all[mi as usize];
                if path.is_used(m) {
                    continue;
                }
                let mut c = me;
                c.add = mi;
                c.take(m);
                // (METEOR adds this distance to the path being extended, not the new one)
                me.distance += (m.start as i32 - m.match_start as i32).abs();
                cands.push(c);
            }
            if me.last_match_end != -1 {
                me.chunks += 1;
                me.last_match_end = -1;
            }
            me.idx += 1;
            cands.push(me);
        }
        if cands.is_empty() {
            // (METEOR keeps its best path and skips ahead)
            paths.truncate(1);
            continue;
        }
        // = stable sort + truncate (ties keep generation order)
        let key = |i: usize| {
            let c = &cands[i];
            (-(c.matches1 + c.matches2), c.chunks, c.distance, i)
        };
        order.clear();
        order.extend(0..cands.len());
        if order.len() > BEAM_SIZE {
            order.select_nth_unstable_by_key(BEAM_SIZE - 1, |&i| key(i));
            order.truncate(BEAM_SIZE);
        }
        order.sort_unstable_by_key(|&i| key(i));
        let next: Vec<Partial> = order
            .iter()
            .map(|&ci| {
                let c = &cands[ci];
                let parent = &paths[c.parent];
                let mut p = Partial {
                    used1: parent.used1.clone(),
                    used2: parent.used2.clone(),
                    trail: parent.trail,
                    matches1: c.matches1,
                    matches2: c.matches2,
                    chunks: c.chunks,
                    idx: c.idx,
                    last_match_end: c.last_match_end,
                    distance: c.distance,
                };
                if c.add != NONE {
                    p.set_used(&s.all[c.add as usize]);
                    trail.push((p.trail, current as u32, c.add));
                    p.trail = (trail.len() - 1) as u32;
                }
                p
            })
            .collect();
        paths = next;
    }
    // last step: close the open chunk, pick the best
    for p in paths.iter_mut() {
        if p.last_match_end != -1 {
            p.chunks += 1;
        }
    }
    paths.sort_by(compare);
    let best = &paths[0];
    let mut chosen: Vec<u32> = fixed.to_vec();
    let mut t = best.trail;
    while t != NONE {
        let (prev, pos, mi) = trail[t as usize];
        chosen[pos as usize] = mi;
        t = prev;
    }
    chosen
}
