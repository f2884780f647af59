//! Tokenizers against outputs of the official tools (CoreNLP 3.4.1 PTBTokenizer as
//! pycocoevalcap runs it; sacrebleu's 13a tokenizer), recorded by scripts/metrics_golden.py.

use std::path::{Path, PathBuf};

use lowrank_metrics::ptb_tokenize::{coco_tokenize, ptb_tokenize_stream};
use lowrank_metrics::tokenize_13a::{tokenize_13a_perl, tokenize_13a_python};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/metrics")
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(x) => out.push(x),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn cases(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    let v: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap_or((l, ""));
            (unescape(a), unescape(b))
        })
        .collect();
    assert!(v.len() > 100, "{name}: too few cases");
    v
}

#[test]
fn ptb_tokenizer_matches_corenlp() {
    // the cases were tokenized as the lines of one stream (as pycocoevalcap does; the
    // context after a line matters for some token classes), so do the same
    let cs = cases("ptb_cases.tsv");
    let inputs: Vec<String> = cs.iter().map(|c| c.0.clone()).collect();
    let lines = ptb_tokenize_stream(&inputs.join("\n"));
    assert_eq!(lines.len(), inputs.len());
    let mut bad = Vec::new();
    for ((input, want), got) in cs.iter().zip(&lines) {
        let got = got.join(" ");
        if &got != want {
            bad.push(format!("{input:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // pycocoevalcap's view: same number of captions, punctuation tokens gone
    let coco = coco_tokenize(&inputs);
    assert_eq!(coco.len(), inputs.len());
    assert!(coco.iter().all(|l| !l
        .split(' ')
        .any(|w| [",", ".", "``", "''", "--"].contains(&w))));
}

#[test]
fn ptb_tokenizer_end_of_input() {
    // checked against CoreNLP 3.4.1 with input files without a final newline
    for (input, want) in [
        ("etc.", "etc. ."),
        ("Inc.", "inc. ."),
        ("we'll", "we ` ll"),
        (":)", ": -rrb-"),
        ("the ;-)", "the ; - -rrb-"),
        ("won't", "wo n't"),
        ("U.S.", "u.s."),
        ("a.", "a."),
        ("end.", "end ."),
        ("etc.\n", "etc. .\n"),
        ("etc.\nthe", "etc.\nthe"),
        ("etc.\nThe", "etc. .\nthe"),
    ] {
        let got: Vec<String> = ptb_tokenize_stream(input)
            .into_iter()
            .map(|l| l.join(" "))
            .collect();
        assert_eq!(got.join("\n"), want, "{input:?}");
    }
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    for (input, want) in cases("tok13a_cases.tsv") {
        let got = tokenize_13a_python(&input).join(" ");
        assert_eq!(got, want, "{input:?}");
        // the Perl flavour only differs by ASCII lowercasing (and Perl's whitespace set)
        if input.is_ascii() {
            assert_eq!(
                tokenize_13a_perl(&input).join(" "),
                want.to_ascii_lowercase(),
                "{input:?}"
            );
        }
    }
}
