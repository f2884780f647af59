//! Non-finite values never pass silently: a NaN or infinite loss, gradient or parameter stops
//! training naming the step and the tensor (or the step is skipped by `train.on_nonfinite`), a
//! collapse to the uniform prediction is warned about, NaN or infinite weights in a model file or
//! an adapter are refused at load naming the tensor, and `merge` never writes a non-finite model.
mod common;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use common::*;
use lowrank_models::weights::{read_safetensors, write_safetensors};
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

fn run_file(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let data = dir.join("train.csv");
    std::fs::write(&data, text.lines().take(17).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let cfg = format!(
        "[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\nprompt_column = \"mr\"\ncompletion_column = \"ref\"\nmax_length = 64\n[train]\nsteps = 12\nbatch_size = 2\nsave_every = 3\nseed = 7\n{extra}\n",
        tiny().display(),
        data.display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn nonfinite_parameter_stops_training_naming_step_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "lr = 1e39\nmax_grad_norm = 0.0");
    let out = tmp.path().join("run");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&out)), &["step 1", "lora_A.weight", "NaN or infinite"]);
    // Nothing non-finite is written: no adapter, no checkpoint.
    assert!(!out.join("adapter").exists());
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn collapse_to_uniform_prediction_is_warned_about() {
    // lr 1e30 without clipping: the loss sits at ln(vocab) with a zero gradient.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "lr = 1e30\nmax_grad_norm = 0.0");
    let out = tmp.path().join("run");
    let o = run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&out));
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("lowrank: warning: the model has collapsed"), "{stderr}");
    assert!(stderr.contains("done (1 warning, above)"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["warnings"][0].as_str().unwrap().contains("collapsed"));
    // A healthy run gives no such warning.
    let cfg = run_file(tmp.path(), "lr = 1e-3");
    let o = run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(tmp.path().join("healthy")));
    let stderr = ok_stderr(&o);
    assert!(!stderr.contains("collapsed") && stderr.contains("done:"), "{stderr}");
}

fn ok_stderr(o: &std::process::Output) -> String {
    ok(o);
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn skip_setting_skips_nonfinite_steps_and_restores_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "lr = 1e39\nschedule = \"constant\"\nmax_grad_norm = 0.0\non_nonfinite = \"skip\"");
    let out = tmp.path().join("run");
    let o = run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(&out));
    // Every update overflows: each step is skipped with a warning, and after ten in a row the
    // run stops.
    fails_with(&o, &["step 10", "10 steps in a row skipped"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("lowrank: warning: step 1 skipped: parameter"), "{stderr}");
    let m = metrics(&out);
    assert_eq!(m.len(), 9);
    assert!(m.iter().all(|l| l["skipped"] == true), "{m:?}");
    // The checkpoints hold the state from before the skipped updates: LoRA's B still zero.
    let ck = read_safetensors(&out.join("checkpoints/step-000009/adapter_model.safetensors"), &Device::Cpu, None).unwrap();
    for (k, t) in &ck {
        if k.contains("lora_B") {
            assert_eq!(t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
    }
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoints/step-000009/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["optimizer_steps"], 0);
    // A setting that is neither is refused by name.
    let cfg = run_file(tmp.path(), "on_nonfinite = \"ignore\"");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg)), &["run.toml", "ignore"]);
}

/// Copies the tiny Llama folder with `name`'s first value replaced by `value`.
fn model_with_value(dir: &Path, name: &str, value: f32) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(tiny().join(f), out.join(f)).unwrap();
    }
    let mut t = read_safetensors(&tiny().join("model.safetensors"), &Device::Cpu, None).unwrap();
    let w = &t[name];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = value;
    let changed = Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap();
    t.insert(name.to_string(), changed);
    write_safetensors(&out.join("model.safetensors"), &t, None).unwrap();
    out
}

/// A copy of a GGUF fixture with the 2 bytes (f16 scale) or 4 bytes (f32 value) at the start of
/// `tensor`'s data set to NaN.
fn gguf_with_nan(src: &Path, dst: &Path, tensor: &str, f16_scale: bool) {
    let mut f = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let at = content.tensor_data_offset as usize + content.tensor_infos[tensor].offset as usize;
    let mut bytes = std::fs::read(src).unwrap();
    if f16_scale {
        bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    } else {
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dst, bytes).unwrap();
}

#[test]
fn nonfinite_base_weights_are_refused_at_load_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = |model: &Path| run(bin().args(["generate", "--model"]).arg(model).args(["--prompt", "hi", "--max-new-tokens", "2"]));
    for value in [f32::NAN, f32::INFINITY] {
        let m = model_with_value(tmp.path(), "model.layers.1.mlp.down_proj.weight", value);
        fails_with(&gen(&m), &["model.safetensors", "model.layers.1.mlp.down_proj.weight", "1 NaN or infinite"]);
    }
    let fixtures = root().join("tests/fixtures/tiny-llama");
    let f32_file = tmp.path().join("nan-f32.gguf");
    gguf_with_nan(&fixtures.join("model-f32.gguf"), &f32_file, "blk.0.ffn_up.weight", false);
    fails_with(&gen(&f32_file), &["nan-f32.gguf", "blk.0.ffn_up.weight"]);
    // A NaN block scale in a Q4_1 file: kept packed (train's default) or expanded (generate).
    let q_file = tmp.path().join("nan-q4_1.gguf");
    gguf_with_nan(&fixtures.join("model-q4_1.gguf"), &q_file, "blk.1.attn_q.weight", true);
    fails_with(&gen(&q_file), &["nan-q4_1.gguf", "blk.1.attn_q.weight"]);
    let cfg = run_file(tmp.path(), "");
    fails_with(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--model").arg(&q_file).arg("--output").arg(tmp.path().join("r"))), &["nan-q4_1.gguf", "blk.1.attn_q.weight"]);
}

/// The tiny Llama's PEFT adapter with every `lora_B` multiplied by `factor` (and one value set
/// to `poison` when given).
fn scaled_adapter(dir: &Path, factor: f64, poison: Option<f32>) -> PathBuf {
    let src = root().join("tests/fixtures/tiny-llama/peft-adapter");
    let out = dir.join(format!("adapter-{factor}-{}", poison.is_some()));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("adapter_config.json"), out.join("adapter_config.json")).unwrap();
    let mut t = read_safetensors(&src.join("adapter_model.safetensors"), &Device::Cpu, None).unwrap();
    for (k, v) in t.iter_mut() {
        if k.contains("lora_B") {
            *v = (&*v * factor).unwrap();
            if let Some(p) = poison {
                let mut flat = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                flat[0] = p;
                *v = Tensor::from_vec(flat, v.dims(), &Device::Cpu).unwrap();
            }
        }
    }
    write_safetensors(&out.join("adapter_model.safetensors"), &t, None).unwrap();
    out
}

#[test]
fn nonfinite_adapters_are_refused_and_merge_never_writes_a_nonfinite_model() {
    let tmp = tempfile::tempdir().unwrap();
    let nan = scaled_adapter(tmp.path(), 1.0, Some(f32::NAN));
    fails_with(&run(bin().args(["generate", "--model"]).arg(tiny()).arg("--adapter").arg(&nan).args(["--prompt", "hi"])), &["adapter_model.safetensors", "lora_B", "NaN or infinite"]);
    // Finite in f32, but the merged weights overflow f16: refused, nothing written.
    let huge = scaled_adapter(tmp.path(), 1e9, None);
    let out = tmp.path().join("merged");
    fails_with(&run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(&huge).arg("--output").arg(&out).args(["--dtype", "f16"])), &["merged model", "nothing written", "NaN or infinite"]);
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The same merge in f32 is finite and written.
    ok(&run(bin().args(["merge", "--model"]).arg(tiny()).arg("--adapter").arg(&huge).arg("--output").arg(&out)));
    assert!(out.join("model.safetensors").exists());
}
