//! The adapter contract: what the trainer, checkpoints, run file, merge, inspect, bench, generate,
//! eval and the CPU decoder see of any PEFT method. A method ([`crate::methods`]) makes an
//! [`Adapter`]; the adapter names its trainable tensors with PEFT's keys, attaches to a model
//! through its [`BuildHook`], merges into the base weights (or says why it cannot), writes PEFT's
//! adapter folder, and reseeds its dropout per micro-step.
use crate::error::{PeftError, Result};
use crate::folder::{write_folder, PREFIX};
use candle_core::{DType, Tensor, Var};
use lowrank_models::{BuildHook, ModelLayout, Weights};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// What an adapter folder records about the model it belongs to.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub base_model: String,
    /// `CAUSAL_LM` or `SEQ_2_SEQ_LM`.
    pub task_type: String,
    /// The model's adapted layers are Conv1D (GPT-2): PEFT's `fan_in_fan_out`.
    pub fan_in_fan_out: bool,
}

impl AdapterInfo {
    pub fn new(base_model: impl Into<String>, task_type: impl Into<String>, fan_in_fan_out: bool) -> Self {
        Self { base_model: base_model.into(), task_type: task_type.into(), fan_in_fan_out }
    }

    /// What a model of `config` records, `base_model` naming where it came from.
    pub fn for_model(base_model: impl Into<String>, config: &lowrank_models::ModelConfig) -> Self {
        Self::new(base_model, config.peft_task_type(), config.fan_in_fan_out())
    }
}

/// A PEFT adapter of any method, attached to (or ready to attach to) one model.
pub trait Adapter: Send + Sync {
    /// The method's name in run files (`lora`, `ia3`, ...).
    fn method(&self) -> &'static str;

    /// Every trainable tensor under its PEFT key (without `base_model.model.`), in a fixed order:
    /// what the optimizer updates and a checkpoint stores.
    fn named_vars(&self) -> Vec<(String, Var)>;

    /// The learning-rate multiplier of each of [`Adapter::named_vars`] (1 unless the method says
    /// otherwise, as LoRA+ does for B).
    fn lr_scales(&self) -> Vec<f64> {
        vec![1.0; self.named_vars().len()]
    }

    /// The hook that attaches the adapter to a model as it is built.
    fn hook(&self) -> &dyn BuildHook;

    /// The module paths the adapter attaches to; each must be a module of the model.
    fn module_paths(&self) -> Vec<String>;

    /// Reseeds per-step randomness (adapter dropout), before every micro-step: a function of
    /// `seed` alone, so a resumed or recomputed step draws the same masks.
    fn reseed(&self, _seed: u64) {}

    /// Scalar parameters the optimizer trains.
    fn trainable_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// One line for people: the method and its main settings.
    fn describe(&self) -> String;

    /// Folds the adapter into `weights` so a plain model computes what the adapted one does, or
    /// says why it cannot ([`PeftError::NotMergeable`]).
    fn merge_into(&self, weights: &mut Weights) -> Result<()>;

    /// `adapter_config.json` as PEFT writes it for this adapter.
    fn config_json(&self, info: &AdapterInfo) -> Value;

    /// The tensors of PEFT's `adapter_model.safetensors`, keys with the `base_model.model.` prefix.
    fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, var) in self.named_vars() {
            out.insert(format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?);
        }
        Ok(out)
    }

    /// Writes PEFT's adapter folder (each file atomically).
    fn save(&self, dir: &Path, info: &AdapterInfo) -> Result<()> {
        write_folder(dir, self.tensors()?, &self.config_json(info))
    }

    /// Writes the form a checkpoint keeps: exactly the trainable tensors, so a resumed run
    /// continues bit for bit (the same as [`Adapter::save`] unless the method exports another).
    fn save_native(&self, dir: &Path, info: &AdapterInfo) -> Result<()> {
        self.save(dir, info)
    }

    /// Unmerged branches for lowrank's CPU decoder, when the method has that form (LoRA);
    /// `None`: the candle model decodes.
    fn decode_branches(&self) -> Result<Option<BTreeMap<String, lowrank_models::fast_decode::LoraBranch>>> {
        Ok(None)
    }
}

/// Checks that every module the adapter names is one the model attaches through its hooks.
pub fn check_attached(adapter: &dyn Adapter, layout: &ModelLayout) -> Result<()> {
    for module in adapter.module_paths() {
        if layout.linear(&module).is_none() && layout.norm(&module).is_none() {
            let mut names: Vec<String> = layout.linears.iter().map(|l| l.path.rsplit('.').next().unwrap_or(&l.path).to_string()).collect();
            names.extend(layout.norms.iter().map(|n| n.path.rsplit('.').next().unwrap_or(&n.path).to_string()));
            names.sort();
            names.dedup();
            return Err(PeftError::Unattached { module, available: names.join(", ") });
        }
    }
    Ok(())
}
