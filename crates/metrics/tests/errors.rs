//! Error cases and edge cases of the public API.

use lowrank_metrics::{
    read_hypotheses, read_references, refs_io::parse_references_csv, score_all, Meteor,
    MeteorSource, MetricsError, ScoreOptions,
};

fn no_meteor() -> ScoreOptions {
    ScoreOptions {
        meteor: MeteorSource::Disabled,
        ..Default::default()
    }
}

#[test]
fn length_mismatch_names_both_counts() {
    let hyps = vec!["a b".to_owned(); 3];
    let refs = vec![vec!["a b".to_owned()]; 5];
    let e = score_all(&hyps, &refs, &no_meteor()).unwrap_err();
    assert!(matches!(
        e,
        MetricsError::LengthMismatch { hyps: 3, refs: 5 }
    ));
    let msg = e.to_string();
    assert!(msg.contains('3') && msg.contains('5'), "{msg}");
}

#[test]
fn empty_inputs_are_errors() {
    assert!(matches!(
        score_all(&[], &[], &no_meteor()),
        Err(MetricsError::EmptyCorpus)
    ));
    let e = score_all(
        &["x".to_owned(), "y".to_owned()],
        &[vec!["x".to_owned()], vec![]],
        &no_meteor(),
    )
    .unwrap_err();
    assert!(
        matches!(e, MetricsError::EmptyReferenceGroup { index: 1 }),
        "{e}"
    );
}

#[test]
fn missing_files_are_io_errors() {
    let e = read_hypotheses("/nonexistent/hyps.txt").unwrap_err();
    assert!(matches!(e, MetricsError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/hyps.txt"));
    assert!(matches!(
        read_references("/nonexistent/refs.csv"),
        Err(MetricsError::Io { .. })
    ));
}

#[test]
fn malformed_csv_is_reported_with_line() {
    let dir = std::env::temp_dir().join(format!("lowrank-metrics-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.csv");
    std::fs::write(&p, "mr,ref\n\"a\",\"b\"\n\"c\",\"d\",\"e\"\n").unwrap();
    let e = read_references(&p).unwrap_err();
    match &e {
        MetricsError::Csv { line, .. } => assert_eq!(*line, 3),
        _ => panic!("{e}"),
    }
    let bad_utf8 = dir.join("bad.txt");
    std::fs::write(&bad_utf8, b"ok\n\xff\xfe\n").unwrap();
    assert!(matches!(
        read_hypotheses(&bad_utf8),
        Err(MetricsError::Utf8 { offset: 3, .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(parse_references_csv("mr,ref\n\"unterminated\n").is_err());
}

#[test]
fn missing_meteor_data_is_reported_not_fatal() {
    let dir = std::env::temp_dir().join(format!("lowrank-no-meteor-{}", std::process::id()));
    let e = Meteor::load(&dir).err().expect("no data there");
    assert!(e.to_string().contains("paraphrase-en.gz"), "{e}");
    let opts = ScoreOptions {
        meteor: MeteorSource::Dir(dir),
        ..Default::default()
    };
    let s = score_all(&["a b c".to_owned()], &[vec!["a b c".to_owned()]], &opts).unwrap();
    assert_eq!(s.meteor, None);
    assert!(s
        .meteor_unavailable_reason
        .unwrap()
        .contains("fetch_meteor_data.sh"));
    // a single MR always gets CIDEr 0
    assert_eq!(s.cider, 0.0);
    // mteval: orders without hypothesis n-grams (here 4-grams) count as precision 1
    assert_eq!(s.bleu, 1.0);
}

#[test]
fn reads_both_reference_formats() {
    let dir = std::env::temp_dir().join(format!("lowrank-metrics-refs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let txt = dir.join("refs.txt");
    std::fs::write(&txt, "r1a\nr1b\n\nr2a\n").unwrap();
    assert_eq!(
        read_references(&txt).unwrap(),
        vec![vec!["r1a", "r1b"], vec!["r2a"]]
    );
    let csv = dir.join("refs.csv");
    std::fs::write(&csv, "mr,ref\nm1,r1a\n\"m2\",\"r2, \"\"a\"\"\"\nm1,r1b\n").unwrap();
    assert_eq!(
        read_references(&csv).unwrap(),
        vec![vec!["r1a", "r1b"], vec!["r2, \"a\""]]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
