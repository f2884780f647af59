//! `lowrank merge`: `W ← W + s·B·A` and a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json) that `transformers` loads. Written to a temporary folder, then renamed; refused
//! (nothing written) when a merged weight is NaN or infinite.
use crate::common::{device, parse_dtype};
use anyhow::{Context, Result};
use lowrank_models::weights::{write_atomic, write_dir_atomic, write_safetensors};
use lowrank_models::{load_model, model_layout, ModelSource};
use lowrank_peft::load_adapter;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MergeArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long, alias = "out")]
    output: PathBuf,
    /// Replace the output folder if it exists.
    #[arg(long)]
    force: bool,
    /// dtype of the saved weights.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: MergeArgs) -> Result<()> {
    if a.output.exists() && !a.force {
        anyhow::bail!("{} already exists (use --force to replace it)", a.output.display());
    }
    let dev = device();
    let mut loaded = load_model(&a.model, &dev, candle_core::DType::F32).with_context(|| format!("loading model {}", a.model.display()))?;
    let layout = model_layout(&loaded.config)?;
    let loaded_adapter = load_adapter(&a.adapter, &layout, &dev).with_context(|| format!("loading adapter {}", a.adapter.display()))?;
    for w in &loaded_adapter.warnings {
        eprintln!("lowrank: warning: {w}");
    }
    let adapter = loaded_adapter.adapter;
    adapter.merge_into(&mut loaded.weights).with_context(|| format!("merging {}", a.adapter.display()))?;
    let out_dtype = parse_dtype(&a.dtype)?;
    let mut tensors = std::collections::BTreeMap::new();
    // In the checkpoint's own layout (GPT-2's Conv1D weights transposed back).
    for (k, t) in lowrank_models::loader::checkpoint_tensors(&loaded.config, &loaded.weights)? {
        // A tied Llama head (from GGUF) is not written; GPT-2 and T5 write what they loaded.
        if k == "lm_head.weight" && loaded.config.as_llama().map(|c| c.tie_word_embeddings).unwrap_or(false) {
            continue;
        }
        tensors.insert(k, t.to_dtype(out_dtype)?);
    }
    // As PEFT's safe_merge: a merged model holding NaN or infinity is never written.
    lowrank_models::finite::ensure_finite("the merged model (nothing written)", tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let mut cfg = loaded.config.to_hf_json();
    cfg["torch_dtype"] = serde_json::Value::String(match a.dtype.as_str() { "bf16" => "bfloat16", "f16" => "float16", _ => "float32" }.into());
    let tok_cfg = match &loaded.source {
        ModelSource::HfFolder(dir) if dir.join("tokenizer_config.json").exists() => {
            let p = dir.join("tokenizer_config.json");
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?
        }
        _ => {
            let t = &loaded.tokenizer;
            let name_of = |id: Option<u32>| id.and_then(|i| t.inner.id_to_token(i));
            serde_json::to_string_pretty(&serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": name_of(t.bos_id),
                "eos_token": name_of(t.eos_ids.first().copied()),
                "pad_token": name_of(Some(t.pad_id)),
                "chat_template": t.chat_template,
                "model_max_length": loaded.config.max_positions(),
            }))?
        }
    };
    // The folder is written whole (a temporary folder, then a rename): what was at the output
    // path is replaced only once the merged model is complete.
    write_dir_atomic(&a.output, |tmp| -> Result<()> {
        write_safetensors(&tmp.join("model.safetensors"), &tensors, Some(meta))?;
        write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        loaded.tokenizer.save(&tmp.join("tokenizer.json"))?;
        write_atomic(&tmp.join("tokenizer_config.json"), tok_cfg.as_bytes())?;
        Ok(())
    })?;
    eprintln!("merged {} into {}", adapter.describe(), a.output.display());
    Ok(())
}
