//! `lowrank train`: a LoRA fine-tune described by a run file.
use crate::common::{device, trainable_line, training_dtype};
use crate::progress::Bar;
use anyhow::{Context, Result};
use lowrank_models::{load_config, load_model_with, AnyModel, TextTokenizer};
use lowrank_peft::{AdapterInfo, LoraAdapters, LoraSite};
use lowrank_train::checkpoint::{find_checkpoint, load_checkpoint};
use lowrank_train::config::expand_path;
use lowrank_train::data::{encode_all, read_pairs, ReadSpec, Templater, TextPair};
use lowrank_train::{RunConfig, Trainer};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Run file (TOML). With --resume it defaults to the run folder's config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting: section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Run folder (default: runs/<date-time>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue a run from its newest checkpoint (a run folder or a checkpoint folder).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The model to fine-tune (Hugging Face folder or .gguf file): shorthand for `--set model.path=...`.
    #[arg(long)]
    model: Option<PathBuf>,
}

fn spec(cfg: &RunConfig, target: &Option<String>) -> ReadSpec {
    ReadSpec {
        format: cfg.data.format,
        prompt_column: cfg.data.prompt_column.clone(),
        completion_column: cfg.data.completion_column.clone(),
        target_file: target.as_deref().map(expand_path),
    }
}

fn limited(mut v: Vec<TextPair>, limit: usize) -> Vec<TextPair> {
    if limit > 0 {
        v.truncate(limit);
    }
    v
}

/// First `n` distinct prompts of the test file, with all their references.
fn test_prompts(cfg: &RunConfig, n: usize) -> Result<Vec<(String, Vec<String>)>> {
    let Some(test) = &cfg.data.test else { return Ok(vec![]) };
    let path = expand_path(test);
    let pairs = read_pairs(&path, &spec(cfg, &cfg.data.test_target))?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in pairs {
        match out.iter().position(|(q, _)| *q == p.prompt) {
            Some(i) => out[i].1.push(p.completion),
            None if out.len() < n => out.push((p.prompt, vec![p.completion])),
            None => {}
        }
    }
    Ok(out)
}

fn sample_outputs(model: &AnyModel, config: &lowrank_models::ModelConfig, tok: &TextTokenizer, tpl: &Templater, cfg: &RunConfig, prompts: &[(String, Vec<String>)]) -> Result<Vec<String>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|(p, _)| {
            let text = tpl.prompt_text(p);
            let text = if cfg.report.chat_template { tok.chat_prompt(&text) } else { text };
            crate::common::prompt_ids(model, tok, &text)
        })
        .collect::<Result<_>>()?;
    let r = &cfg.report;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let max_new_tokens = crate::common::fit_new_tokens(config, longest, r.max_new_tokens);
    let d = crate::common::Decoding { num_beams: r.num_beams, max_new_tokens, length_penalty: r.length_penalty, no_repeat_ngram_size: r.no_repeat_ngram_size, early_stopping: true };
    let outs = crate::common::decode(model, tok, &ids, &d)?;
    Ok(outs.iter().map(|o| tok.decode(o).map(|s| s.trim().to_string())).collect::<std::result::Result<_, _>>()?)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let escaped: String = s.chars().flat_map(|c| match c { '"' => vec!['\\', '"'], '\\' => vec!['\\', '\\'], c => vec![c] }).collect();
    format!("\"{escaped}\"")
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("run-{secs}"))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let resume_ck = match &args.resume {
        Some(dir) => Some(find_checkpoint(dir)?),
        None => None,
    };
    let run_dir_from_resume = resume_ck.as_ref().and_then(|ck| ck.parent().and_then(Path::parent)).map(Path::to_path_buf);
    let config_path = match (&args.config, &run_dir_from_resume) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => dir.join("config.toml"),
        (None, None) => anyhow::bail!("--config is required (or --resume a run folder)"),
    };
    let mut overrides = args.set.clone();
    if let Some(m) = &args.model {
        // A TOML string, so any path survives the override parser.
        overrides.push(format!("model.path={}", toml_string(&m.display().to_string())));
    }
    let cfg = RunConfig::from_file(&config_path, &overrides)?;
    let run_dir = args
        .output
        .clone()
        .or_else(|| run_dir_from_resume.clone())
        .or_else(|| cfg.output.as_deref().map(expand_path))
        .unwrap_or_else(default_run_dir);
    let dev = device();
    let dtype = training_dtype(&cfg.model.dtype)?;
    let model_path = expand_path(&cfg.model.path);
    if cfg.train.threads > 0 && std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", cfg.train.threads.to_string());
    }

    // Configuration and data first: a bad file fails before the weights are loaded.
    let model_config = load_config(&model_path).with_context(|| format!("reading the configuration of {}", model_path.display()))?;
    let mut max_length = cfg.data.max_length;
    if !model_config.is_encoder_decoder() && max_length > model_config.max_positions() {
        eprintln!("lowrank: warning: data.max_length = {max_length} exceeds the model's {} positions; examples are truncated to {}", model_config.max_positions(), model_config.max_positions());
        max_length = model_config.max_positions();
    }
    let tpl = Templater {
        prompt_template: cfg.data.prompt_template.clone(),
        completion_template: cfg.data.completion_template.clone(),
        append_eos: cfg.data.append_eos,
        max_length,
        seq2seq: model_config.is_encoder_decoder(),
    };
    let train_path = expand_path(&cfg.data.train);
    let train_pairs = limited(read_pairs(&train_path, &spec(&cfg, &cfg.data.train_target))?, cfg.data.train_limit);
    let valid_pairs = match &cfg.data.valid {
        Some(v) => limited(read_pairs(&expand_path(v), &spec(&cfg, &cfg.data.valid_target))?, cfg.data.valid_limit),
        None => vec![],
    };
    let samples = test_prompts(&cfg, cfg.report.samples)?;

    eprintln!("loading {}", model_path.display());
    let loaded = load_model_with(&model_path, &dev, dtype, cfg.model.keep_quantized).with_context(|| format!("loading model {}", model_path.display()))?;
    let (packed, as_f32) = loaded.weights.packed_bytes();
    if packed > 0 {
        eprintln!(
            "base linear weights kept quantized: {:.0} MiB instead of {:.0} MiB in f32 (model.keep_quantized = false expands them on load)",
            packed as f64 / 1048576.0,
            as_f32 as f64 / 1048576.0
        );
    } else if cfg.model.keep_quantized && !dev.is_cpu() && model_path.extension().is_some_and(|e| e == "gguf") {
        eprintln!("base weights expanded to {dtype:?} on the GPU (model.keep_quantized keeps GGUF blocks packed on the CPU only)");
    }
    let tok = &loaded.tokenizer;
    let train = encode_all(tok, &tpl, &train_pairs, &train_path)?;
    let valid = match &cfg.data.valid {
        Some(v) if !valid_pairs.is_empty() => encode_all(tok, &tpl, &valid_pairs, &expand_path(v))?,
        _ => vec![],
    };
    let mut lora_cfg = cfg.lora.clone();
    crate::common::family_default_targets(&mut lora_cfg, &loaded.config);
    if lora_cfg.init_seed == 0 {
        lora_cfg.init_seed = cfg.train.seed;
    }
    let adapters = LoraAdapters::init(&lora_cfg, &loaded.config.linear_modules(), &dev)?;
    eprintln!("{}", trainable_line(adapters.trainable_parameters(), loaded.weights.parameter_count()));
    eprintln!("{} training examples, {} validation examples; run folder {}", train.len(), valid.len(), run_dir.display());
    let mut model = AnyModel::new(&loaded.config, &loaded.weights, &LoraSite { adapters: &adapters, dropout: lora_cfg.dropout }, &dev)?;
    if !model.set_activation_checkpointing(cfg.train.activation_checkpointing) {
        eprintln!("lowrank: warning: train.activation_checkpointing is only implemented for the Llama family; training without it");
    }

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run folder {}", run_dir.display()))?;
    lowrank_models::weights::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    let base_outputs = if samples.is_empty() { vec![] } else {
        eprintln!("generating base-model outputs for {} test prompts ...", samples.len());
        sample_outputs(&model, &loaded.config, tok, &tpl, &cfg, &samples)?
    };

    let adapter_info = AdapterInfo::new(model_path.display().to_string(), loaded.config.peft_task_type(), loaded.config.fan_in_fan_out());
    let trainer = Trainer {
        model: &model,
        adapters: &adapters,
        train: &train,
        valid: &valid,
        cfg: &cfg.train,
        pad_id: tok.pad_id,
        run_dir: Some(run_dir.clone()),
        adapter_info: adapter_info.clone(),
    };
    let mut opt = trainer.optimizer()?;
    let start = match &resume_ck {
        Some(ck) => {
            let st = load_checkpoint(ck, &adapters, &mut opt)?;
            eprintln!("resuming from {} (step {})", ck.display(), st.step);
            Some(st)
        }
        None => None,
    };
    let mut bar = Bar::new();
    let summary = trainer.run(&mut opt, start, &mut bar)?;
    let adapter_dir = run_dir.join("adapter");
    lowrank_peft::save_adapter(&adapter_dir, &adapters, &adapter_info)?;
    let summary_json = serde_json::to_string_pretty(&summary)?;
    lowrank_models::weights::write_atomic(&run_dir.join("summary.json"), summary_json.as_bytes())?;
    crate::plot::loss_curve_svg(&run_dir.join("metrics.jsonl"), &run_dir.join("loss.svg"))?;
    eprintln!(
        "done: {} steps in {:.1} s ({:.0} tokens/s), final loss {:.4}{}; adapter saved to {}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_s,
        summary.final_loss,
        summary.val_loss.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default(),
        adapter_dir.display()
    );

    if !samples.is_empty() {
        let tuned = sample_outputs(&model, &loaded.config, tok, &tpl, &cfg, &samples)?;
        let mut lines = Vec::new();
        println!();
        for (i, ((prompt, refs), (base, tuned))) in samples.iter().zip(base_outputs.iter().zip(&tuned)).enumerate() {
            println!("[{}] {prompt}", i + 1);
            println!("    base : {base}");
            println!("    tuned: {tuned}");
            println!("    ref  : {}", refs.first().map(String::as_str).unwrap_or(""));
            lines.push(serde_json::json!({"prompt": prompt, "base": base, "tuned": tuned, "references": refs}).to_string());
        }
        lowrank_models::weights::write_atomic(&run_dir.join("samples.jsonl"), (lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}
