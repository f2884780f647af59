//! Checkpoints: adapter (PEFT layout), AdamW moments, and the step, written to a temporary
//! folder and renamed into place, so a crash never leaves a half-written checkpoint.
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use candle_core::{DType, Device};
use lowrank_models::weights::{read_safetensors, write_atomic, write_dir_atomic, write_safetensors};
use lowrank_peft::Adapter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the loop needs besides tensors to continue exactly where it stopped. Data order and
/// dropout masks are functions of `(seed, step)`, so no generator state is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    /// Micro-batches consumed (the data position).
    pub micro_batches: usize,
    pub epoch: usize,
    pub last_loss: f64,
    /// AdamW updates made (fewer than `step` when steps were skipped); absent in older
    /// checkpoints, where it equals `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_steps: Option<usize>,
    /// The loss of every step so far (NaN, written `null`, for a skipped step), so that a resumed
    /// run's summary covers the whole run.
    #[serde(default, deserialize_with = "crate::checkpoint::nulls_as_nan")]
    pub losses: Vec<f64>,
    /// Seconds spent training and tokens processed so far.
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub tokens: usize,
    /// The settings that determine the run ([`crate::RunConfig::identity`]) and their hash.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settings_hash: String,
}

/// Reads a list of numbers in which `null` stands for NaN (as `serde_json` writes NaN).
pub fn nulls_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    let v: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// Reads `trainer_state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path: state_path.clone(), reason: e.to_string() })
}

/// Refuses to resume from a checkpoint trained with other settings, naming the keys that
/// differ (old → new). Checkpoints from before settings were recorded are accepted.
pub fn check_settings(checkpoint: &Path, state: &TrainerState, now: &BTreeMap<String, String>) -> Result<()> {
    if state.settings.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&String> = state.settings.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| state.settings.get(*k) != now.get(*k))
        .map(|k| format!("{k}: {} → {}", shown(state.settings.get(k)), shown(now.get(k))))
        .collect();
    if diffs.is_empty() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: checkpoint.to_path_buf(),
        reason: format!("was trained with other settings ({}); resume with the run's own settings, or start a new run", diffs.join("; ")),
    })
}

pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:06}"))
}

/// Writes a checkpoint of `step` under `run_dir/checkpoints/`, as a unit (a temporary folder
/// renamed into place): the adapter's trainable tensors, the AdamW moments and the state.
pub fn save_checkpoint(run_dir: &Path, adapter: &dyn Adapter, opt: &AdamW, state: &TrainerState, info: &lowrank_peft::AdapterInfo) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(run_dir, state.step);
    lowrank_peft::folder::ensure_adapter_finite(adapter, &final_dir)?;
    write_dir_atomic(&final_dir, |tmp| -> Result<()> {
        // The native form: exactly the trainable tensors (GPT-2's q/v parts in c_attn too).
        adapter.save_native(tmp, info)?;
        let mut moments = BTreeMap::new();
        for (i, (name, _)) in opt.vars.iter().enumerate() {
            moments.insert(format!("m.{name}"), opt.m[i].clone());
            moments.insert(format!("v.{name}"), opt.v[i].clone());
        }
        write_safetensors(&tmp.join("optimizer.safetensors"), &moments, None)?;
        let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Invalid(e.to_string()))?;
        write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
        Ok(())
    })?;
    Ok(final_dir)
}

/// The newest complete checkpoint of a run folder, or `dir` itself when it is a checkpoint.
pub fn find_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join("trainer_state.json").exists() {
        return Ok(dir.to_path_buf());
    }
    if !dir.is_dir() {
        return Err(TrainError::RunFolder { path: dir.to_path_buf(), reason: "does not exist (nothing to resume)".into() });
    }
    let ck = dir.join("checkpoints");
    let mut found: Vec<PathBuf> = match std::fs::read_dir(&ck) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("trainer_state.json").exists() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(TrainError::io(&ck, e)),
    };
    found.sort();
    found.pop().ok_or_else(|| TrainError::RunFolder {
        path: dir.to_path_buf(),
        reason: "has no checkpoint to resume from: the run stopped before its first checkpoint (every train.save_every steps; none when 0), so start it again with --overwrite".into(),
    })
}

/// Restores adapter values, optimizer moments and the state from a checkpoint folder.
pub fn load_checkpoint(dir: &Path, adapter: &dyn Adapter, opt: &mut AdamW) -> Result<TrainerState> {
    let state = read_state(dir)?;
    let weights = read_safetensors(&dir.join(lowrank_peft::folder::WEIGHTS_FILE), &Device::Cpu, Some(DType::F32))?;
    for (name, var) in adapter.named_vars() {
        let key = format!("base_model.model.{name}");
        let t = weights.get(&key).ok_or_else(|| TrainError::Checkpoint { path: dir.to_path_buf(), reason: format!("missing tensor `{key}` (was the run configured differently?)") })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Checkpoint { path: dir.to_path_buf(), reason: format!("tensor `{key}` has shape {:?}, the run needs {:?}", t.dims(), var.dims()) });
        }
        var.set(&t.to_device(var.device())?)?;
    }
    let moments = read_safetensors(&dir.join("optimizer.safetensors"), &Device::Cpu, Some(DType::F32))?;
    for (i, (name, var)) in opt.vars.iter().enumerate() {
        for (slot, prefix) in [(&mut opt.m[i], "m"), (&mut opt.v[i], "v")] {
            let key = format!("{prefix}.{name}");
            let t = moments.get(&key).ok_or_else(|| TrainError::Checkpoint { path: dir.to_path_buf(), reason: format!("missing optimizer tensor `{key}`") })?;
            *slot = t.to_device(var.device())?;
        }
    }
    opt.t = state.optimizer_steps.unwrap_or(state.step);
    Ok(state)
}
