//! `lowrank_metrics::sacrebleu` against sacrebleu 2.6.0 (`corpus_bleu(..., tokenize="13a")`,
//! cased and lowercased) on the Multi30k test_2016 German references with varied
//! hypothesis sets, and its tokenizer/preprocessing on tricky strings. The expected
//! figures come from `scripts/sacrebleu_golden.py` (tests/fixtures/sacrebleu/).
//!
//! `LOWRANK_SACREBLEU_EXTRA_CASES=FILE` adds the tokenizer cases of FILE (written by
//! `scripts/sacrebleu_golden.py --fuzz N --fuzz-out FILE`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use lowrank_metrics::sacrebleu::{
    corpus_bleu, preprocess, refs_from_streams, tokenize_13a, NumRefs, SacreBleu,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sacrebleu")
}

fn gunzip(path: &Path) -> String {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(f)
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// The lines of a text file as Python's `read().split("\n")` minus a final empty one.
fn gz_lines(path: &Path) -> Vec<Option<String>> {
    let text = gunzip(path);
    let mut v: Vec<Option<String>> = text.split('\n').map(|l| Some(l.to_owned())).collect();
    if v.last() == Some(&Some(String::new())) {
        v.pop();
    }
    v
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn str_list(v: &Value) -> Vec<Option<String>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn texts(g: &Value) -> HashMap<String, Vec<Option<String>>> {
    let mut named = HashMap::new();
    for (name, file) in g["texts_files"].as_object().unwrap() {
        named.insert(
            name.clone(),
            gz_lines(&fixtures().join(file.as_str().unwrap())),
        );
    }
    let derived: Value =
        serde_json::from_str(&gunzip(&fixtures().join(g["texts"].as_str().unwrap()))).unwrap();
    for (name, lines) in derived.as_object().unwrap() {
        named.insert(name.clone(), str_list(lines));
    }
    named
}

/// A text spec: a name, an inline list, or a derivation (see the script).
fn resolve(spec: &Value, named: &HashMap<String, Vec<Option<String>>>) -> Vec<Option<String>> {
    match spec {
        Value::String(name) => named[name.as_str()].clone(),
        Value::Array(_) => str_list(spec),
        Value::Object(o) => {
            let base = &named[o["text"].as_str().unwrap()];
            if o.get("reverse_words").and_then(Value::as_bool) == Some(true) {
                base.iter()
                    .map(|l| {
                        let l = l.as_ref().unwrap();
                        Some(l.split(' ').rev().collect::<Vec<_>>().join(" "))
                    })
                    .collect()
            } else if let Some(k) = o.get("gaps_every").and_then(Value::as_u64) {
                base.iter()
                    .enumerate()
                    .map(|(i, l)| {
                        if (i as u64).is_multiple_of(k) {
                            None
                        } else {
                            l.clone()
                        }
                    })
                    .collect()
            } else {
                panic!("unknown text spec {spec}")
            }
        }
        _ => panic!("bad text spec {spec}"),
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// A float from its Python `repr()` (Rust's parser rounds correctly; serde_json's default
/// one may be an ulp off).
fn float(v: &Value) -> f64 {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn fixture_references_are_complete() {
    let g = golden();
    assert_eq!(
        g["sacrebleu_version"],
        lowrank_metrics::sacrebleu::SACREBLEU_VERSION
    );
    let named = texts(&g);
    assert_eq!(named["de"].len(), 1000);
    assert_eq!(named["en"].len(), 1000);
    assert_eq!(
        named["de"][0].as_deref(),
        Some("Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.")
    );
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let g = golden();
    let named = texts(&g);
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut bad = Vec::new();
    let mut max_diff = 0.0f64;
    let (mut n_floats, mut n_exact) = (0, 0);
    for c in cases {
        let name = format!(
            "{} (lowercase={})",
            c["name"].as_str().unwrap(),
            c["lowercase"]
        );
        let hyps: Vec<String> = resolve(&c["hyps"], &named)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let streams: Vec<Vec<Option<String>>> = c["refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| resolve(s, &named))
            .collect();
        let refs = refs_from_streams(&streams);
        let lc = c["lowercase"].as_bool().unwrap();
        let got: SacreBleu = corpus_bleu(&hyps, &refs, lc);
        let e = &c["expected"];
        let r = &e["repr"];

        let mut close = |what: &str, got: f64, want: f64| {
            let d = (got - want).abs();
            max_diff = max_diff.max(d);
            n_floats += 1;
            n_exact += usize::from(got.to_bits() == want.to_bits());
            if d > TOL {
                bad.push(format!("{name}: {what} {got} != {want} (diff {d:e})"));
            }
        };
        close("score", got.score, float(&r["score"]));
        close("bp", got.bp, float(&r["bp"]));
        for (n, want) in r["precisions"].as_array().unwrap().iter().enumerate() {
            close(&format!("precision[{n}]"), got.precisions[n], float(want));
        }
        // the plain JSON numbers say the same (up to serde_json's parsing)
        assert!((e["score"].as_f64().unwrap() - float(&r["score"])).abs() < 1e-12);
        let mut same = |what: &str, got: String, want: String| {
            if got != want {
                bad.push(format!("{name}: {what}\n  got  {got}\n  want {want}"));
            }
        };
        same(
            "lengths",
            format!("{} {}", got.sys_len, got.ref_len),
            format!("{} {}", e["sys_len"], e["ref_len"]),
        );
        same(
            "counts",
            format!("{:?}", got.counts),
            format!("{:?}", usizes(&e["counts"])),
        );
        same(
            "totals",
            format!("{:?}", got.totals),
            format!("{:?}", usizes(&e["totals"])),
        );
        same(
            "signature",
            got.signature(),
            e["signature"].as_str().unwrap().into(),
        );
        same(
            "short signature",
            got.signature_short(),
            e["signature_short"].as_str().unwrap().into(),
        );
        same("str()", got.to_string(), e["str"].as_str().unwrap().into());
        same(
            "format(signature)",
            got.format_with_signature(),
            e["formatted"].as_str().unwrap().into(),
        );
    }
    eprintln!(
        "{} sacrebleu cases: {n_exact} of {n_floats} scores/bps/precisions bit-identical, \
         largest difference {max_diff:e}",
        cases.len()
    );
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn check_tokenizer_cases(cases: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    for c in cases {
        let input = c["input"].as_str().unwrap();
        for (what, got) in [
            ("tok13a", tokenize_13a(input).join(" ")),
            ("cased", preprocess(input, false).join(" ")),
            ("lower", preprocess(input, true).join(" ")),
        ] {
            let want = c[what].as_str().unwrap();
            if got != want {
                bad.push(format!("{what} {input:?}\n  got  {got:?}\n  want {want:?}"));
            }
        }
    }
    bad
}

#[test]
fn tokenizer_matches_sacrebleu() {
    let g = golden();
    let cases = g["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 500);
    let mut bad = check_tokenizer_cases(cases);
    if let Ok(extra) = std::env::var("LOWRANK_SACREBLEU_EXTRA_CASES") {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&extra).unwrap()).unwrap();
        let extra_cases = v["tokenizer_cases"].as_array().unwrap();
        bad.extend(check_tokenizer_cases(extra_cases));
        eprintln!("checked {} extra tokenizer cases", extra_cases.len());
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn tokenizer_examples() {
    let t = |s: &str| tokenize_13a(s).join(" ");
    assert_eq!(
        t("„Ein Mann“ – kostet 1,000.5 Euro… (ca. 20%)!"),
        "„Ein Mann“ – kostet 1,000.5 Euro… ( ca . 20 % ) !"
    );
    assert_eq!(
        t("5-jährige e-mail 3-4 U.S.A."),
        "5 - jährige e-mail 3 - 4 U . S . A ."
    );
    assert_eq!(t("&quot;a&quot; &amp; <skipped>b"), "\" a \" & b");
    assert_eq!(
        preprocess("Straße GROẞ ÄÖÜ", true).join(" "),
        "straße groß äöü"
    );
}

#[test]
fn multi_reference_clipping_and_closest_length() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // "the" may match twice (max over refs, not the sum); lengths 4 and 2 are both 1 away
    // from 3: the shorter counts
    let b = corpus_bleu(
        &s(&["the the cat"]),
        &[s(&["the cat sat down", "the the"])],
        false,
    );
    assert_eq!(b.counts, [3, 2, 0, 0]);
    assert_eq!(b.totals, [3, 2, 1, 0]);
    assert_eq!((b.sys_len, b.ref_len), (3, 2));
    assert_eq!(b.nrefs, NumRefs::Fixed(2));
    // p3 smoothed to 100/(2*1), p4 left at 0 (its total is 0): score 0
    assert_eq!(b.precisions, [100.0, 100.0, 50.0, 0.0]);
    assert_eq!(b.score, 0.0);
}
