//! Reading system outputs and references the way `measure_scores.py` does.
//!
//! * Hypotheses: one per line (Python `codecs` line splitting, each line stripped).
//! * References, either
//!   - the e2e-metrics text format: the references of one MR on consecutive lines, MRs
//!     separated by a blank line (a file without any blank line is single-reference, one
//!     reference per line), or
//!   - a CSV/TSV file (`.csv`/`.tsv`, or any file whose first line looks like a
//!     `mr,ref` header): quoted CSV, references grouped by MR in first-appearance order.

use std::path::Path;

use crate::error::MetricsError;
use crate::text::{py_splitlines, py_strip};

fn read_text(path: &Path) -> Result<String, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    let mut s = String::from_utf8(bytes).map_err(|e| MetricsError::Utf8 {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if s.starts_with('\u{feff}') {
        s.drain(..3);
    }
    Ok(s)
}

/// Read system outputs, one per line (each line stripped; empty lines are empty outputs).
pub fn read_hypotheses(path: impl AsRef<Path>) -> Result<Vec<String>, MetricsError> {
    let text = read_text(path.as_ref())?;
    Ok(parse_hypotheses(&text))
}

/// [`read_hypotheses`] on a string.
pub fn parse_hypotheses(text: &str) -> Vec<String> {
    py_splitlines(text)
        .into_iter()
        .map(|l| py_strip(l).to_owned())
        .collect()
}

/// Read references: e2e-metrics text format or E2E CSV/TSV (see the module docs).
pub fn read_references(path: impl AsRef<Path>) -> Result<Vec<Vec<String>>, MetricsError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let first_line = text.lines().next().unwrap_or("");
    if ext == "csv" || ext == "tsv" || looks_like_csv_header(first_line) {
        parse_references_csv(&text).map_err(|(line, message)| MetricsError::Csv {
            path: path.to_owned(),
            line,
            message,
        })
    } else {
        Ok(parse_references_text(&text))
    }
}

fn looks_like_csv_header(line: &str) -> bool {
    let delim = if line.contains('\t') { '\t' } else { ',' };
    let fields: Vec<String> = line
        .split(delim)
        .map(|f| f.trim().trim_matches('"').to_owned())
        .collect();
    fields.len() >= 2
        && fields.iter().any(|f| is_src_header(f))
        && fields.iter().any(|f| is_ref_header(f))
}

/// Parse the e2e-metrics multi-reference text format.
pub fn parse_references_text(text: &str) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    for line in py_splitlines(text) {
        let line = py_strip(line);
        if line.is_empty() {
            // measure_scores.py would create empty groups for repeated blank lines (and then
            // crash); treat any run of blank lines as one separator
            if groups.last().is_some_and(|g| !g.is_empty()) {
                groups.push(Vec::new());
            }
        } else {
            groups.last_mut().unwrap().push(line.to_owned());
        }
    }
    if groups.last().is_some_and(|g| g.is_empty()) {
        groups.pop();
    }
    if groups.len() == 1 {
        // single-reference file: one reference per line
        return groups.pop().unwrap().into_iter().map(|r| vec![r]).collect();
    }
    groups
}

/// measure_scores.py's source-column header pattern (matched at the start, ignoring case):
/// `(mr|src|source|meaning([_ .-]rep(resentation)?)?|da|dial(ogue)?[_ .-]act)s?`
fn is_src_header(f: &str) -> bool {
    let f = f.to_lowercase();
    if ["mr", "src", "source", "meaning", "da"]
        .iter()
        .any(|p| f.starts_with(p))
    {
        return true;
    }
    let rest = match f.strip_prefix("dial") {
        Some(r) => r,
        None => return false,
    };
    let rest = rest.strip_prefix("ogue").unwrap_or(rest);
    let mut ch = rest.chars();
    matches!(ch.next(), Some('_' | ' ' | '.' | '-')) && ch.as_str().starts_with("act")
}

/// measure_scores.py's reference-column header pattern (matched at the start, ignoring
/// case): `(trg|tgt|target|ref(erence)?|human([_ .-]ref(erence)?)?)s?`
fn is_ref_header(f: &str) -> bool {
    let f = f.to_lowercase();
    ["trg", "tgt", "target", "ref", "human"]
        .iter()
        .any(|p| f.starts_with(p))
}

/// Fix-ups measure_scores.py applies to CSV/TSV text (broken encodings of `£` and `é`).
fn fix_mojibake(s: &str) -> String {
    s.replace('Ł', "£")
        .replace("Â£", "£")
        .replace("Ã©", "é")
        .replace("ã©", "é")
}

/// A CSV record: 1-based line where it starts, fields.
pub type CsvRecord = (usize, Vec<String>);

/// Split CSV text into records; quoted fields may contain the delimiter, `""` and newlines.
/// Errors are (line, message).
pub fn parse_csv(text: &str, delim: char) -> Result<Vec<CsvRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut field_quoted = false;
    let mut line = 1usize;
    let mut rec_line = 1usize;
    let mut chars = text.chars().peekable();
    let mut record_has_content = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !field_quoted => {
                field.clear();
                in_quotes = true;
                field_quoted = true;
                record_has_content = true;
            }
            c if c == delim => {
                fields.push(std::mem::take(&mut field));
                field_quoted = false;
                record_has_content = true;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if record_has_content || !field.trim().is_empty() {
                    fields.push(std::mem::take(&mut field));
                    records.push((rec_line, std::mem::take(&mut fields)));
                }
                field.clear();
                field_quoted = false;
                record_has_content = false;
                line += 1;
                rec_line = line;
            }
            c => {
                field.push(c);
                if !c.is_whitespace() {
                    record_has_content = true;
                }
            }
        }
    }
    if in_quotes {
        return Err((rec_line, "unterminated quoted field".into()));
    }
    if record_has_content || !field.trim().is_empty() {
        fields.push(field);
        records.push((rec_line, fields));
    }
    Ok(records)
}

/// Parse an E2E CSV/TSV reference file (`mr,ref` or similar header; or two columns
/// without a header) and group references by MR in first-appearance order.
pub fn parse_references_csv(text: &str) -> Result<Vec<Vec<String>>, (usize, String)> {
    let text = fix_mojibake(text);
    let first = text.lines().next().unwrap_or("");
    let delim = if first.contains('\t') { '\t' } else { ',' };
    let records = parse_csv(&text, delim)?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let header = &records[0].1;
    let src_cols: Vec<usize> = (0..header.len())
        .filter(|&i| is_src_header(header[i].trim()))
        .collect();
    let ref_cols: Vec<usize> = (0..header.len())
        .filter(|&i| is_ref_header(header[i].trim()))
        .collect();
    let ncols = header.len();
    let (src_col, ref_col, body) = match (src_cols.len(), ref_cols.len()) {
        (1, 1) => (src_cols[0], ref_cols[0], &records[1..]),
        (0, 0) => {
            if ncols != 2 {
                return Err((records[0].0, format!("no header and {ncols} columns (expected 2)")));
            }
            (0, 1, &records[..])
        }
        _ => {
            return Err((
                records[0].0,
                format!("strange column arrangement: source-like columns {src_cols:?}, reference-like columns {ref_cols:?}"),
            ))
        }
    };
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (line, rec) in body {
        if rec.len() != ncols {
            return Err((*line, format!("{} columns, expected {ncols}", rec.len())));
        }
        let mr = rec[src_col].trim().to_owned();
        let r = py_strip(&rec[ref_col]).to_owned();
        groups
            .entry(mr.clone())
            .or_insert_with(|| {
                order.push(mr.clone());
                Vec::new()
            })
            .push(r);
    }
    Ok(order
        .into_iter()
        .map(|mr| groups.remove(&mr).unwrap())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_grouping() {
        let t = "mr,ref\n\"a[1], b[2]\",\"Hello, \"\"world\"\".\"\n\"x[1]\",plain\n\"a[1], b[2]\",\"multi\nline\"\n";
        let g = parse_references_csv(t).unwrap();
        assert_eq!(
            g,
            vec![
                vec!["Hello, \"world\".".to_owned(), "multi\nline".to_owned()],
                vec!["plain".to_owned()]
            ]
        );
    }

    #[test]
    fn csv_errors() {
        assert!(parse_references_csv("mr,ref\n\"a,b\n").is_err());
        assert!(parse_references_csv("mr,ref\na,b,c\n").is_err());
        assert!(parse_references_csv("a,b,c\n1,2,3\n").is_err());
    }

    #[test]
    fn tsv_and_headerless() {
        let g = parse_references_csv("mr\tref\nm1\tr1\nm1\tr2\n").unwrap();
        assert_eq!(g, vec![vec!["r1".to_owned(), "r2".to_owned()]]);
        let g = parse_references_csv("m1,r1\nm2,r2\n").unwrap();
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn text_format() {
        let g = parse_references_text("a\nb\n\nc\n\n\nd\ne\n\n");
        assert_eq!(g, vec![vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
        let single = parse_references_text("a\nb\nc\n");
        assert_eq!(single, vec![vec!["a"], vec!["b"], vec!["c"]]);
    }

    #[test]
    fn hypotheses_lines() {
        assert_eq!(parse_hypotheses("a \n\n b\r\nc"), vec!["a", "", "b", "c"]);
    }
}
