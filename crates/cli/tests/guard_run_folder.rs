//! Nothing already written is lost: a run folder is never overwritten without `--overwrite`,
//! `--resume` refuses a checkpoint trained with other settings (naming the keys), says plainly
//! when there is nothing to resume or nothing left to do, and the summary of a resumed run covers
//! the whole run; folders are written whole, temporaries never stay behind, and when the final
//! adapter cannot be written the trained weights are kept elsewhere and the error says where.
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

fn run_file(dir: &Path, name: &str, rows: usize, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let data = dir.join(format!("{name}.csv"));
    std::fs::write(&data, text.lines().take(rows + 1).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    // The defaults below, except those `extra` sets.
    let defaults: String = [("steps", "6"), ("batch_size", "2"), ("lr", "0.01"), ("save_every", "3"), ("seed", "7")]
        .iter()
        .filter(|(k, _)| !extra.lines().any(|l| l.starts_with(&format!("{k} ="))))
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    let cfg = format!(
        "[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\nprompt_column = \"mr\"\ncompletion_column = \"ref\"\nmax_length = 64\n[train]\n{defaults}{extra}\n",
        tiny().display(),
        data.display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, cfg).unwrap();
    p
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run(bin().args(["train", "--config"]).arg(cfg).arg("--output").arg(out).args(extra))
}

fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("checkpoints")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            found.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with('.')));
        }
    }
    found
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_run_folder_is_never_overwritten_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "");
    let out = tmp.path().join("run");
    ok(&train(&cfg, &out, &[]));
    let adapter = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let other = run_file(tmp.path(), "b", 12, "lr = 0.02\nsave_every = 0");
    fails_with(&train(&other, &out, &[]), &["run folder", "already holds a run", "--resume", "--overwrite"]);
    assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), adapter, "the earlier adapter is untouched");
    // A path that is a file is not a run folder.
    let file = tmp.path().join("a.csv");
    fails_with(&train(&other, &file, &[]), &["a.csv", "is a file"]);
    // --overwrite replaces the whole run: the earlier checkpoints go too.
    ok(&train(&other, &out, &["--overwrite"]));
    assert_ne!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), adapter);
    assert!(!out.join("checkpoints").exists());
    assert!(std::fs::read_to_string(out.join("config.toml")).unwrap().contains("b.csv"));
    // --resume and --overwrite together make no sense.
    let o = run(bin().args(["train", "--resume"]).arg(&out).arg("--overwrite"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
}

#[test]
fn resume_refuses_a_checkpoint_trained_with_other_settings_naming_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "");
    let out = tmp.path().join("run");
    ok(&train(&cfg, &out, &[]));
    fails_with(&run(bin().args(["train", "--resume"]).arg(&out).args(["--set", "train.seed=8", "--set", "data.max_length=32"])), &["step-000003", "other settings", "train.seed: 7 → 8", "data.max_length: 64 → 32"]);
    fails_with(&run(bin().args(["train", "--resume"]).arg(&out).args(["--set", "lora.r=4"])), &["lora.r: 8 → 4"]);
    // A checkpoint from another run (other data), copied into this folder.
    let other_cfg = run_file(tmp.path(), "b", 12, "");
    let other = tmp.path().join("other");
    ok(&train(&other_cfg, &other, &[]));
    std::fs::remove_dir_all(out.join("checkpoints/step-000003")).unwrap();
    let dst = out.join("checkpoints/step-000003");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(other.join("checkpoints/step-000003")).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    std::fs::remove_file(out.join("summary.json")).unwrap();
    fails_with(&run(bin().args(["train", "--resume"]).arg(&out)), &["other settings", "data.train", "b.csv", "a.csv"]);
    // Steps and the learning rate may change on resume.
    std::fs::remove_dir_all(&out).unwrap();
    ok(&train(&cfg, &out, &[]));
    std::fs::remove_file(out.join("summary.json")).unwrap();
    ok(&run(bin().args(["train", "--resume"]).arg(&out).args(["--set", "train.steps=8", "--set", "train.lr=0.005"])));
    assert_eq!(summary(&out)["steps"], 8);
}

#[test]
fn resume_says_plainly_when_there_is_nothing_to_resume_or_nothing_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "save_every = 0");
    let out = tmp.path().join("run");
    ok(&train(&cfg, &out, &[]));
    // Finished: nothing to do, nothing touched.
    let before = std::fs::metadata(out.join("adapter/adapter_model.safetensors")).unwrap().modified().unwrap();
    let o = run(bin().args(["train", "--resume"]).arg(&out));
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to do"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(out.join("adapter/adapter_model.safetensors")).unwrap().modified().unwrap(), before);
    // Stopped before its first checkpoint (here: none are written).
    std::fs::remove_file(out.join("summary.json")).unwrap();
    fails_with(&run(bin().args(["train", "--resume"]).arg(&out)), &["has no checkpoint to resume from", "before its first checkpoint", "--overwrite"]);
    fails_with(&run(bin().args(["train", "--resume"]).arg(tmp.path().join("nowhere"))), &["nowhere"]);
}

#[test]
fn the_summary_of_a_resumed_run_covers_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "");
    let full = tmp.path().join("full");
    ok(&train(&cfg, &full, &[]));
    let resumed = tmp.path().join("resumed");
    resume_copy(&full, "step-000003", &resumed);
    let (a, b) = (summary(&full), summary(&resumed));
    assert_eq!(a["losses"], b["losses"]);
    assert_eq!(b["losses"].as_array().unwrap().len(), 6);
    assert_eq!(b["steps"], 6);
    assert_eq!(b["resumed_from"], 3);
    assert!(b["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn temporaries_of_a_killed_run_are_removed_and_folders_are_written_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "");
    let out = tmp.path().join("run");
    ok(&train(&cfg, &out, &[]));
    std::fs::remove_file(out.join("summary.json")).unwrap();
    // What kill -9 during a write leaves: a temporary adapter folder, a temporary checkpoint,
    // a temporary file (PIDs of processes that no longer exist).
    std::fs::create_dir_all(out.join(".adapter.tmp-999999999")).unwrap();
    std::fs::write(out.join(".adapter.tmp-999999999/adapter_model.safetensors"), b"half").unwrap();
    std::fs::create_dir_all(out.join("checkpoints/.step-000006.tmp-999999998")).unwrap();
    std::fs::write(out.join(".metrics.jsonl.tmp-999999997"), b"x").unwrap();
    let o = run(bin().args(["train", "--resume"]).arg(&out));
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("removed 3 temporary"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(hidden_entries(&out).is_empty(), "{:?}", hidden_entries(&out));
}

#[test]
fn a_failed_final_write_keeps_the_trained_adapter_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "a", 16, "save_every = 0");
    let out = tmp.path().join("run");
    let rescue_root = tmp.path().join("tmp");
    std::fs::create_dir_all(&rescue_root).unwrap();
    let target = format!("{}/adapter", out.display());
    let o = run(bin().env("LOWRANK_FAIL_WRITE", &target).env("TMPDIR", &rescue_root).args(["train", "--config"]).arg(&cfg).arg("--output").arg(&out));
    fails_with(&o, &["cannot write", "run/adapter", "No space left", "saved to", "lowrank-rescued-"]);
    let rescued: Vec<PathBuf> = std::fs::read_dir(&rescue_root).unwrap().flatten().map(|e| e.path().join("adapter")).collect();
    assert_eq!(rescued.len(), 1);
    assert!(rescued[0].join("adapter_config.json").exists() && rescued[0].join("adapter_model.safetensors").exists());
    assert!(!out.join("adapter").exists());
    assert!(hidden_entries(&out).is_empty(), "{:?}", hidden_entries(&out));
    // The rescued adapter is the trained one: it generates.
    ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(&rescued[0]).args(["--prompt", "hi", "--max-new-tokens", "2"])));
}

#[test]
fn merge_writes_its_folder_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = root().join("tests/fixtures/tiny-llama/peft-adapter");
    let merge = |out: &Path, extra: &[&str]| run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).arg("--output").arg(out).args(extra));
    // Onto a path that is a file: refused without --force, replaced with it.
    let file = tmp.path().join("merged");
    std::fs::write(&file, b"a file").unwrap();
    fails_with(&merge(&file, &[]), &["merged", "already exists", "--force"]);
    ok(&merge(&file, &["--force"]));
    assert!(file.join("model.safetensors").exists());
    // A failed write leaves the earlier output as it was and no temporary behind.
    let before = std::fs::read(file.join("model.safetensors")).unwrap();
    let o = run(bin().env("LOWRANK_FAIL_WRITE", file.display().to_string()).args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).arg("--output").arg(&file).arg("--force").args(["--dtype", "f16"]));
    fails_with(&o, &["cannot write", "merged"]);
    assert_eq!(std::fs::read(file.join("model.safetensors")).unwrap(), before);
    let hidden: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}
