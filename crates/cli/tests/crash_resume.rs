//! The crash test: a tiny training killed with SIGKILL at random moments, and at moments inside
//! a checkpoint write and inside the final adapter write, then resumed (or restarted when it
//! died before its first checkpoint) until it finishes, ends bit-identical to an uninterrupted
//! run — every step's loss and the adapter's bytes — with no temporary left behind.
//!
//! Writes are slowed by `LOWRANK_WRITE_DELAY_MS` so that a good share of the random kills land
//! inside writes.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

fn run_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let data = dir.join("train.csv");
    std::fs::write(&data, text.lines().take(17).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let cfg = format!(
        "[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\nprompt_column = \"mr\"\ncompletion_column = \"ref\"\nmax_length = 64\n[lora]\ndropout = 0.1\n[train]\nsteps = 12\nbatch_size = 2\nlr = 0.01\nsave_every = 2\nseed = 11\n",
        tiny().display(),
        data.display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// The next command for a run folder in whatever state a kill left it: resume when there is a
/// checkpoint or a finished run, start over otherwise.
fn next_attempt(cfg: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.env("LOWRANK_WRITE_DELAY_MS", "15").stdout(Stdio::null()).stderr(Stdio::piped());
    let has_checkpoint = std::fs::read_dir(out.join("checkpoints")).map(|d| d.flatten().any(|e| !e.file_name().to_string_lossy().starts_with('.') && e.path().join("trainer_state.json").exists())).unwrap_or(false);
    if has_checkpoint || out.join("summary.json").exists() {
        c.args(["train", "--resume"]).arg(out);
    } else {
        c.args(["train", "--config"]).arg(cfg).arg("--output").arg(out).arg("--overwrite");
    }
    c
}

/// A hidden temporary of a folder write under `out` whose name contains `needle`.
fn writing(out: &Path, needle: &str) -> bool {
    [out.to_path_buf(), out.join("checkpoints")].iter().any(|d| {
        std::fs::read_dir(d).map(|e| e.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with('.') && n.contains(needle) && n.contains(".tmp-")
        })).unwrap_or(false)
    })
}

enum Kill {
    /// After this many milliseconds.
    After(u64),
    /// As soon as a temporary folder whose name contains this appears.
    InWriteOf(&'static str),
}

/// Runs `c` and kills it as `kill` says; returns whether it finished on its own (and its stderr).
fn attempt(mut c: Command, out: &Path, kill: &Kill) -> (bool, String) {
    let mut child: Child = c.spawn().expect("the binary runs");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "an attempt failed on its own: {err}");
            return (true, err);
        }
        let now = match kill {
            Kill::After(ms) => start.elapsed() >= Duration::from_millis(*ms),
            Kill::InWriteOf(needle) => writing(out, needle),
        };
        if now {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return (false, String::new());
        }
        assert!(start.elapsed() < Duration::from_secs(120), "an attempt hangs");
        std::thread::sleep(Duration::from_micros(300));
    }
}

fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("checkpoints"), dir.join("adapter")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            found.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with('.')));
        }
    }
    found
}

fn step_losses(dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn killed_training_resumes_to_a_bit_identical_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path());
    let reference = tmp.path().join("reference");
    ok(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&reference)));
    let ref_adapter = std::fs::read(reference.join("adapter/adapter_model.safetensors")).unwrap();
    let ref_config = std::fs::read(reference.join("adapter/adapter_config.json")).unwrap();
    let ref_summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(reference.join("summary.json")).unwrap()).unwrap();
    let ref_losses = step_losses(&reference);
    assert_eq!(ref_losses.len(), 12);

    // A fixed pseudo-random sequence of kill times (reproducible failures).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut plans: Vec<Vec<Kill>> = Vec::new();
    for _ in 0..8 {
        plans.push((0..4).map(|_| Kill::After(20 + next(450))).collect());
    }
    plans.push(vec![Kill::InWriteOf("step-000002"), Kill::InWriteOf("step-000006"), Kill::InWriteOf("step-000010")]);
    plans.push(vec![Kill::InWriteOf("adapter"), Kill::InWriteOf("adapter")]);
    plans.push(vec![Kill::InWriteOf("metrics.jsonl"), Kill::After(5), Kill::InWriteOf("summary.json")]);

    let mut killed_total = 0;
    for (trial, plan) in plans.iter().enumerate() {
        let out = tmp.path().join(format!("trial-{trial}"));
        let mut kills = 0;
        let mut finished = false;
        for kill in plan {
            let (done, _) = attempt(next_attempt(&cfg, &out), &out, kill);
            if done {
                finished = true;
                break;
            }
            kills += 1;
        }
        if !finished {
            // The last attempt runs to the end (several, if it says there was nothing to do).
            let (done, _) = attempt(next_attempt(&cfg, &out), &out, &Kill::After(u64::MAX));
            assert!(done);
        }
        killed_total += kills;
        let what = format!("trial {trial} ({kills} kills)");
        assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), ref_adapter, "{what}: adapter differs");
        assert_eq!(std::fs::read(out.join("adapter/adapter_config.json")).unwrap(), ref_config, "{what}: adapter config differs");
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["losses"], ref_summary["losses"], "{what}: losses differ");
        assert_eq!(step_losses(&out), ref_losses, "{what}: metrics.jsonl differs");
        assert!(hidden_entries(&out).is_empty(), "{what}: temporaries left: {:?}", hidden_entries(&out));
    }
    eprintln!("{} trials, {killed_total} SIGKILLs, every trial bit-identical to the uninterrupted run", plans.len());
    assert!(killed_total >= 15, "only {killed_total} kills landed");
}
