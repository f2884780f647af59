//! Checks every metric against golden values produced by the official implementations
//! (`scripts/metrics_golden.py`: mteval-v13a.pl, pymteval.py, sacrebleu, pycocoevalcap's
//! PTBTokenizer / METEOR 1.5 / ROUGE-L / CIDEr). Only committed files are read: no Java,
//! Perl or Python is needed. METEOR on the full data runs only when the METEOR data is
//! installed (`scripts/fetch_meteor_data.sh`); a committed subset exercises it always.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lowrank_metrics::{
    bleu::corpus_bleu, cider::cider_d, coco_tokenize_corpus, format_table, mteval::MtevalCorpus,
    nist::corpus_nist, read_hypotheses, read_references, rouge_l::rouge_l, score_all, BleuNistMode,
    Meteor, MeteorSource, ScoreOptions,
};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/metrics")
}

struct Set {
    name: String,
    golden: Value,
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
}

impl Set {
    fn g(&self, k: &str) -> f64 {
        self.golden[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no {k}", self.name))
    }
}

fn load_sets() -> Vec<Set> {
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden.json")).unwrap())
            .unwrap();
    let all_refs = read_references(root().join(g["refs"].as_str().unwrap())).unwrap();
    assert_eq!(all_refs.len(), 630);
    assert_eq!(all_refs.iter().map(Vec::len).sum::<usize>(), 4693);
    let mut out = Vec::new();
    for (name, v) in g["sets"].as_object().unwrap() {
        let n = v["n_mrs"].as_u64().unwrap() as usize;
        let refs: Vec<Vec<String>> = all_refs[..n].to_vec();
        let hyps = match v["derive"].as_str() {
            Some("first_ref") => refs.iter().map(|g| g[0].clone()).collect(),
            Some("other_ref") => (0..n)
                .map(|i| refs[(i + 1) % n].last().unwrap().clone())
                .collect(),
            Some("long") => refs
                .iter()
                .map(|g| format!("{} {}", g[0], g.last().unwrap()))
                .collect(),
            Some(d) => panic!("unknown derivation {d}"),
            None => read_hypotheses(fixtures().join(v["hyps"].as_str().unwrap())).unwrap(),
        };
        assert_eq!(hyps.len(), n, "{name}");
        out.push(Set {
            name: name.clone(),
            golden: v.clone(),
            hyps,
            refs,
        });
    }
    assert!(out.len() >= 10, "golden sets missing");
    out
}

fn check(name: &str, metric: &str, got: f64, want: f64, tol: f64) -> f64 {
    let d = (got - want).abs();
    assert!(
        d <= tol,
        "{name} {metric}: got {got}, want {want} (diff {d:e} > {tol:e})"
    );
    d
}

#[test]
fn bleu_nist_official_match_mteval_perl() {
    for s in load_sets() {
        let c = MtevalCorpus::new(&s.hyps, &s.refs, BleuNistMode::Official);
        let (b, n) = (corpus_bleu(&c), corpus_nist(&c));
        // the Perl script was also run with 10 printed decimals
        check(&s.name, "BLEU", b, s.g("bleu_perl"), 1e-9);
        check(&s.name, "NIST", n, s.g("nist_perl"), 1e-9);
        // and the official 4-decimal output is reproduced exactly
        assert_eq!(
            format!("{b:.4}"),
            s.golden["bleu_perl_4dp"].as_str().unwrap(),
            "{}",
            s.name
        );
        assert_eq!(
            format!("{n:.4}"),
            s.golden["nist_perl_4dp"].as_str().unwrap(),
            "{}",
            s.name
        );
    }
}

#[test]
fn bleu_matches_sacrebleu_on_ascii_sets() {
    let mut n = 0;
    for s in load_sets() {
        // mteval lowercases ASCII only, sacrebleu everything; whitespace sets differ too
        let special = |t: &String| {
            t.chars()
                .any(|c| !c.is_ascii() && (c.is_uppercase() || c.is_whitespace()))
        };
        if s.hyps.iter().any(special) || s.refs.iter().flatten().any(special) {
            continue;
        }
        let c = MtevalCorpus::new(&s.hyps, &s.refs, BleuNistMode::Official);
        check(
            &s.name,
            "BLEU/sacrebleu",
            corpus_bleu(&c),
            s.g("bleu_sacrebleu"),
            1e-12,
        );
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn bleu_nist_python_port_match_pymteval() {
    for s in load_sets() {
        let c = MtevalCorpus::new(&s.hyps, &s.refs, BleuNistMode::PythonPort);
        check(
            &s.name,
            "BLEU(py)",
            corpus_bleu(&c),
            s.g("bleu_python"),
            1e-12,
        );
        check(
            &s.name,
            "NIST(py)",
            corpus_nist(&c),
            s.g("nist_python"),
            1e-9,
        );
    }
}

#[test]
fn rouge_l_and_cider_match_pycocoevalcap() {
    for s in load_sets() {
        let t = coco_tokenize_corpus(&s.hyps, &s.refs);
        check(
            &s.name,
            "ROUGE_L",
            rouge_l(&t.hyps, &t.refs),
            s.g("rouge_l"),
            1e-9,
        );
        check(
            &s.name,
            "CIDEr",
            cider_d(&t.hyps, &t.refs),
            s.g("cider"),
            1e-9,
        );
    }
}

/// METEOR on the committed resource subset (cut by the golden script to exactly what the
/// subset corpora can use).
#[test]
fn meteor_on_committed_subset_matches_meteor_jar() {
    let dir = fixtures().join("meteor_mini");
    let index =
        std::env::temp_dir().join(format!("lowrank-meteor-mini-{}.lrpi", std::process::id()));
    let m = Meteor::load_with_index(&dir, &index).unwrap();
    let _ = std::fs::remove_file(&index);
    let mut n = 0;
    for s in load_sets()
        .into_iter()
        .filter(|s| s.name.starts_with("subset20"))
    {
        let t = coco_tokenize_corpus(&s.hyps, &s.refs);
        check(
            &s.name,
            "METEOR(subset data)",
            m.corpus_score(&t.hyps, &t.refs),
            s.g("meteor"),
            1e-9,
        );
        n += 1;
    }
    assert_eq!(n, 3);
}

/// METEOR with the full data (skipped, saying so, when the data is not installed).
#[test]
fn meteor_full_data_matches_meteor_jar() {
    let m = match Meteor::load_default() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED meteor_full_data_matches_meteor_jar: {e}");
            return;
        }
    };
    for s in load_sets() {
        let t = coco_tokenize_corpus(&s.hyps, &s.refs);
        check(
            &s.name,
            "METEOR",
            m.corpus_score(&t.hyps, &t.refs),
            s.g("meteor"),
            1e-9,
        );
    }
}

#[test]
fn score_all_end_to_end() {
    let sets = load_sets();
    let s = sets.iter().find(|s| s.name == "noisy").unwrap();
    let opts = ScoreOptions {
        meteor: MeteorSource::Disabled,
        ..Default::default()
    };
    let sc = score_all(&s.hyps, &s.refs, &opts).unwrap();
    check("noisy", "BLEU", sc.bleu, s.g("bleu_perl"), 1e-9);
    check("noisy", "NIST", sc.nist, s.g("nist_perl"), 1e-9);
    check("noisy", "ROUGE_L", sc.rouge_l, s.g("rouge_l"), 1e-9);
    check("noisy", "CIDEr", sc.cider, s.g("cider"), 1e-9);
    assert_eq!(sc.meteor, None);
    assert_eq!(sc.meteor_unavailable_reason.as_deref(), Some("disabled"));
    let table = format_table(&sc);
    assert!(
        table.starts_with("SCORES:\n==============\nBLEU: "),
        "{table}"
    );
    assert!(
        table.contains(&format!("NIST: {:.4}", s.g("nist_perl"))),
        "{table}"
    );
    let json: Value = serde_json::from_str(&sc.to_json()).unwrap();
    assert!(json["meteor"].is_null());

    let py = score_all(
        &s.hyps,
        &s.refs,
        &ScoreOptions {
            bleu_nist_mode: BleuNistMode::PythonPort,
            ..opts
        },
    )
    .unwrap();
    check("noisy", "NIST(py)", py.nist, s.g("nist_python"), 1e-9);

    // METEOR from explicitly loaded (subset) resources goes through score_all too
    let sub = sets.iter().find(|s| s.name == "subset20_noisy").unwrap();
    let index = std::env::temp_dir().join(format!(
        "lowrank-meteor-mini-e2e-{}.lrpi",
        std::process::id()
    ));
    let m = Meteor::load_with_index(&fixtures().join("meteor_mini"), &index).unwrap();
    let _ = std::fs::remove_file(&index);
    let opts = ScoreOptions {
        meteor: MeteorSource::Loaded(Arc::new(m)),
        ..Default::default()
    };
    let sc = score_all(&sub.hyps, &sub.refs, &opts).unwrap();
    check(
        "subset20_noisy",
        "METEOR",
        sc.meteor.unwrap(),
        sub.g("meteor"),
        1e-9,
    );
    check("subset20_noisy", "CIDEr", sc.cider, sub.g("cider"), 1e-9);
}

#[test]
fn official_and_python_nist_differ_under_length_penalty() {
    let sets = load_sets();
    let s = sets.iter().find(|s| s.name == "short").unwrap();
    assert!((s.g("nist_perl") - s.g("nist_python")).abs() > 1e-3);
}
