//! The shipped GPT-2 and T5 run files, end to end through the real binary on the tiny fixture
//! models: train (a few steps), resume, merge to a Hugging Face folder, generate.
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

/// Runs `config` with the tiny model for `steps` steps into `out`, with small data.
fn train(config: &str, model: &Path, out: &Path, extra: &[&str]) -> String {
    let mut cmd = bin();
    cmd.current_dir(root()).args(["train", "--config", config, "--model"]).arg(model).arg("--output").arg(out);
    for s in extra {
        cmd.args(["--set", s]);
    }
    ok(&run(&mut cmd))
}

/// Greedy text from `model`, with `adapter` kept unmerged when given.
fn generate(model: &Path, adapter: Option<&Path>, prompt: &str, n: usize) -> String {
    let mut c = bin();
    c.args(["generate", "--model"]).arg(model).args(["--prompt", prompt, "--max-new-tokens"]).arg(n.to_string());
    if let Some(a) = adapter {
        c.arg("--adapter").arg(a).arg("--no-merge");
    }
    ok(&run(&mut c))
}

#[test]
fn gpt2_lora_paper_config_trains_resumes_merges_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-gpt2/hf");
    let out = tmp.path().join("gpt2");
    let small = ["train.steps=4", "train.warmup_steps=1", "train.lr=0.01", "train.save_every=2", "train.eval_every=2", "data.train_limit=16", "data.valid_limit=4", "report.samples=2", "report.max_new_tokens=6", "report.num_beams=3"];
    train("configs/e2e-gpt2-lora-paper.toml", &model, &out, &small);
    // The final adapter is PEFT's form (one fused c_attn LoRA of rank 2r), loadable by Python PEFT.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["c_attn"]));
    assert_eq!((cfg["fan_in_fan_out"].as_bool(), cfg["rank_pattern"]["c_attn"].as_u64()), (Some(true), Some(8)));
    // Checkpoints keep the q and v factors apart, so a resumed run continues exactly.
    let ck: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoints/step-000002/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(ck["target_modules"], serde_json::json!(["q", "v"]));
    let resumed = tmp.path().join("resumed");
    resume_copy(&out, "step-000002", &resumed);
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed.join("adapter/adapter_model.safetensors")).unwrap(),
        "resumed run ends with the same adapter"
    );
    // Merge and generate: merged weights give what the adapter gives.
    let merged = tmp.path().join("merged");
    ok(&run(bin().args(["merge", "--model"]).arg(&model).arg("--adapter").arg(out.join("adapter")).arg("--output").arg(&merged)));
    let prompt = "name[Alimentum], area[city centre] ||";
    let gen = |m: &Path, adapter: Option<&Path>| generate(m, adapter, prompt, 10);
    assert_eq!(gen(&merged, None), gen(&model, Some(&out.join("adapter"))));
    let inspect = ok(&run(bin().args(["inspect"]).arg(&model).args(["--lora", "r=4,targets=q,v"])));
    assert!(inspect.contains("trainable params: 1,024 ||"), "{inspect}");
}

#[test]
fn flan_t5_translation_config_trains_resumes_merges_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    for version in ["v1_0", "v1_1"] {
        let model = fixture(&format!("tiny-t5/{version}/hf"));
        let out = tmp.path().join(version);
        let small = ["train.steps=4", "train.warmup_steps=1", "train.lr=0.01", "train.save_every=2", "train.eval_every=2", "data.train_limit=16", "data.valid_limit=4", "report.samples=2", "report.max_new_tokens=6"];
        let stdout = train("configs/multi30k-flan-t5.toml", &model, &out, &small);
        assert!(stdout.contains("base :") && stdout.contains("tuned:"), "{stdout}");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["task_type"], "SEQ_2_SEQ_LM");
        assert_eq!(cfg["target_modules"], serde_json::json!(["q", "v"]));
        let l: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|x| serde_json::from_str::<serde_json::Value>(x).unwrap()["loss"].as_f64().unwrap()).collect();
        assert_eq!(l.len(), 4);
        assert!(l[3] < l[0], "{version}: loss did not go down: {l:?}");
        // Resume from step 2: the same final adapter.
        let resumed = tmp.path().join(format!("{version}-resumed"));
        resume_copy(&out, "step-000002", &resumed);
        assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), std::fs::read(resumed.join("adapter/adapter_model.safetensors")).unwrap());
        // Merge to a Hugging Face folder; generation from it equals generation with the adapter.
        let merged = tmp.path().join(format!("{version}-merged"));
        ok(&run(bin().args(["merge", "--model"]).arg(&model).arg("--adapter").arg(out.join("adapter")).arg("--output").arg(&merged)));
        let prompt = "translate English to German: A man in a blue shirt is standing on a ladder.";
        let gen = |m: &Path, adapter: Option<&Path>| generate(m, adapter, prompt, 8);
        let tuned = gen(&model, Some(&out.join("adapter")));
        // Translation BLEU (sacrebleu's) on parallel test files, by beam search, with the adapter.
        let ev = tmp.path().join(format!("{version}-eval"));
        let text = ok(&run(bin().current_dir(root()).args(["eval", "--model"]).arg(&model).arg("--adapter").arg(out.join("adapter")).args([
            "--data", "data/multi30k/test_2016_flickr.en.gz", "--data-target", "data/multi30k/test_2016_flickr.de.gz",
            "--template", "translate English to German: {prompt}", "--metrics", "sacrebleu", "--beam", "2", "--max-new-tokens", "6", "--limit", "3", "--output",
        ]).arg(&ev)));
        assert!(text.contains("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"), "{text}");
        let scores: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ev.join("scores.json")).unwrap()).unwrap();
        assert!(scores["bleu"].as_f64().unwrap() >= 0.0 && scores["ref_len"].as_u64().unwrap() > 0);
        assert_eq!(std::fs::read_to_string(ev.join("hypotheses.txt")).unwrap().lines().count(), 3);
        assert_eq!(gen(&merged, None), tuned, "{version}");
        if version == "v1_1" {
            // (The tiny v1.0 model repeats one token whatever the adapter does.)
            assert_ne!(gen(&model, None), tuned, "{version}: the adapter changed nothing");
        }
    }
}
