//! The real `lowrank` binary on the tiny fixture model, in temporary folders: train, resume,
//! merge, generate, inspect, and every kind of bad input (one clear error line, exit ≠ 0).
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

/// A small E2E-style CSV (first `n` rows of the dev set).
fn write_data(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let lines: Vec<&str> = text.lines().take(n + 1).collect();
    let p = dir.join("train.csv");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn write_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let cfg = format!(
        r#"[model]
path = "{}"
[lora]
r = 4
alpha = 8
dropout = 0.1
targets = ["q_proj", "v_proj"]
[data]
train = "{}"
valid = "{}"
prompt_column = "mr"
completion_column = "ref"
prompt_template = "{{prompt}} => "
max_length = 64
valid_limit = 4
[train]
steps = 6
batch_size = 2
grad_accum = 2
lr = 0.01
warmup_steps = 2
eval_every = 3
save_every = 3
seed = 7
{extra}
"#,
        tiny().display(),
        data.display(),
        data.display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn train_resume_merge_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 24);
    let cfg = write_config(tmp.path(), &data, "");
    let full = tmp.path().join("full");
    ok(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&full)));
    for f in ["config.toml", "metrics.jsonl", "summary.json", "loss.svg", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "checkpoints/step-000003/optimizer.safetensors"] {
        assert!(full.join(f).exists(), "{f} missing");
    }
    let l = losses(&full);
    assert_eq!(l.len(), 6);
    assert!(l[5].1 < l[0].1, "loss did not go down: {l:?}");

    // Resume from the step-3 checkpoint in a fresh folder: the same losses as the uninterrupted run.
    let resumed = tmp.path().join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    copy(&full.join("checkpoints/step-000003"), &resumed.join("checkpoints/step-000003"));
    std::fs::copy(full.join("config.toml"), resumed.join("config.toml")).unwrap();
    ok(&run(bin().args(["train", "--resume"]).arg(&resumed)));
    let r = losses(&resumed);
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 5, 6]);
    for (a, b) in l[3..].iter().zip(&r) {
        assert!((a.1 - b.1).abs() < 1e-6, "resumed loss differs: {a:?} vs {b:?}");
    }
    assert_eq!(
        std::fs::read(full.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed.join("adapter/adapter_model.safetensors")).unwrap()
    );

    // Merge, then greedy generation from the merged folder equals generation with the adapter.
    let merged = tmp.path().join("merged");
    ok(&run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).arg("--output").arg(&merged)));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(f).exists(), "{f} missing");
    }
    let prompt = "name[Alimentum], area[city centre] => ";
    let with_adapter = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).args(["--no-merge", "--prompt", prompt, "--max-new-tokens", "12"])));
    let from_merged = ok(&run(bin().args(["generate", "--model"]).arg(&merged).args(["--prompt", prompt, "--max-new-tokens", "12"])));
    assert_eq!(with_adapter, from_merged);
    let base = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).args(["--prompt", prompt, "--max-new-tokens", "12"])));
    assert_ne!(base, with_adapter, "the adapter changed nothing");
    // The CPU decoder (default) and the candle path give the same text, merged and unmerged;
    // with --quantize the adapter is kept as a branch, so its update survives the rounding.
    let merged_here = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).args(["--prompt", prompt, "--max-new-tokens", "12"])));
    assert_eq!(merged_here, with_adapter);
    for extra in [&["--engine", "candle"][..], &["--engine", "candle", "--no-merge"][..]] {
        let candle = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).args(["--prompt", prompt, "--max-new-tokens", "12"]).args(extra)));
        assert_eq!(candle, with_adapter, "{extra:?}");
    }
    let quantized = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).args(["--prompt", prompt, "--max-new-tokens", "12", "--quantize", "q8_0"])));
    assert!(!quantized.trim().is_empty());
    // Sampling is reproducible for a seed.
    let s1 = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).args(["--prompt", prompt, "--temperature", "1.0", "--top-p", "0.9", "--seed", "3"])));
    let s2 = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).args(["--prompt", prompt, "--temperature", "1.0", "--top-p", "0.9", "--seed", "3"])));
    assert_eq!(s1, s2);
    // Merging into an existing folder is refused.
    fails_with(&run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(full.join("adapter")).arg("--output").arg(&merged)), &["already exists"]);
}

#[test]
fn gguf_base_trains_and_its_adapter_loads_on_the_hf_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 8);
    let cfg = write_config(tmp.path(), &data, "");
    let out = tmp.path().join("g");
    let gguf = root().join("tests/fixtures/tiny-llama/model-f32.gguf");
    ok(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--set").arg(format!("model.path=\"{}\"", gguf.display())).args(["--set", "train.steps=2"]).arg("--output").arg(&out)));
    let prompt = "name[Alimentum] => ";
    let on_gguf = ok(&run(bin().args(["generate", "--model"]).arg(&gguf).arg("--adapter").arg(out.join("adapter")).args(["--prompt", prompt, "--max-new-tokens", "8"])));
    let on_hf = ok(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(out.join("adapter")).args(["--prompt", prompt, "--max-new-tokens", "8"])));
    assert_eq!(on_gguf, on_hf);
}

/// The main job's path on a 4-bit GGUF: training keeps the Q4_1 weights packed (and says so),
/// and gives the same losses, sample texts and adapter as with the weights expanded on load.
#[test]
fn packed_gguf_base_trains_as_the_expanded_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 8);
    let cfg = write_config(tmp.path(), &data, "[report]\nsamples = 2\nmax_new_tokens = 6");
    let gguf = root().join("tests/fixtures/tiny-llama/model-q4_1.gguf");
    let mut runs = Vec::new();
    for keep in [true, false] {
        let out = tmp.path().join(format!("keep-{keep}"));
        let res = run(bin()
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--set")
            .arg(format!("model.path=\"{}\"", gguf.display()))
            .args(["--set", &format!("model.keep_quantized={keep}")])
            .arg("--set")
            .arg(format!("data.test=\"{}\"", data.display()))
            .args(["--set", "train.steps=3"])
            .arg("--output")
            .arg(&out));
        ok(&res);
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        assert_eq!(stderr.contains("base linear weights kept quantized"), keep, "{stderr}");
        let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
        let adapter = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
        runs.push((losses(&out), samples, adapter));
    }
    assert_eq!(runs[0].0, runs[1].0, "losses differ");
    assert_eq!(runs[0].1, runs[1].1, "sample texts differ");
    assert!(runs[0].0.len() >= 3 && runs[0].1.lines().count() == 2);
    assert!(runs[0].2 == runs[1].2, "adapters differ");
}

#[test]
fn inspect_counts_like_peft() {
    let out = ok(&run(bin().arg("inspect").arg(tiny()).args(["--lora", "r=8,targets=q_proj,v_proj"])));
    // 2 layers × (8·(64+64) + 8·(64+32)) = 3,584 of 225,664 + 3,584.
    let total: usize = 400 * 64 + 2 * (64 + 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128) + 64;
    let line = format!("trainable params: 3,584 || all params: {} ||", thousands(total + 3584));
    assert!(out.contains(&line), "{out}\nexpected: {line}");
    let out = ok(&run(bin().arg("inspect").arg(root().join("tests/fixtures/tiny-llama/model-q4_1.gguf"))));
    assert!(out.contains("Q4_1") && out.contains("model.layers.*.self_attn.q_proj.weight"), "{out}");
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = write_data(t, 8);
    let cfg = write_config(t, &data, "");
    let train = |extra: &[&str]| run(bin().args(["train", "--config"]).arg(&cfg).args(extra).arg("--output").arg(t.join("out")));

    // Missing model.
    fails_with(&run(bin().args(["generate", "--model", "/nonexistent/model", "--prompt", "x"])), &["/nonexistent/model"]);
    // Truncated safetensors.
    let bad = t.join("bad-model");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), bad.join(f)).unwrap();
    }
    let w = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    fails_with(&run(bin().arg("generate").arg("--model").arg(&bad).args(["--prompt", "x"])), &["model.safetensors"]);
    // Corrupt GGUF.
    std::fs::write(t.join("junk.gguf"), b"GGUF but not really").unwrap();
    fails_with(&run(bin().arg("generate").arg("--model").arg(t.join("junk.gguf")).args(["--prompt", "x"])), &["junk.gguf"]);
    // config.json without a needed key.
    let nokey = t.join("nokey");
    std::fs::create_dir_all(&nokey).unwrap();
    let c = std::fs::read_to_string(tiny().join("config.json")).unwrap().replace("\"hidden_size\"", "\"hidden_sise\"");
    std::fs::write(nokey.join("config.json"), c).unwrap();
    fails_with(&run(bin().arg("inspect").arg(&nokey)), &["hidden_size"]);
    // Adapter whose shapes do not fit the model (the Qwen2 fixture is narrower).
    fails_with(
        &run(bin().arg("generate").arg("--model").arg(root().join("tests/fixtures/tiny-llama/hf-qwen2")).arg("--adapter").arg(root().join("tests/fixtures/tiny-llama/peft-adapter")).args(["--prompt", "x"])),
        &["lora_A.weight", "[4, 32]"],
    );
    // Target pattern that matches nothing.
    fails_with(&train(&["--set", "lora.targets=[\"c_attn\"]"]), &["c_attn", "q_proj"]);
    // Unknown config key: the nearest valid one is named.
    fails_with(&train(&["--set", "train.lerning_rate=0.1"]), &["lerning_rate", "run.toml"]);
    fails_with(&train(&["--set", "train.batch_sise=2"]), &["did you mean `batch_size`"]);
    // Empty data set.
    std::fs::write(t.join("empty.csv"), "mr,ref\n").unwrap();
    fails_with(&train(&["--set", &format!("data.train=\"{}\"", t.join("empty.csv").display())]), &["empty.csv", "empty"]);
    // CSV without the named column.
    fails_with(&train(&["--set", "data.completion_column=\"text\""]), &["no column `text`", "mr, ref"]);
    // A non-UTF-8 line.
    let mut bytes = b"mr,ref\n\"a\",\"b\"\n\"c\",\"".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"\n");
    std::fs::write(t.join("latin.csv"), bytes).unwrap();
    fails_with(&train(&["--set", &format!("data.train=\"{}\"", t.join("latin.csv").display())]), &["latin.csv", "UTF-8", "line 3"]);
    // An unknown device, and CUDA in a build without it.
    fails_with(&train(&["--device", "tpu"]), &["unknown device `tpu`", "cuda:N"]);
    fails_with(&train(&["--device", "cuda:x"]), &["cuda:x"]);
    #[cfg(not(feature = "cuda"))]
    fails_with(&train(&["--device", "cuda"]), &["no CUDA support", "--features cuda"]);
    // Nothing was written for the failed runs.
    assert!(!t.join("out").join("metrics.jsonl").exists());
}

#[test]
fn score_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // References in the e2e-metrics text format; hypotheses equal to a reference score high.
    std::fs::write(t.join("refs.txt"), "the eagle is a pub .\nthe eagle is a bar .\n\ncocum is cheap .\ncocum has low prices .\n").unwrap();
    std::fs::write(t.join("hyp.txt"), "the eagle is a pub .\ncocum is cheap .\n").unwrap();
    let out = ok(&run(bin().args(["score", "--no-meteor", "--format", "json", "--hyp"]).arg(t.join("hyp.txt")).arg("--refs").arg(t.join("refs.txt"))));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["bleu"].as_f64().unwrap() > 0.99, "{out}");
    assert!(v["meteor"].is_null());
    // A count mismatch names both counts.
    std::fs::write(t.join("one.txt"), "just one line\n").unwrap();
    fails_with(&run(bin().args(["score", "--no-meteor", "--hyp"]).arg(t.join("one.txt")).arg("--refs").arg(t.join("refs.txt"))), &["1", "2"]);

    // eval: beam search over the unique MRs of a small CSV, hypotheses + references + scores.
    let data = write_data(t, 12);
    let dir = t.join("eval");
    let out = ok(&run(bin().arg("eval").arg("--model").arg(tiny()).arg("--data").arg(&data).args(["--beam", "2", "--max-new-tokens", "8", "--no-meteor", "--template", "{prompt} => "]).arg("--output").arg(&dir)));
    assert!(out.contains("BLEU") && out.contains("CIDEr"), "{out}");
    let hyps = std::fs::read_to_string(dir.join("hypotheses.txt")).unwrap();
    let refs = std::fs::read_to_string(dir.join("references.txt")).unwrap();
    assert_eq!(hyps.lines().count(), refs.split("\n\n").count());
    assert!(dir.join("scores.json").exists());
}

#[test]
fn bf16_trains_with_bf16_products_or_falls_back_to_f32_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), 8);
    let cfg = write_config(tmp.path(), &data, "");
    let out = run(bin().args(["train", "--config"]).arg(&cfg).args(["--set", "model.dtype=\"bf16\"", "--set", "train.steps=1"]).arg("--output").arg(tmp.path().join("b")));
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if lowrank_models::ops::bf16_gemm::bf16_products_supported() {
        assert!(stderr.contains("products with the frozen weights in bf16 (AVX512-BF16)") && !stderr.contains("warning: bf16"), "{stderr}");
    } else {
        assert!(stderr.contains("lowrank: warning: bf16") && stderr.contains("f32"), "{stderr}");
    }
    let gen = run(bin().args(["generate", "--model"]).arg(tiny()).args(["--prompt", "name[Alimentum] => ", "--max-new-tokens", "4", "--dtype", "bf16"]));
    ok(&gen);
}
