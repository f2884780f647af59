//! Reading the three data formats, and their errors.
use lowrank_train::data::{read_pairs, DataFormat, ReadSpec};
use std::io::Write;

fn spec(format: DataFormat, target: Option<std::path::PathBuf>) -> ReadSpec {
    ReadSpec { format, prompt_column: "prompt".into(), completion_column: "completion".into(), target_file: target }
}

#[test]
fn jsonl_prompt_completion_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(&p, "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"text\": \"whole\"}\n").unwrap();
    let pairs = read_pairs(&p, &spec(DataFormat::Auto, None)).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!((pairs[0].prompt.as_str(), pairs[0].completion.as_str()), ("a", "b"));
    assert_eq!((pairs[1].prompt.as_str(), pairs[1].completion.as_str()), ("", "whole"));
    std::fs::write(&p, "{\"prompt\": \"a\"}\n").unwrap();
    let err = read_pairs(&p, &spec(DataFormat::Jsonl, None)).unwrap_err().to_string();
    assert!(err.contains("d.jsonl") && err.contains("line 1") && err.contains("completion"), "{err}");
}

#[test]
fn parallel_gzip_files() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tgt) = (dir.path().join("train.en.gz"), dir.path().join("train.de.gz"));
    for (p, text) in [(&src, "A dog runs.\nTwo men.\n"), (&tgt, "Ein Hund rennt.\nZwei Männer.\n")] {
        let mut e = flate2::write::GzEncoder::new(std::fs::File::create(p).unwrap(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    }
    let pairs = read_pairs(&src, &spec(DataFormat::Parallel, Some(tgt.clone()))).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].completion, "Zwei Männer.");
    // Misaligned files are an error naming both counts.
    std::fs::write(dir.path().join("short.de"), "Ein Hund rennt.\n").unwrap();
    let err = read_pairs(&src, &spec(DataFormat::Parallel, Some(dir.path().join("short.de")))).unwrap_err().to_string();
    assert!(err.contains("short.de") && err.contains("1 lines here but 2 in the source file") && err.contains("train.en.gz"), "{err}");
}

#[test]
fn multi30k_files_read() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/multi30k");
    if !root.exists() {
        eprintln!("skipped: {} not present", root.display());
        return;
    }
    let pairs = read_pairs(&root.join("val.en.gz"), &spec(DataFormat::Parallel, Some(root.join("val.de.gz")))).unwrap();
    assert_eq!(pairs.len(), 1014);
}
