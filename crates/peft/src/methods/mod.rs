//! The PEFT methods lowrank has, one module each, and the registry that finds them by run-file
//! name or by `adapter_config.json`'s `peft_type`. Adding a method is one module here plus one
//! line in [`REGISTRY`].
use crate::adapter::Adapter;
use crate::error::{PeftError, Result};
use crate::folder::AdapterFolder;
use candle_core::Device;
use lowrank_models::{ModelConfig, ModelLayout};
use std::path::Path;

pub mod bitfit;
pub mod dora;
pub mod ia3;
pub mod ln_tuning;
pub mod lora;

/// What a method needs to make a fresh adapter for a model.
pub struct InitContext<'a> {
    pub layout: &'a ModelLayout,
    pub config: &'a ModelConfig,
    /// The base model's weights (a method may start from them: LN tuning's copies, DoRA's
    /// magnitudes, PiSSA's factors); shape-only weights where only counts matter.
    pub weights: &'a lowrank_models::Weights,
    pub device: &'a Device,
    /// The run's seed (initialisation and dropout), used where the settings give none.
    pub seed: u64,
}

/// A PEFT method: makes adapters from run-file settings and reads PEFT's folders of its type.
pub trait Method: Sync {
    /// The name in run files (`[peft] method = "lora"`) and the name of its settings section.
    fn name(&self) -> &'static str;
    /// `adapter_config.json`'s `peft_type`.
    fn peft_type(&self) -> &'static str;
    /// A fresh adapter from its run-file section (`settings`, a TOML table; unknown keys are
    /// an error naming them).
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>>;
    /// Checks run-file settings before any model is loaded (unknown keys, values out of range).
    fn check(&self, _settings: &toml::Value) -> Result<()> {
        Ok(())
    }
    /// The adapter of a PEFT folder of this method's `peft_type`, for a model of `layout`.
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, device: &Device) -> Result<Box<dyn Adapter>>;
}

/// Every method, in the order `lowrank` lists them.
pub static REGISTRY: &[&dyn Method] = &[&lora::Lora, &dora::Dora, &ia3::Ia3, &bitfit::BitFit, &ln_tuning::LnTuning];

fn known() -> String {
    REGISTRY.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

/// The method a run file names.
pub fn by_name(name: &str) -> Result<&'static dyn Method> {
    REGISTRY.iter().copied().find(|m| m.name() == name).ok_or_else(|| PeftError::UnknownMethod { name: name.into(), known: known() })
}

/// The method of a PEFT folder's `peft_type` (`config` names the file in the error).
pub fn by_peft_type(peft_type: &str, config: &Path) -> Result<&'static dyn Method> {
    REGISTRY.iter().copied().find(|m| m.peft_type() == peft_type).ok_or_else(|| PeftError::UnknownPeftType {
        path: config.to_path_buf(),
        peft_type: peft_type.into(),
        known: REGISTRY.iter().map(|m| m.peft_type()).collect::<Vec<_>>().join(", "),
    })
}

/// Names of every method's settings section (for the run file's unknown-key messages).
pub fn section_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name()).collect()
}
