//! METEOR's paraphrase table (`paraphrase-en.gz`) behind a compact on-disk index.
//!
//! The gzip text table (5.3M entries, 270 MB uncompressed) is too slow to parse on every
//! run, so the first load converts it into a binary index next to it (or in a cache dir):
//!
//! ```text
//! magic "LRPI0003" | u64 source size | u32 n_words | u32 n_groups | u64 n_data
//! u32 word_off[n_words + 1] | word bytes (sorted vocabulary, id = rank), 0-padded to 4
//! u32 first_group[n_words + 1]   (groups whose reference starts with word w:
//!                                 first_group[w]..first_group[w + 1])
//! u32 group_off[n_groups + 1] | u32 data[n_data]            (all little endian)
//! group = ref_len, ref ids.., n_paras, (para_len, para ids..)*   (sorted by ref ids)
//! ```
//!
//! Lookups replicate METEOR's transducer: walking a line from a start word, every prefix
//! that is a reference phrase emits its paraphrases (in file order); the walk stops at the
//! first prefix no reference phrase starts with.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::MetricsError;

const MAGIC: &[u8; 8] = b"LRPI0003";
/// Id of a word missing from the table.
pub const UNKNOWN: u32 = u32::MAX;

/// A paraphrase (its position in the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParaRef {
    at: u32,
    len: u32,
}

/// A loaded paraphrase index.
pub struct ParaphraseTable {
    /// the whole file as little-endian u32 words
    buf: Vec<u32>,
    n_words: usize,
    n_groups: usize,
    /// the vocabulary's bytes
    word_bytes: Vec<u8>,
    /// offsets (in u32 units) of the sections
    word_off_at: usize,
    first_group_at: usize,
    group_off_at: usize,
    /// longest reference phrase (lookups never look further ahead)
    max_ref_len: usize,
    data_at: usize,
}

fn data_err(path: &Path, msg: impl std::fmt::Display) -> MetricsError {
    MetricsError::MeteorData(format!("{}: {msg}", path.display()))
}

fn read_u32_file(path: &Path) -> Result<Vec<u32>, MetricsError> {
    let mut f = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let len = f.metadata().map_err(|e| MetricsError::io(path, e))?.len() as usize;
    if !len.is_multiple_of(4) {
        return Err(data_err(path, "not a paraphrase index (size)"));
    }
    let mut buf = vec![0u32; len / 4];
    // SAFETY: the byte slice covers exactly the memory of `buf` (u8 has no alignment
    // requirement) and every byte pattern is a valid u32.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, len) };
    f.read_exact(bytes).map_err(|e| MetricsError::io(path, e))?;
    if cfg!(target_endian = "big") {
        for x in buf.iter_mut() {
            *x = u32::from_le(*x);
        }
    }
    Ok(buf)
}

impl ParaphraseTable {
    /// Load the index for `gz` (building it at `index` first if missing or stale).
    pub fn load(gz: &Path, index: &Path) -> Result<Self, MetricsError> {
        let src_size = std::fs::metadata(gz)
            .map_err(|e| MetricsError::io(gz, e))?
            .len();
        if let Ok(t) = Self::open_index(index) {
            if t.source_size() == src_size {
                return Ok(t);
            }
        }
        match build_index(gz, index, src_size) {
            Ok(()) => Self::open_index(index),
            // read-only location: keep the index in memory
            Err(MetricsError::Io { .. }) => {
                Self::from_words(build_index_words(gz, src_size)?, index)
            }
            Err(e) => Err(e),
        }
    }

    fn source_size(&self) -> u64 {
        self.buf[2] as u64 | (self.buf[3] as u64) << 32
    }

    /// Open an existing index file.
    pub fn open_index(index: &Path) -> Result<Self, MetricsError> {
        Self::from_words(read_u32_file(index)?, index)
    }

    fn from_words(buf: Vec<u32>, index: &Path) -> Result<Self, MetricsError> {
        if buf.len() < 8 || buf[0].to_le_bytes() != MAGIC[..4] || buf[1].to_le_bytes() != MAGIC[4..]
        {
            return Err(data_err(index, "not a paraphrase index"));
        }
        let n_words = buf[4] as usize;
        let n_groups = buf[5] as usize;
        let n_data = (buf[6] as u64 | (buf[7] as u64) << 32) as usize;
        let word_off_at = 8;
        let word_bytes_at = word_off_at + n_words + 1;
        let word_bytes_len = *buf
            .get(word_off_at + n_words)
            .ok_or_else(|| data_err(index, "truncated"))? as usize;
        let first_group_at = word_bytes_at + word_bytes_len.div_ceil(4);
        let group_off_at = first_group_at + n_words + 1;
        let data_at = group_off_at + n_groups + 1;
        if buf.len() != data_at + n_data {
            return Err(data_err(index, "truncated paraphrase index"));
        }
        let word_bytes: Vec<u8> = buf[word_bytes_at..first_group_at]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let max_ref_len = (0..n_groups)
            .map(|g| buf[data_at + buf[group_off_at + g] as usize] as usize)
            .max()
            .unwrap_or(0);
        Ok(ParaphraseTable {
            buf,
            n_words,
            n_groups,
            word_bytes,
            word_off_at,
            first_group_at,
            group_off_at,
            max_ref_len,
            data_at,
        })
    }

    fn word(&self, i: usize) -> &[u8] {
        let a = self.buf[self.word_off_at + i] as usize;
        let b = self.buf[self.word_off_at + i + 1] as usize;
        &self.word_bytes[a..b]
    }

    /// Id of a word (`UNKNOWN` if the table never mentions it).
    pub fn translate(&self, w: &str) -> u32 {
        let (mut lo, mut hi) = (0usize, self.n_words);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.word(mid).cmp(w.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return mid as u32,
            }
        }
        UNKNOWN
    }

    fn d(&self, i: usize) -> u32 {
        self.buf[self.data_at + i]
    }
    fn group_start(&self, g: usize) -> usize {
        self.buf[self.group_off_at + g] as usize
    }
    fn group_ref(&self, g: usize) -> (usize, usize) {
        let s = self.group_start(g);
        (s + 1, self.d(s) as usize)
    }
    fn cmp_ref(&self, g: usize, key: &[u32]) -> std::cmp::Ordering {
        let (at, n) = self.group_ref(g);
        for k in 0..n.min(key.len()) {
            let c = self.d(at + k).cmp(&key[k]);
            if c != std::cmp::Ordering::Equal {
                return c;
            }
        }
        n.cmp(&key.len())
    }
    fn ref_starts_with(&self, g: usize, key: &[u32]) -> bool {
        let (at, n) = self.group_ref(g);
        n >= key.len() && (0..key.len()).all(|k| self.d(at + k) == key[k])
    }

    /// Length of the longest reference phrase: [`ParaphraseTable::paths`] depends on at most
    /// this many words.
    pub fn max_ref_len(&self) -> usize {
        self.max_ref_len
    }

    /// The words of a paraphrase returned by [`ParaphraseTable::paths`].
    pub fn para_words(&self, r: ParaRef) -> &[u32] {
        &self.buf[self.data_at + r.at as usize..self.data_at + (r.at + r.len) as usize]
    }

    /// Paraphrases of the phrases starting at `line[start]`: (phrase length, paraphrase),
    /// in METEOR's order (shorter phrases first, then file order).
    pub fn paths(&self, line: &[u32], start: usize) -> Vec<(usize, ParaRef)> {
        let mut out = Vec::new();
        // groups whose reference phrase starts with line[start..start+len] form a range
        let (mut lo, mut hi) = (0usize, self.n_groups);
        for len in 1..=line.len() - start {
            let key = &line[start..start + len];
            if key[len - 1] == UNKNOWN {
                break;
            }
            let (first, end) = if len == 1 {
                let w = key[0] as usize;
                (
                    self.buf[self.first_group_at + w] as usize,
                    self.buf[self.first_group_at + w + 1] as usize,
                )
            } else {
                let first = self.lower_bound(lo, hi, key, false);
                (first, self.lower_bound(first, hi, key, true))
            };
            if first == end {
                break;
            }
            if self.cmp_ref(first, key) == std::cmp::Ordering::Equal {
                let (at, n) = self.group_ref(first);
                let mut i = at + n;
                let n_paras = self.d(i) as usize;
                i += 1;
                for _ in 0..n_paras {
                    let pl = self.d(i) as usize;
                    out.push((
                        len,
                        ParaRef {
                            at: (i + 1) as u32,
                            len: pl as u32,
                        },
                    ));
                    i += 1 + pl;
                }
            }
            lo = first;
            hi = end;
        }
        out
    }

    /// First group in `lo..hi` whose reference is >= `key` (or, with `past_prefix`, the
    /// first one that is greater and does not start with `key`).
    fn lower_bound(&self, mut lo: usize, mut hi: usize, key: &[u32], past_prefix: bool) -> usize {
        while lo < hi {
            let mid = (lo + hi) / 2;
            let before = if past_prefix {
                self.ref_starts_with(mid, key) || self.cmp_ref(mid, key) == std::cmp::Ordering::Less
            } else {
                self.cmp_ref(mid, key) == std::cmp::Ordering::Less
            };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Convert METEOR's gzip text table into the binary index file.
pub fn build_index(gz: &Path, index: &Path, src_size: u64) -> Result<(), MetricsError> {
    write_atomic(index, &build_index_bytes(gz, src_size)?)
}

/// The binary index as decoded u32 words (in memory).
pub fn build_index_words(gz: &Path, src_size: u64) -> Result<Vec<u32>, MetricsError> {
    let b = build_index_bytes(gz, src_size)?;
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Convert METEOR's gzip text table into the bytes of the binary index.
pub fn build_index_bytes(gz: &Path, src_size: u64) -> Result<Vec<u8>, MetricsError> {
    let f = std::fs::File::open(gz).map_err(|e| MetricsError::io(gz, e))?;
    let mut rd = BufReader::with_capacity(
        1 << 20,
        GzDecoder::new(BufReader::with_capacity(1 << 20, f)),
    );
    let mut temp_ids: crate::ngrams::FxHashMap<String, u32> = Default::default();
    let mut words: Vec<String> = Vec::new();
    // flat storage of (ref, para) phrases in file order
    let mut flat: Vec<u32> = Vec::new();
    let mut entry_at: Vec<u32> = Vec::new(); // start of [ref_len, ref.., para_len, para..]
    let mut line = String::new();
    let read_line = |rd: &mut BufReader<GzDecoder<BufReader<std::fs::File>>>,
                     line: &mut String|
     -> Result<bool, MetricsError> {
        line.clear();
        let n = rd.read_line(line).map_err(|e| MetricsError::io(gz, e))?;
        Ok(n > 0)
    };
    let mut map_phrase = |s: &str, flat: &mut Vec<u32>| {
        let at = flat.len();
        flat.push(0);
        let mut n = 0;
        for w in crate::text::java_tokens(s) {
            let id = match temp_ids.get(w) {
                Some(&i) => i,
                None => {
                    let i = words.len() as u32;
                    temp_ids.insert(w.to_owned(), i);
                    words.push(w.to_owned());
                    i
                }
            };
            flat.push(id);
            n += 1;
        }
        flat[at] = n;
    };
    loop {
        // probability line (unused), reference phrase, paraphrase
        if !read_line(&mut rd, &mut line)? {
            break;
        }
        if !read_line(&mut rd, &mut line)? {
            return Err(data_err(gz, "truncated paraphrase table"));
        }
        entry_at.push(flat.len() as u32);
        map_phrase(line.trim_end_matches(['\n', '\r']), &mut flat);
        if !read_line(&mut rd, &mut line)? {
            return Err(data_err(gz, "truncated paraphrase table"));
        }
        map_phrase(line.trim_end_matches(['\n', '\r']), &mut flat);
    }
    drop(temp_ids);
    // vocabulary sorted by bytes; id = rank
    let mut order: Vec<u32> = (0..words.len() as u32).collect();
    order.sort_by(|&a, &b| {
        words[a as usize]
            .as_bytes()
            .cmp(words[b as usize].as_bytes())
    });
    let mut rank = vec![0u32; words.len()];
    for (r, &w) in order.iter().enumerate() {
        rank[w as usize] = r as u32;
    }
    for e in &entry_at {
        let mut i = *e as usize;
        for _ in 0..2 {
            let n = flat[i] as usize;
            for k in 0..n {
                flat[i + 1 + k] = rank[flat[i + 1 + k] as usize];
            }
            i += 1 + n;
        }
    }
    // group entries by reference phrase (stable: file order within a group)
    let ref_of = |e: u32| -> &[u32] {
        let i = e as usize;
        &flat[i + 1..i + 1 + flat[i] as usize]
    };
    let mut idx: Vec<u32> = entry_at.clone();
    idx.sort_by(|&a, &b| ref_of(a).cmp(ref_of(b)));
    let mut data: Vec<u32> = Vec::with_capacity(flat.len());
    let mut group_off: Vec<u32> = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let r = ref_of(idx[i]);
        let mut j = i;
        while j < idx.len() && ref_of(idx[j]) == r {
            j += 1;
        }
        group_off.push(data.len() as u32);
        data.push(r.len() as u32);
        data.extend_from_slice(r);
        data.push((j - i) as u32);
        for &e in &idx[i..j] {
            let p = e as usize + 1 + flat[e as usize] as usize;
            let n = flat[p] as usize;
            data.extend_from_slice(&flat[p..p + 1 + n]);
        }
        i = j;
    }
    group_off.push(data.len() as u32);
    // serialize (as u32 words; bytes are little endian)
    let mut out: Vec<u8> =
        Vec::with_capacity(32 + 4 * (data.len() + group_off.len() + words.len() * 3));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&src_size.to_le_bytes());
    out.extend_from_slice(&(words.len() as u32).to_le_bytes());
    out.extend_from_slice(&((group_off.len() - 1) as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut off = 0u32;
    out.extend_from_slice(&off.to_le_bytes());
    for &w in &order {
        off += words[w as usize].len() as u32;
        out.extend_from_slice(&off.to_le_bytes());
    }
    for &w in &order {
        out.extend_from_slice(words[w as usize].as_bytes());
    }
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    // first group of each first word
    let mut first_group = vec![0u32; words.len() + 1];
    let n_groups = group_off.len() - 1;
    let mut g = 0usize;
    for (w, fg) in first_group.iter_mut().enumerate() {
        while g < n_groups {
            let at = group_off[g] as usize;
            // empty reference phrases sort first and belong to no word
            if data[at] == 0 || (data[at + 1] as usize) < w {
                g += 1;
            } else {
                break;
            }
        }
        *fg = g as u32;
    }
    for x in &first_group {
        out.extend_from_slice(&x.to_le_bytes());
    }
    for g in &group_off {
        out.extend_from_slice(&g.to_le_bytes());
    }
    for d in &data {
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::write(dir, e))?;
    }
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MetricsError::write(path, e)
    })
}
