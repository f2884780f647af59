//! The training run as a library function, on the tiny Llama: prepared and trained in-process,
//! the same as `lowrank train` writes (adapter, metrics, checkpoints, summary), resumable; the run
//! file names its method; an adapter naming a module the model lacks is refused.
use candle_core::Device;
use lowrank_train::run::{prepare, Start};
use lowrank_train::{RunConfig, Silent};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(dir: &Path, extra: &str) -> RunConfig {
    let text = std::fs::read_to_string(root().join("data/e2e/devset.csv")).unwrap();
    let data = dir.join("train.csv");
    std::fs::write(&data, text.lines().take(13).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let toml = format!(
        r#"[model]
path = "{}"
[peft]
method = "lora"
[lora]
r = 4
alpha = 8
targets = ["q_proj", "v_proj"]
[data]
train = "{}"
prompt_column = "mr"
completion_column = "ref"
max_length = 48
[train]
steps = 4
batch_size = 2
lr = 0.01
save_every = 2
seed = 3
{extra}
"#,
        root().join("tests/fixtures/tiny-llama/hf").display(),
        data.display()
    );
    RunConfig::from_toml_str(&toml, &[], Path::new("run.toml")).unwrap()
}

#[test]
fn a_run_trains_in_process_and_resumes_to_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = prepare(config(tmp.path(), ""), run_dir.clone(), Start::Fresh, &Device::Cpu, &mut Silent).unwrap();
    assert_eq!(p.adapter.method(), "lora");
    assert_eq!(p.adapter.trainable_parameters(), 2 * 2 * 4 * (64 + 64) - 2 * 4 * 32);
    let full = p.train(&mut Silent).unwrap();
    assert_eq!(full.steps, 4);
    assert!(full.losses.iter().all(|l| l.is_finite()));
    for f in ["config.toml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    // Resuming from the step-2 checkpoint continues to the same losses.
    let resumed_dir = tmp.path().join("resumed");
    std::fs::create_dir_all(resumed_dir.join("checkpoints")).unwrap();
    let ck = run_dir.join("checkpoints/step-000002");
    let copy = resumed_dir.join("checkpoints/step-000002");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&ck).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let p = prepare(config(tmp.path(), ""), resumed_dir.clone(), Start::Resume(resumed_dir.clone()), &Device::Cpu, &mut Silent).unwrap();
    let rest = p.train(&mut Silent).unwrap();
    // The summary covers the whole run.
    assert_eq!(rest.losses, full.losses);
    assert_eq!(rest.resumed_from, 2);
}

#[test]
fn the_run_file_names_a_known_method() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let text = cfg.to_toml().replace("method = \"lora\"", "method = \"lorax\"");
    let err = RunConfig::from_toml_str(&text, &[], Path::new("run.toml")).unwrap_err().to_string();
    assert!(err.contains("run.toml") && err.contains("peft.method") && err.contains("lorax") && err.contains("lora"), "{err}");
}

#[test]
fn an_adapter_for_a_module_the_model_never_attached_is_refused() {
    let m = lowrank_models::load_model(&root().join("tests/fixtures/tiny-llama/hf"), &Device::Cpu, candle_core::DType::F32).unwrap();
    let layout = lowrank_models::model_layout(&m.config).unwrap();
    let cfg = lowrank_peft::LoraConfig { r: 2, ..Default::default() };
    let mut adapters = lowrank_peft::LoraAdapters::init(&cfg, &layout.linear_modules(), &Device::Cpu).unwrap();
    lowrank_peft::check_attached(&adapters, &layout).unwrap();
    let mut stray = adapters.modules["model.layers.1.self_attn.q_proj"].clone();
    stray.path = "model.layers.7.self_attn.q_proj".into();
    adapters.modules.insert(stray.path.clone(), stray);
    let err = lowrank_peft::check_attached(&adapters, &layout).unwrap_err().to_string();
    assert!(err.contains("model.layers.7.self_attn.q_proj") && err.contains("never attached") && err.contains("q_proj"), "{err}");
}
