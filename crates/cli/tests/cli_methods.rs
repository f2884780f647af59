//! Every PEFT method through the real binary on the tiny Llama, chosen by one line of the run
//! file: train, resume to the same losses, generate, eval, merge (or a clear "cannot be merged"),
//! inspect; and the mistakes a user can make with methods, each one `lowrank: error:` line.
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

fn write_data(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let p = dir.join("train.csv");
    std::fs::write(&p, text.lines().take(n + 1).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    p
}

/// A run file for `method` with `section` as its settings.
fn write_config(dir: &Path, data: &Path, method: &str, section: &str) -> PathBuf {
    let cfg = format!(
        r#"[model]
path = "{}"
[peft]
method = "{method}"
{section}
[data]
train = "{}"
prompt_column = "mr"
completion_column = "ref"
prompt_template = "{{prompt}} => "
max_length = 64
[train]
steps = 6
batch_size = 2
lr = 0.05
save_every = 3
seed = 7
"#,
        tiny().display(),
        data.display()
    );
    let p = dir.join(format!("{method}.toml"));
    std::fs::write(&p, cfg).unwrap();
    p
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn every_method_trains_resumes_generates_evaluates_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 16);
    let prompt = "name[Alimentum], area[city centre] => ";
    let base = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).args(["--prompt", prompt, "--max-new-tokens", "8"])));
    for (method, section, mergeable) in [
        ("dora", "[dora]\nr = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\"]", true),
        ("ia3", "", true),
        ("bitfit", "[bitfit]\ntargets = \"all-linear\"", false),
        ("ln_tuning", "", true),
    ] {
        let cfg = write_config(tmp.path(), &data, method, section);
        let out = tmp.path().join(method);
        let log = run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&out));
        let stderr = String::from_utf8_lossy(&log.stderr).to_string();
        ok(&log);
        assert!(stderr.contains("trainable params:"), "{method}: {stderr}");
        let l = losses(&out);
        assert_eq!(l.len(), 6, "{method}");
        assert!(l.iter().all(|x| x.is_finite()), "{method}: {l:?}");
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
        let want_type = match method { "dora" => "LORA", "ia3" => "IA3", "bitfit" => "BEFT", _ => "LN_TUNING" };
        assert_eq!(written["peft_type"], want_type, "{method}");

        // Resuming from step 3 gives the same losses and the same adapter.
        let resumed = tmp.path().join(format!("{method}-resumed"));
        resume_copy(&out, "step-000003", &resumed);
        let r = losses(&resumed);
        for (a, b) in l[3..].iter().zip(&r) {
            assert!((a - b).abs() < 1e-6, "{method}: resumed loss {b} vs {a}");
        }
        assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), std::fs::read(resumed.join("adapter/adapter_model.safetensors")).unwrap(), "{method}");

        // Generation with the adapter (unmerged) changes the text; eval runs.
        let adapter = out.join("adapter");
        let unmerged = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).args(["--no-merge", "--prompt", prompt, "--max-new-tokens", "8"])));
        assert_ne!(unmerged, base, "{method}: the adapter changed nothing");
        let eval_dir = tmp.path().join(format!("{method}-eval"));
        ok(&run(bin().args(["eval", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).arg("--data").arg(&data).args(["--limit", "3", "--max-new-tokens", "6", "--no-meteor", "--template", "{prompt} => "]).arg("--output").arg(&eval_dir)));
        assert!(eval_dir.join("scores.json").exists(), "{method}");

        let merged = tmp.path().join(format!("{method}-merged"));
        let m = run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).arg("--output").arg(&merged));
        if mergeable {
            ok(&m);
            let from_merged = ok(&run(bin().args(["generate", "--model"]).arg(&merged).args(["--prompt", prompt, "--max-new-tokens", "8"])));
            assert_eq!(from_merged, unmerged, "{method}: merged and unmerged generate differently");
            // generate merges by default where the method merges.
            let merged_here = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(&adapter).args(["--prompt", prompt, "--max-new-tokens", "8"])));
            assert_eq!(merged_here, unmerged, "{method}");
        } else {
            fails_with(&m, &["cannot be merged", "no bias"]);
            assert!(!merged.exists(), "{method}: a refused merge left {}", merged.display());
        }
    }
}

#[test]
fn inspect_counts_every_method_as_peft_prints_it() {
    for (args, count) in [
        (vec!["--method", "ia3"], "trainable params: 384 ||"),
        (vec!["--method", "ln_tuning"], "trainable params: 320 ||"),
        (vec!["--method", "bitfit"], "trainable params: 64 ||"),
        (vec!["--method", "dora", "r=4,alpha=8,targets=q_proj,v_proj"], "trainable params: 1,984 ||"),
        (vec!["--lora", "r=4,targets=q_proj,v_proj"], "trainable params: 1,792 ||"),
    ] {
        let out = ok(&run(bin().arg("inspect").arg(tiny()).args(&args)));
        assert!(out.contains(count), "{args:?}: {out}");
    }
    // An adapter folder says what it is.
    let out = ok(&run(bin().arg("inspect").arg(root().join("tests/fixtures/methods/llama-ia3/adapter"))));
    assert!(out.contains("peft_type IA3") && out.contains("lowrank method: ia3") && out.contains("trainable params: 384"), "{out}");
}

#[test]
fn method_mistakes_are_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 4);
    // A section of one method beside another method.
    let cfg = write_config(tmp.path(), &data, "lora", "[ia3]\ntargets = [\"k_proj\"]");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg)), &["[ia3]", "peft.method = \"lora\""]);
    // A key the method does not have.
    let cfg = write_config(tmp.path(), &data, "ia3", "[ia3]\nr = 4");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg)), &["[ia3]", "unknown field `r`"]);
    // A method lowrank does not have.
    let cfg = write_config(tmp.path(), &data, "vera", "");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg)), &["peft.method", "vera", "ln_tuning"]);
    // A method a family cannot take: PEFT's BEFT takes nn.Linear, GPT-2's layers are Conv1D.
    let gpt2 = root().join("tests/fixtures/tiny-gpt2/hf");
    fails_with(&run(bin().arg("inspect").arg(&gpt2).args(["--method", "bitfit"])), &["bias tuning", "Conv1D"]);
    // An adapter folder of a type lowrank does not read, and one for another model.
    let dir = tmp.path().join("vera");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("tests/fixtures/methods/llama-ia3/adapter/adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "VERA", "target_modules": ["q_proj"]}"#).unwrap();
    fails_with(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(&dir).args(["--prompt", "x"])), &["adapter_config.json", "VERA", "IA3"]);
    let t5 = root().join("tests/fixtures/tiny-t5/v1_1/hf");
    let out = tmp.path().join("merged");
    fails_with(&run(bin().args(["merge", "--model"]).arg(&t5).arg("--adapter").arg(root().join("tests/fixtures/methods/llama-ia3/adapter")).arg("--output").arg(&out)), &["adapter_model.safetensors", "which the model does not have"]);
    assert!(!out.exists());
}
