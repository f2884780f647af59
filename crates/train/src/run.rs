//! A training run as a library function: what `lowrank train` does between reading its
//! arguments and printing, callable in-process (by the CLI and by a sweep). [`prepare`] reads the
//! data, loads the model, makes the method's adapter and builds the model with it;
//! [`Prepared::train`] runs the loop (from a checkpoint when resuming) and writes the adapter,
//! `metrics.jsonl`, checkpoints and `summary.json` into the run folder.
use crate::checkpoint::{check_settings, find_checkpoint, load_checkpoint, read_state};
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

/// How a run starts with respect to its folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A new run: the folder must not exist yet or be empty.
    Fresh,
    /// A new run replacing what the folder holds (removed when training starts).
    Overwrite,
    /// Continue from the newest checkpoint of a run folder, or from the checkpoint folder given.
    Resume(PathBuf),
}

/// The run folder of `dir` given to resume: `dir` itself, or the run folder holding it when it
/// is a checkpoint folder (`RUN/checkpoints/step-N`).
pub fn run_dir_of(dir: &Path) -> PathBuf {
    if dir.join("trainer_state.json").exists() {
        if let Some(run) = dir.parent().and_then(Path::parent) {
            return run.to_path_buf();
        }
    }
    dir.to_path_buf()
}

/// Refuses a folder that already holds something (a run that `--resume` or `--overwrite` would
/// have to name), or a path that is a file.
fn check_fresh(run_dir: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(run_dir) else { return Ok(()) };
    if !meta.is_dir() {
        return Err(TrainError::RunFolder { path: run_dir.to_path_buf(), reason: "is a file, not a run folder".into() });
    }
    let mut names: Vec<String> = std::fs::read_dir(run_dir).map_err(|e| TrainError::io(run_dir, e))?.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = if names.len() > 4 { format!("{}, …", names[..4].join(", ")) } else { names.join(", ") };
    Err(TrainError::RunFolder {
        path: run_dir.to_path_buf(),
        reason: format!("already holds a run ({shown}); continue it with --resume, replace it with --overwrite, or choose another output folder"),
    })
}

/// When resuming a run that already finished with these settings: its summary (nothing to
/// do). Reads the training data's size (not the model) to know the run's step count.
pub fn finished_summary(cfg: &RunConfig, run_dir: &Path) -> Result<Option<TrainSummary>> {
    let path = run_dir.join("summary.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let Ok(summary) = serde_json::from_str::<TrainSummary>(&text) else { return Ok(None) };
    if !run_dir.join("adapter").join(lowrank_peft::folder::CONFIG_FILE).exists() {
        return Ok(None);
    }
    if !summary.settings_hash.is_empty() && summary.settings_hash != cfg.identity_hash() {
        return Ok(None);
    }
    let examples = if cfg.train.steps > 0 { 0 } else { limited(read_pairs(&expand_path(&cfg.data.train), &read_spec(cfg, &cfg.data.train_target))?, cfg.data.train_limit).len() };
    Ok((summary.steps == crate::trainer::total_steps(&cfg.train, examples)).then_some(summary))
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
    /// Replace what the run folder holds when training starts.
    pub overwrite: bool,
}

/// Reads the data, loads the model, makes the method's adapter and builds the model with it.
/// Bad data, settings or run folders fail before the weights are loaded: a fresh run refuses a
/// folder holding an earlier run, and a resumed one a checkpoint trained with other settings
/// (naming the keys that differ). Temporaries left by a killed run are removed. Notes for the
/// user go to `obs`.
pub fn prepare(cfg: RunConfig, run_dir: PathBuf, start: Start, device: &Device, obs: &mut dyn Observer) -> Result<Prepared> {
    let mut removed = lowrank_models::weights::remove_stale_temporaries(&run_dir);
    removed.extend(lowrank_models::weights::remove_stale_temporaries(&run_dir.join("checkpoints")));
    if !removed.is_empty() {
        obs.note(&format!("removed {} temporary file(s) left in {} by an interrupted run", removed.len(), run_dir.display()));
    }
    let resume = match &start {
        Start::Fresh => {
            check_fresh(&run_dir)?;
            None
        }
        Start::Overwrite => None,
        Start::Resume(dir) => {
            let ck = find_checkpoint(dir)?;
            check_settings(&ck, &read_state(&ck)?, &cfg.identity())?;
            Some(ck)
        }
    };
    let (dtype, note) = training_dtype(&cfg.model.dtype, device)?;
    if let Some(n) = note {
        obs.note(&n);
    }
    let model_path = expand_path(&cfg.model.path);
    if cfg.train.threads > 0 && std::env::var("RAYON_NUM_THREADS").is_err() {
        let (n, warning) = lowrank_models::thread_pools::capped_threads(cfg.train.threads, "train.threads");
        if let Some(w) = warning {
            obs.note(&format!("warning: {w}"));
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
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
    Ok(Prepared { cfg, run_dir, loaded, layout, adapter, model, templater, train, valid, adapter_info, resume, overwrite: start == Start::Overwrite })
}

impl Prepared {
    /// Runs the loop to the last step (from the checkpoint when resuming), then writes the
    /// adapter (PEFT's folder, `adapter/`) and `summary.json`. The resolved settings go to
    /// `config.toml` before the first step.
    pub fn train(&self, obs: &mut dyn Observer) -> Result<TrainSummary> {
        if self.overwrite && std::fs::symlink_metadata(&self.run_dir).is_ok() {
            obs.note(&format!("replacing the run in {}", self.run_dir.display()));
            lowrank_models::weights::remove_any(&self.run_dir);
            if std::fs::symlink_metadata(&self.run_dir).is_ok() {
                return Err(TrainError::RunFolder { path: self.run_dir.clone(), reason: "could not be removed for --overwrite".into() });
            }
        }
        std::fs::create_dir_all(&self.run_dir).map_err(|e| TrainError::write_io(&self.run_dir, e))?;
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
            settings: self.cfg.identity(),
            settings_hash: self.cfg.identity_hash(),
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
        self.save_final_adapter()?;
        let json = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Invalid(e.to_string()))?;
        lowrank_models::weights::write_atomic(&self.run_dir.join("summary.json"), json.as_bytes())?;
        Ok(summary)
    }

    /// Writes the trained adapter to `adapter/`; when that fails (a full disk, a read-only
    /// folder), the weights go to a folder under the system's temporary directory instead and
    /// the error says where, so a training is never lost to a failed final write.
    fn save_final_adapter(&self) -> Result<()> {
        let dir = self.adapter_dir();
        let Err(e) = lowrank_peft::save_adapter(&dir, self.adapter.as_ref(), &self.adapter_info) else { return Ok(()) };
        if matches!(&e, lowrank_peft::PeftError::Model(lowrank_models::ModelError::NonFinite { .. })) {
            return Err(e.into());
        }
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let rescue = std::env::temp_dir().join(format!("lowrank-rescued-{stamp}-{}", std::process::id())).join("adapter");
        let kept = match lowrank_peft::save_adapter(&rescue, self.adapter.as_ref(), &self.adapter_info) {
            Ok(()) => format!("the trained adapter was saved to {} instead", rescue.display()),
            Err(e2) => format!("saving it to {} failed too ({e2}); the last checkpoint in {} is what remains", rescue.display(), self.run_dir.join("checkpoints").display()),
        };
        Err(TrainError::FinalWrite { reason: e.to_string(), kept })
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
