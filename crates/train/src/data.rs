//! Training examples: (prompt, completion) pairs read from CSV, JSONL or parallel text files,
//! tokenised into ids with the prompt masked out of the labels.
use crate::error::{Result, TrainError};
use lowrank_models::ops::IGNORE_INDEX;
use lowrank_models::TextTokenizer;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// On-disk layout of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// From the file name: `.csv`, `.jsonl`/`.json`, otherwise parallel text.
    #[default]
    Auto,
    Csv,
    Jsonl,
    /// Two line-aligned files (source, target), optionally gzip-compressed.
    Parallel,
}

/// A prompt and the completion the model learns to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPair {
    pub prompt: String,
    pub completion: String,
}

/// A tokenised example. Decoder-only: `input_ids` is prompt + completion and
/// `labels[i] = input_ids[i]` on completion tokens, `IGNORE_INDEX` on the prompt. Encoder–decoder
/// (`seq2seq`): `input_ids` is the encoder input (the prompt) and `labels` the decoder targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub seq2seq: bool,
}

impl Example {
    pub fn target_tokens(&self) -> usize {
        // Causal shift: label i is predicted from position i - 1, so label 0 never counts.
        let skip = usize::from(!self.seq2seq);
        self.labels.iter().skip(skip).filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// How to read one data file.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub format: DataFormat,
    pub prompt_column: String,
    pub completion_column: String,
    /// For parallel text: the target-side file.
    pub target_file: Option<PathBuf>,
}

fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    if path.extension().map(|e| e == "gz").unwrap_or(false) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

/// Lines of a (possibly gzip-compressed) text file; a non-UTF-8 line names its number.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut reader = std::io::BufReader::new(open_maybe_gz(path)?);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        while buf.last().map(|&c| c == b'\n' || c == b'\r').unwrap_or(false) {
            buf.pop();
        }
        let s = std::str::from_utf8(&buf).map_err(|e| TrainError::Data { path: path.to_path_buf(), line: line_no, reason: format!("not valid UTF-8 ({e})") })?;
        out.push(s.to_string());
    }
    Ok(out)
}

fn resolve_format(path: &Path, f: DataFormat) -> DataFormat {
    if f != DataFormat::Auto {
        return f;
    }
    let name = path.to_string_lossy().to_lowercase();
    if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        DataFormat::Csv
    } else if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".jsonl.gz") {
        DataFormat::Jsonl
    } else {
        DataFormat::Parallel
    }
}

/// Reads (prompt, completion) pairs from `path`.
pub fn read_pairs(path: &Path, spec: &ReadSpec) -> Result<Vec<TextPair>> {
    let pairs = match resolve_format(path, spec.format) {
        DataFormat::Csv => read_csv(path, spec)?,
        DataFormat::Jsonl => read_jsonl(path, spec)?,
        DataFormat::Parallel | DataFormat::Auto => {
            let target = spec.target_file.as_ref().ok_or_else(|| TrainError::Config {
                path: path.to_path_buf(),
                reason: "parallel text needs a target file (data.train_target / data.valid_target)".into(),
            })?;
            let src = read_lines(path)?;
            let tgt = read_lines(target)?;
            if src.len() != tgt.len() {
                return Err(TrainError::Data {
                    path: target.clone(),
                    line: tgt.len().min(src.len()) + 1,
                    reason: format!("{} lines here but {} in the source file {} (they must be line-aligned)", tgt.len(), src.len(), path.display()),
                });
            }
            src.into_iter().zip(tgt).map(|(prompt, completion)| TextPair { prompt, completion }).collect()
        }
    };
    if pairs.is_empty() {
        return Err(TrainError::EmptyData { path: path.to_path_buf(), hint: String::new() });
    }
    Ok(pairs)
}

fn read_csv(path: &Path, spec: &ReadSpec) -> Result<Vec<TextPair>> {
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(open_maybe_gz(path)?);
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
        let reason = match e.kind() {
            csv::ErrorKind::Utf8 { err, .. } => format!("not valid UTF-8 ({err})"),
            _ => e.to_string(),
        };
        TrainError::Data { path: path.to_path_buf(), line, reason }
    };
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h == name).ok_or_else(|| TrainError::MissingColumn {
            path: path.to_path_buf(),
            column: name.to_string(),
            available: headers.iter().collect::<Vec<_>>().join(", "),
        })
    };
    let (pc, cc) = (col(&spec.prompt_column)?, col(&spec.completion_column)?);
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(csv_err)?;
        out.push(TextPair { prompt: rec.get(pc).unwrap_or_default().to_string(), completion: rec.get(cc).unwrap_or_default().to_string() });
    }
    Ok(out)
}

fn read_jsonl(path: &Path, spec: &ReadSpec) -> Result<Vec<TextPair>> {
    let mut out = Vec::new();
    for (i, line) in read_lines(path)?.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| TrainError::Data { path: path.to_path_buf(), line: i + 1, reason: format!("invalid JSON: {e}") })?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let pair = match (get(&spec.prompt_column), get(&spec.completion_column), get("text")) {
            (Some(prompt), Some(completion), _) => TextPair { prompt, completion },
            (None, None, Some(text)) => TextPair { prompt: String::new(), completion: text },
            _ => {
                return Err(TrainError::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("expected string fields `{}` and `{}` (or `text`)", spec.prompt_column, spec.completion_column),
                })
            }
        };
        out.push(pair);
    }
    Ok(out)
}

/// Checks a template: it must contain `{placeholder}` (else the text would be dropped), and any
/// other `{name}` is a misspelt or unknown placeholder that would be left in the text as it is.
/// Braces around anything but a plain name (JSON, say) are literal text. `key` names the
/// setting in the message.
pub fn check_template(template: &str, placeholder: &str, key: &str) -> std::result::Result<(), String> {
    let wanted = format!("{{{placeholder}}}");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name != placeholder {
            return Err(format!("{key} = {template:?} has an unknown placeholder `{{{name}}}`; the only one is `{wanted}`"));
        }
        rest = &after[close + 1..];
    }
    if !template.contains(&wanted) {
        return Err(format!("{key} = {template:?} lacks `{wanted}`, so the {placeholder} text would be dropped"));
    }
    Ok(())
}

/// Turns pairs into token ids with templates.
#[derive(Debug, Clone)]
pub struct Templater {
    /// `{prompt}` is replaced by the prompt text.
    pub prompt_template: String,
    /// `{completion}` is replaced by the completion text.
    pub completion_template: String,
    /// Append the tokenizer's end-of-sequence id to the completion.
    pub append_eos: bool,
    /// Truncate examples to this many tokens (completion first kept); for an encoder–decoder,
    /// the source and the target are each truncated to it.
    pub max_length: usize,
    /// Encoder–decoder examples: the prompt (with EOS) feeds the encoder, the completion (with
    /// EOS) is the decoder's target.
    pub seq2seq: bool,
}

impl Templater {
    pub fn prompt_text(&self, prompt: &str) -> String {
        self.prompt_template.replace("{prompt}", prompt)
    }

    pub fn encode(&self, tok: &TextTokenizer, pair: &TextPair) -> Result<Example> {
        let p = tok.encode(&self.prompt_text(&pair.prompt))?;
        let mut c = tok.encode(&self.completion_template.replace("{completion}", &pair.completion))?;
        if self.append_eos {
            if let Some(&eos) = tok.eos_ids.first() {
                c.push(eos);
            }
        }
        if self.seq2seq {
            let mut input_ids = p;
            if self.append_eos {
                input_ids.extend(tok.eos_ids.first());
            }
            input_ids.truncate(self.max_length);
            let mut labels: Vec<i64> = c.iter().map(|&x| x as i64).collect();
            labels.truncate(self.max_length);
            return Ok(Example { input_ids, labels, seq2seq: true });
        }
        let mut input_ids = p.clone();
        input_ids.extend(&c);
        let mut labels: Vec<i64> = std::iter::repeat(IGNORE_INDEX).take(p.len()).collect();
        labels.extend(c.iter().map(|&x| x as i64));
        input_ids.truncate(self.max_length);
        labels.truncate(self.max_length);
        Ok(Example { input_ids, labels, seq2seq: false })
    }
}

/// Tokenises all pairs; examples left with no completion token after truncation are dropped.
pub fn encode_all(tok: &TextTokenizer, tpl: &Templater, pairs: &[TextPair], path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let e = tpl.encode(tok, p)?;
        if e.target_tokens() > 0 {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(TrainError::EmptyData {
            path: path.to_path_buf(),
            hint: format!(" after tokenisation (no completion token fits in max_length = {})", tpl.max_length),
        });
    }
    Ok(out)
}

/// A padded batch: `input_ids, attention_mask: (b, t)` with `t` the longest member; `labels`
/// padded with `IGNORE_INDEX` (to `t`, or to the longest target for an encoder–decoder).
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub labels: Vec<Vec<i64>>,
    pub rows: usize,
    pub len: usize,
    pub target_tokens: usize,
    /// Tokens the model reads (input tokens, plus decoder tokens for an encoder–decoder).
    pub tokens: usize,
}

/// Pads `examples` on the right to their longest member.
pub fn collate(examples: &[&Example], pad_id: u32) -> Batch {
    let len = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0).max(1);
    let rows = examples.len();
    let mut input_ids = Vec::with_capacity(rows * len);
    let mut attention_mask = Vec::with_capacity(rows * len);
    let mut labels = Vec::with_capacity(rows);
    let seq2seq = examples.iter().any(|e| e.seq2seq);
    let label_len = if seq2seq { examples.iter().map(|e| e.labels.len()).max().unwrap_or(0).max(1) } else { len };
    for e in examples {
        let pad = len - e.input_ids.len();
        input_ids.extend(e.input_ids.iter().copied().chain(std::iter::repeat(pad_id).take(pad)));
        attention_mask.extend(std::iter::repeat(1).take(e.input_ids.len()).chain(std::iter::repeat(0).take(pad)));
        let lpad = label_len.saturating_sub(e.labels.len());
        labels.push(e.labels.iter().copied().chain(std::iter::repeat(IGNORE_INDEX).take(lpad)).collect());
    }
    let target_tokens = examples.iter().map(|e| e.target_tokens()).sum();
    let tokens = examples.iter().map(|e| e.input_ids.len() + if e.seq2seq { e.labels.len() } else { 0 }).sum();
    Batch { input_ids, attention_mask, labels, rows, len, target_tokens, tokens }
}

/// Order of examples in epoch `epoch`: shuffled with the seed, then grouped into batches of
/// similar length (sorted within windows of 32 batches) and the batches shuffled again, so
/// padding stays small while the order stays random. Deterministic in `(seed, epoch)`.
pub fn epoch_batches(examples: &[Example], batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    use lowrank_models::generate::SplitMix64;
    let mut rng = SplitMix64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5151);
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    shuffle(&mut idx, &mut rng);
    let window = batch_size * 32;
    for chunk in idx.chunks_mut(window) {
        chunk.sort_by_key(|&i| examples[i].input_ids.len());
    }
    let mut batches: Vec<Vec<usize>> = idx.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect();
    shuffle(&mut batches, &mut rng);
    batches
}

fn shuffle<T>(v: &mut [T], rng: &mut lowrank_models::generate::SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_to_longest_and_masks_labels() {
        let a = Example { input_ids: vec![5, 6, 7], labels: vec![-100, 6, 7], seq2seq: false };
        let b = Example { input_ids: vec![8], labels: vec![8], seq2seq: false };
        let batch = collate(&[&a, &b], 0);
        assert_eq!(batch.len, 3);
        assert_eq!(batch.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(batch.labels[1], vec![8, -100, -100]);
        assert_eq!(batch.target_tokens, 2);
    }

    #[test]
    fn seq2seq_collate_pads_targets_separately() {
        let a = Example { input_ids: vec![5, 6, 7, 1], labels: vec![9, 1], seq2seq: true };
        let b = Example { input_ids: vec![8, 1], labels: vec![4, 4, 4, 1], seq2seq: true };
        let batch = collate(&[&a, &b], 0);
        assert_eq!((batch.len, batch.rows), (4, 2));
        assert_eq!(batch.input_ids, vec![5, 6, 7, 1, 8, 1, 0, 0]);
        assert_eq!(batch.labels, vec![vec![9, 1, -100, -100], vec![4, 4, 4, 1]]);
        assert_eq!(batch.target_tokens, 6);
        assert_eq!(batch.tokens, 12);
    }

    #[test]
    fn epoch_order_is_deterministic_and_complete() {
        let ex: Vec<Example> = (0..50).map(|i| Example { input_ids: vec![1; 1 + i % 7], labels: vec![1; 1 + i % 7], seq2seq: false }).collect();
        let a = epoch_batches(&ex, 4, 7, 0);
        assert_eq!(a, epoch_batches(&ex, 4, 7, 0));
        assert_ne!(a, epoch_batches(&ex, 4, 7, 1));
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }
}
