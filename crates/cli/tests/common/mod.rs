//! Helpers shared by the CLI tests: the binary, fixture paths, success and failure checks.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowrank"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "command failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Fails with exit code 1 and one `lowrank: error:` line containing every needle; no panic.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with("lowrank: error:")).unwrap_or_else(|| panic!("no error line in: {stderr}"));
    for n in needles {
        assert!(line.contains(n), "error line lacks `{n}`: {line}");
    }
}

/// Copies checkpoint `step` (e.g. `step-000002`) of the run in `out`, with its config.toml, into
/// the fresh run folder `resumed`, and continues training there with `--resume`.
pub fn resume_copy(out: &Path, step: &str, resumed: &Path) {
    let from = out.join("checkpoints").join(step);
    let to = resumed.join("checkpoints").join(step);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    std::fs::copy(out.join("config.toml"), resumed.join("config.toml")).unwrap();
    ok(&run(bin().current_dir(root()).args(["train", "--resume"]).arg(resumed)));
}
