//! Bad input gets one clear `lowrank: error:` line naming the file, key or shape, never a silent
//! wrong answer: thread counts are capped, adapter configs are checked key by key against their
//! tensors, out-of-range values and broken templates are refused, scoring refuses corpora that
//! do not line up, and messages say what is wrong (wrong type, not "missing"; the stored shape;
//! no backtrace; a truncated file fails `inspect`).
mod common;
use candle_core::{Device, Tensor};
use common::*;
use lowrank_models::weights::{read_safetensors, write_safetensors};
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny-llama/hf")
}

fn run_file(dir: &Path, train_extra: &str, more: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let data = dir.join("train.csv");
    std::fs::write(&data, text.lines().take(9).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let defaults: String = [("steps", "2"), ("batch_size", "2")].iter().filter(|(k, _)| !train_extra.lines().any(|l| l.starts_with(&format!("{k} =")))).map(|(k, v)| format!("{k} = {v}\n")).collect();
    let cfg = format!(
        "[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\nprompt_column = \"mr\"\ncompletion_column = \"ref\"\nmax_length = 48\n[train]\n{defaults}{train_extra}\n{more}\n",
        tiny().display(),
        data.display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn generate(model: &Path, extra: &[&str]) -> std::process::Output {
    run(bin().args(["generate", "--model"]).arg(model).args(["--prompt", "hi", "--max-new-tokens", "3"]).args(extra))
}

#[test]
fn thread_counts_are_capped_at_the_cores() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for (args, what) in [(vec!["--threads", "100000"], "--threads = 100000"), (vec!["--threads", "256"], "--threads = 256")] {
        let o = generate(&tiny(), &args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        ok(&o);
        assert!(stderr.contains(&format!("lowrank: warning: {what} is more than the {cores} core(s)")), "{stderr}");
    }
    let o = run(bin().env("RAYON_NUM_THREADS", "5000").args(["generate", "--model"]).arg(tiny()).args(["--prompt", "hi", "--max-new-tokens", "2"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("RAYON_NUM_THREADS = 5000"));
    ok(&o);
    // train.threads in a run file (the environment variable unset, as users run it).
    let tmp = tempfile::tempdir().unwrap();
    let cfg = run_file(tmp.path(), "threads = 2000", "");
    let o = run(std::process::Command::new(env!("CARGO_BIN_EXE_lowrank")).env_remove("RAYON_NUM_THREADS").args(["train", "--config"]).arg(&cfg).arg("--output").arg(tmp.path().join("r")));
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    ok(&o);
    assert!(stderr.contains("train.threads = 2000 is more than"), "{stderr}");
}

/// The tiny Llama's PEFT adapter with its config changed by `edit`.
fn edited_adapter(dir: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = root().join("tests/fixtures/tiny-llama/peft-adapter");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), out.join("adapter_model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("adapter_config.json"), cfg.to_string()).unwrap();
    out
}

#[test]
fn adapter_config_keys_are_checked_against_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Box<dyn Fn(&mut serde_json::Value)>, Vec<&str>)> = vec![
        ("r", Box::new(|c| c["r"] = 8.into()), vec!["rank 4", "r = 8"]),
        ("rank_pattern", Box::new(|c| c["rank_pattern"] = serde_json::json!({"q_proj": 2})), vec!["q_proj.lora_A.weight", "rank 4", "r = 2"]),
        ("rank_pattern_type", Box::new(|c| c["rank_pattern"] = serde_json::json!({"q_proj": "x"})), vec!["rank_pattern", "positive integers"]),
        ("targets", Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj"])), vec!["v_proj", "does not select"]),
        ("targets_other", Box::new(|c| c["target_modules"] = serde_json::json!(["k_proj"])), vec!["q_proj", "does not select"]),
        ("exclude", Box::new(|c| c["exclude_modules"] = serde_json::json!(["model.layers.0.self_attn.q_proj"])), vec!["model.layers.0.self_attn.q_proj", "exclude_modules"]),
        ("regex", Box::new(|c| c["target_modules"] = "q_proj".into()), vec!["regular expression", "whole module paths"]),
        ("layers_to_transform", Box::new(|c| c["layers_to_transform"] = serde_json::json!([0])), vec!["layers_to_transform"]),
        ("lora_bias", Box::new(|c| c["lora_bias"] = true.into()), vec!["lora_bias"]),
        ("modules_to_save", Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])), vec![]),
        ("use_dora_type", Box::new(|c| c["use_dora"] = "yes".into()), vec!["use_dora", "true or false"]),
        ("dropout", Box::new(|c| c["lora_dropout"] = 1.5.into()), vec!["lora_dropout", "[0, 1)"]),
        ("target_type", Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj", 3])), vec!["target_modules"]),
    ];
    for (name, edit, needles) in cases {
        let dir = edited_adapter(tmp.path(), name, edit);
        let o = generate(&tiny(), &["--adapter", dir.to_str().unwrap()]);
        if name == "modules_to_save" {
            // Honoured: the folder holds no lm_head weight, which PEFT reads as the base's.
            continue;
        }
        let mut all = vec!["adapter_config.json"];
        all.extend(needles);
        fails_with(&o, &all);
    }
    // The other methods' folders: tensors for modules target_modules does not select.
    for (fixture, targets) in [("llama-ia3", serde_json::json!(["k_proj"])), ("llama-ln_tuning", serde_json::json!(["input_layernorm"])), ("llama-bitfit", serde_json::json!(["q_proj"]))] {
        let src = root().join(format!("tests/fixtures/methods/{fixture}/adapter"));
        let out = tmp.path().join(fixture);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(src.join("adapter_model.safetensors"), out.join("adapter_model.safetensors")).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
        cfg["target_modules"] = targets;
        std::fs::write(out.join("adapter_config.json"), cfg.to_string()).unwrap();
        fails_with(&generate(&tiny(), &["--adapter", out.to_str().unwrap()]), &["adapter_config.json", "does not select"]);
    }
    // A regular expression that selects exactly the tensors' modules is fine.
    let dir = edited_adapter(tmp.path(), "regex_ok", |c| c["target_modules"] = r".*\.(q|v)_proj".into());
    ok(&generate(&tiny(), &["--adapter", dir.to_str().unwrap()]));
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("epochs = -1.0\nsteps = 0", "", &["train.epochs", "-1"]),
        ("steps = 0\nepochs = 0.0", "", &["nothing to train"]),
        ("weight_decay = -0.1", "", &["train.weight_decay", "-0.1"]),
        ("beta1 = 1.0", "", &["train.beta1", "[0, 1)"]),
        ("beta2 = -0.5", "", &["train.beta2"]),
        ("eps = 0.0", "", &["train.eps"]),
        ("label_smoothing = 1.0", "", &["train.label_smoothing", "[0, 1)"]),
        ("max_grad_norm = -1.0", "", &["train.max_grad_norm"]),
        ("lr = inf", "", &["train.lr", "inf"]),
        ("lr = nan", "", &["train.lr", "NaN"]),
        ("", "[lora]\nalpha = 0.0", &["[lora]", "alpha", "positive"]),
        ("", "[lora]\nr = 0", &["[lora]", "r must be at least 1"]),
        ("", "[lora]\ndropout = 1.0", &["[lora]", "dropout"]),
        ("", "[report]\nnum_beams = 0", &["report.num_beams"]),
        ("", "[report]\nsamples = 2\nmax_new_tokens = 0", &["report.max_new_tokens"]),
    ];
    for (train, more, needles) in cases {
        let cfg = run_file(tmp.path(), train, more);
        let mut all = vec!["run.toml"];
        all.extend_from_slice(needles);
        fails_with(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(tmp.path().join("never"))), &all);
        assert!(!tmp.path().join("never").exists(), "{train} {more}: a refused run writes nothing");
    }
    // The command line: eval and generate.
    let data = tmp.path().join("train.csv");
    let eval = |extra: &[&str]| run(bin().args(["eval", "--model"]).arg(tiny()).arg("--data").arg(&data).args(["--no-meteor", "--output"]).arg(tmp.path().join("ev")).args(extra));
    fails_with(&eval(&["--batch", "0"]), &["--batch"]);
    fails_with(&eval(&["--max-new-tokens", "0"]), &["--max-new-tokens"]);
    fails_with(&eval(&["--length-penalty", "nan"]), &["--length-penalty"]);
    for t in ["--temperature=inf", "--temperature=-1", "--temperature=NaN"] {
        fails_with(&generate(&tiny(), &[t]), &["--temperature"]);
    }
    fails_with(&generate(&tiny(), &["--top-k", "0"]), &["--top-k"]);
    fails_with(&generate(&tiny(), &["--top-p", "1.5"]), &["--top-p"]);
}

#[test]
fn templates_must_hold_their_placeholder_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("prompt_template = \"Describe: \"", &["data.prompt_template", "lacks `{prompt}`"]),
        ("prompt_template = \"{promt} => \"", &["data.prompt_template", "unknown placeholder `{promt}`"]),
        ("prompt_template = \"{prompt} {completion}\"", &["unknown placeholder `{completion}`"]),
        ("completion_template = \"{answer}\"", &["data.completion_template", "`{answer}`"]),
    ];
    for (line, needles) in cases {
        let cfg = run_file(tmp.path(), "", "");
        let text = std::fs::read_to_string(&cfg).unwrap().replace("max_length = 48", &format!("max_length = 48\n{line}"));
        std::fs::write(&cfg, text).unwrap();
        let mut all = vec!["run.toml"];
        all.extend_from_slice(needles);
        fails_with(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(tmp.path().join("never"))), &all);
    }
    // Literal braces around anything but a name stay text.
    let cfg = run_file(tmp.path(), "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("max_length = 48", "max_length = 48\nprompt_template = '{\"mr\": \"{prompt}\"} => '");
    std::fs::write(&cfg, text).unwrap();
    ok(&run(bin().args(["train", "--config"]).arg(&cfg).arg("--output").arg(tmp.path().join("braces"))));
    let data = tmp.path().join("train.csv");
    fails_with(&run(bin().args(["eval", "--model"]).arg(tiny()).arg("--data").arg(&data).args(["--template", "{prmpt} =>", "--output"]).arg(tmp.path().join("ev"))), &["--template", "{prmpt}"]);
}

#[test]
fn scoring_refuses_corpora_that_do_not_line_up() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("hyp.txt"), "a b c\nd e f\ng h i\n").unwrap();
    std::fs::write(t.join("ref.txt"), "a b c\n\nd e f\n").unwrap();
    fails_with(&run(bin().args(["score", "--metrics", "sacrebleu", "--hyp"]).arg(t.join("hyp.txt")).arg("--refs").arg(t.join("ref.txt"))), &["3", "2"]);
    // References that are all empty (a wrong column): refused, not BLEU 0.7071.
    std::fs::write(t.join("empty.csv"), "mr,ref\n\"name[A]\",\n\"name[B]\",\n").unwrap();
    std::fs::write(t.join("two.txt"), "x\ny\n").unwrap();
    fails_with(&run(bin().args(["score", "--no-meteor", "--hyp"]).arg(t.join("two.txt")).arg("--refs").arg(t.join("empty.csv"))), &["every reference is empty"]);
    fails_with(&run(bin().args(["eval", "--model"]).arg(tiny()).arg("--data").arg(t.join("empty.csv")).args(["--no-meteor", "--output"]).arg(t.join("ev"))), &["empty.csv", "no non-empty reference", "ref"]);
    // References spanning lines (a quoted CSV field) and eval's own files score again to the same.
    std::fs::write(t.join("multi.csv"), "mr,ref\n\"name[A]\",\"line one\nline two\"\n\"name[A]\",\"other\"\n\"name[B]\",\"third\u{2028}ref\"\n").unwrap();
    let dir = t.join("ev2");
    ok(&run(bin().args(["eval", "--model"]).arg(tiny()).arg("--data").arg(t.join("multi.csv")).args(["--no-meteor", "--max-new-tokens", "4", "--output"]).arg(&dir)));
    let scores: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    let again = ok(&run(bin().args(["score", "--no-meteor", "--format", "json", "--hyp"]).arg(dir.join("hypotheses.txt")).arg("--refs").arg(dir.join("references.txt"))));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(scores["bleu"], again["bleu"]);
    assert_eq!(scores["cider"], again["cider"]);
    assert_eq!(std::fs::read_to_string(dir.join("hypotheses.txt")).unwrap().lines().count(), 2);
}

#[test]
fn messages_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    // A config.json key of the wrong type is "must be …, found …", not "missing".
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny().join(f), model.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap()).unwrap();
    for (key, value, needles) in [
        ("hidden_size", serde_json::json!("64"), vec!["hidden_size", "must be a non-negative integer", "\"64\""]),
        ("rms_norm_eps", serde_json::json!("small"), vec!["rms_norm_eps", "must be a number"]),
        ("tie_word_embeddings", serde_json::json!(1), vec!["tie_word_embeddings", "true or false"]),
        ("eos_token_id", serde_json::json!(["x"]), vec!["eos_token_id", "token ids"]),
    ] {
        let saved = cfg[key].clone();
        cfg[key] = value;
        std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
        let o = generate(&model, &[]);
        let mut all = vec!["config.json"];
        all.extend(needles);
        fails_with(&o, &all);
        assert!(!String::from_utf8_lossy(&o.stderr).contains("missing"));
        cfg[key] = saved;
    }
    // With RUST_BACKTRACE set the error is still one line.
    let o = run(bin().env("RUST_BACKTRACE", "1").args(["generate", "--model"]).arg(tmp.path().join("nowhere")).args(["--prompt", "x"]));
    fails_with(&o, &["nowhere"]);
    let shape = run(bin().env("RUST_BACKTRACE", "full").args(["generate", "--model"]).arg(gpt2_with_bad_shape(tmp.path())).args(["--prompt", "x"]));
    let stderr = String::from_utf8_lossy(&shape.stderr).to_string();
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{stderr}");
    // GPT-2's Conv1D weight: the shape as the file stores it, (d_in, d_out).
    fails_with(&shape, &["transformer.h.0.attn.c_attn.weight", "stored with shape [32, 90]", "expected [32, 96]"]);
    // inspect fails on a truncated GGUF file.
    let gguf = std::fs::read(root().join("tests/fixtures/tiny-llama/model-q4_1.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &gguf[..gguf.len() * 2 / 3]).unwrap();
    fails_with(&run(bin().arg("inspect").arg(&cut)), &["cut.gguf", "truncated"]);
    let st = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(model.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    fails_with(&run(bin().arg("inspect").arg(&model)), &["model.safetensors"]);
}

/// The tiny GPT-2 with `c_attn` of layer 0 cut to 90 output columns.
fn gpt2_with_bad_shape(dir: &Path) -> PathBuf {
    let src = root().join("tests/fixtures/tiny-gpt2/hf");
    let out = dir.join("gpt2");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), out.join(f)).unwrap();
        }
    }
    let mut t = read_safetensors(&src.join("model.safetensors"), &Device::Cpu, None).unwrap();
    let key = t.keys().find(|k| k.ends_with("h.0.attn.c_attn.weight")).unwrap().clone();
    let w: Tensor = t[&key].narrow(1, 0, 90).unwrap().contiguous().unwrap();
    t.insert(key, w);
    write_safetensors(&out.join("model.safetensors"), &t, None).unwrap();
    out
}
