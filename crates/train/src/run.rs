//! A training run as a library function: what `lowrank train` does between reading its
//! arguments and printing, callable in-process (by the CLI and by a sweep). [`prepare`] reads the
//! data, loads the model, makes the method's adapter and builds the model with it;
//! [`Prepared::train`] runs the loop (from a checkpoint when resuming) and writes the adapter,
//! `metrics.jsonl`, checkpoints and `summary.json` into the run folder.
use crate::checkpoint::{find_checkpoint, load_checkpoint};
use crate::config::{expand_path, RunConfig};
use crate::data::{encode_all, read_pairs, Example, ReadSpec, Templater, TextPair};
use crate::error::{Result, TrainError};
use crate::trainer::{Observer, TrainSummary, Trainer};
use candle_core::{DType, Device};
use lowrank_models::{load_config, load_model_with, model_layout, AnyModel, LoadedModel, ModelLayout};
use lowrank_peft::{check_attached, Adapter, AdapterInfo, InitContext};
use std::path::{Path, PathBuf};

/// How to read one of the run file's data files (`target` names a parallel-text target file).
pub fn read_spec(cfg: &RunConfig, target: &Option<String>) -> ReadSpec {
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

/// The dtype a training run's model is loaded in, from `model.dtype`. bf16 on the CPU keeps the
/// model in f32 and switches this thread's products with the frozen weights to bf16
/// (AVX512-BF16, [`lowrank_models::ops::bf16_gemm`]): the autocast split, with activations,
/// adapters and optimizer state in f32. Returns the dtype and a note for the user.
pub fn training_dtype(s: &str, device: &Device) -> Result<(DType, Option<String>)> {
    let d = match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(TrainError::Invalid(format!("unknown dtype `{other}` (f32, bf16, f16)"))),
    };
    if d == DType::BF16 && device.is_cpu() {
        let note = if lowrank_models::ops::bf16_gemm::set_bf16_products(true) {
            "bf16 on the CPU: products with the frozen weights in bf16 (AVX512-BF16); activations, adapters and optimizer state in f32"
        } else {
            "warning: bf16 on the CPU needs AVX512-BF16, which this CPU lacks; computing in f32 (adapters and optimizer state are f32 either way)"
        };
        return Ok((DType::F32, Some(note.into())));
    }
    Ok((d, None))
}

/// Everything a run needs, loaded and built.
pub struct Prepared {
    pub cfg: RunConfig,
    pub run_dir: PathBuf,
    pub loaded: LoadedModel,
    pub layout: ModelLayout,
    pub adapter: Box<dyn Adapter>,
    /// The model with the adapter attached.
    pub model: AnyModel,
    pub templater: Templater,
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub adapter_info: AdapterInfo,
    /// The checkpoint to continue from.
    pub resume: Option<PathBuf>,
}

/// Reads the data, loads the model, makes the method's adapter and builds the model with it.
/// Bad data or settings fail before the weights are loaded. `resume`: a run folder or a
/// checkpoint to continue from. Notes for the user go to `obs`.
pub fn prepare(cfg: RunConfig, run_dir: PathBuf, resume: Option<&Path>, device: &Device, obs: &mut dyn Observer) -> Result<Prepared> {
    let resume = match resume {
        Some(dir) => Some(find_checkpoint(dir)?),
        None => None,
    };
    let (dtype, note) = training_dtype(&cfg.model.dtype, device)?;
    if let Some(n) = note {
        obs.note(&n);
    }
    let model_path = expand_path(&cfg.model.path);
    if cfg.train.threads > 0 && std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", cfg.train.threads.to_string());
    }
    // Configuration and data first: a bad file fails before the weights are loaded.
    let model_config = load_config(&model_path).map_err(|e| TrainError::Invalid(format!("reading the configuration of {}: {e}", model_path.display())))?;
    let mut max_length = cfg.data.max_length;
    if !model_config.is_encoder_decoder() && max_length > model_config.max_positions() {
        obs.note(&format!("warning: data.max_length = {max_length} exceeds the model's {} positions; examples are truncated to {}", model_config.max_positions(), model_config.max_positions()));
        max_length = model_config.max_positions();
    }
    let templater = Templater {
        prompt_template: cfg.data.prompt_template.clone(),
        completion_template: cfg.data.completion_template.clone(),
        append_eos: cfg.data.append_eos,
        max_length,
        seq2seq: model_config.is_encoder_decoder(),
    };
    let train_path = expand_path(&cfg.data.train);
    let train_pairs = limited(read_pairs(&train_path, &read_spec(&cfg, &cfg.data.train_target))?, cfg.data.train_limit);
    let valid_pairs = match &cfg.data.valid {
        Some(v) => limited(read_pairs(&expand_path(v), &read_spec(&cfg, &cfg.data.valid_target))?, cfg.data.valid_limit),
        None => vec![],
    };

    obs.note(&format!("loading {}", model_path.display()));
    let loaded = load_model_with(&model_path, device, dtype, cfg.model.keep_quantized).map_err(|e| TrainError::Invalid(format!("loading model {}: {e}", model_path.display())))?;
    let (packed, as_f32) = loaded.weights.packed_bytes();
    if packed > 0 {
        obs.note(&format!(
            "base linear weights kept quantized: {:.0} MiB instead of {:.0} MiB in f32 (model.keep_quantized = false expands them on load)",
            packed as f64 / 1048576.0,
            as_f32 as f64 / 1048576.0
        ));
    } else if cfg.model.keep_quantized && !device.is_cpu() && model_path.extension().is_some_and(|e| e == "gguf") {
        obs.note(&format!("base weights expanded to {dtype:?} on the GPU (model.keep_quantized keeps GGUF blocks packed on the CPU only)"));
    }
    let tok = &loaded.tokenizer;
    let train = encode_all(tok, &templater, &train_pairs, &train_path)?;
    let valid = match &cfg.data.valid {
        Some(v) if !valid_pairs.is_empty() => encode_all(tok, &templater, &valid_pairs, &expand_path(v))?,
        _ => vec![],
    };
    let layout = model_layout(&loaded.config)?;
    let method = lowrank_peft::methods::by_name(&cfg.peft.method)?;
    let adapter = method.init(&cfg.method_settings(), &InitContext { layout: &layout, config: &loaded.config, weights: &loaded.weights, device, seed: cfg.train.seed })?;
    check_attached(adapter.as_ref(), &layout)?;
    obs.note(&format!("{}: {}", adapter.describe(), trainable_line(adapter.trainable_parameters(), loaded.weights.parameter_count())));
    obs.note(&format!("{} training examples, {} validation examples; run folder {}", train.len(), valid.len(), run_dir.display()));
    let mut model = AnyModel::new(&loaded.config, &loaded.weights, adapter.hook(), device)?;
    if !model.set_activation_checkpointing(cfg.train.activation_checkpointing) {
        obs.note("warning: train.activation_checkpointing is only implemented for the Llama family; training without it");
    }
    let adapter_info = AdapterInfo::for_model(model_path.display().to_string(), &loaded.config);
    Ok(Prepared { cfg, run_dir, loaded, layout, adapter, model, templater, train, valid, adapter_info, resume })
}

impl Prepared {
    /// Runs the loop to the last step (from the checkpoint when resuming), then writes the
    /// adapter (PEFT's folder, `adapter/`) and `summary.json`. The resolved settings go to
    /// `config.toml` before the first step.
    pub fn train(&self, obs: &mut dyn Observer) -> Result<TrainSummary> {
        std::fs::create_dir_all(&self.run_dir).map_err(|e| TrainError::io(&self.run_dir, e))?;
        lowrank_models::weights::write_atomic(&self.run_dir.join("config.toml"), self.cfg.to_toml().as_bytes())?;
        let trainer = Trainer {
            model: &self.model,
            adapter: self.adapter.as_ref(),
            train: &self.train,
            valid: &self.valid,
            cfg: &self.cfg.train,
            pad_id: self.loaded.tokenizer.pad_id,
            run_dir: Some(self.run_dir.clone()),
            adapter_info: self.adapter_info.clone(),
            vocab_size: self.loaded.config.vocab_size(),
        };
        let mut opt = trainer.optimizer()?;
        let start = match &self.resume {
            Some(ck) => {
                let st = load_checkpoint(ck, self.adapter.as_ref(), &mut opt)?;
                obs.note(&format!("resuming from {} (step {})", ck.display(), st.step));
                Some(st)
            }
            None => None,
        };
        let summary = trainer.run(&mut opt, start, obs)?;
        lowrank_peft::save_adapter(&self.adapter_dir(), self.adapter.as_ref(), &self.adapter_info)?;
        let json = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Invalid(e.to_string()))?;
        lowrank_models::weights::write_atomic(&self.run_dir.join("summary.json"), json.as_bytes())?;
        Ok(summary)
    }

    /// Where the final adapter goes.
    pub fn adapter_dir(&self) -> PathBuf {
        self.run_dir.join("adapter")
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// PEFT's `print_trainable_parameters` line.
pub fn trainable_line(trainable: usize, base: usize) -> String {
    let all = trainable + base;
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        thousands(trainable),
        thousands(all),
        100.0 * trainable as f64 / all.max(1) as f64
    )
}
