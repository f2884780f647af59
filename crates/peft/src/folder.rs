//! Hugging Face PEFT's adapter folder, whatever the method: `adapter_config.json` (its
//! `peft_type` names the method) and `adapter_model.safetensors` (keys under
//! `base_model.model.`). Reading dispatches on `peft_type` through the method registry.
use crate::adapter::Adapter;
use crate::error::{PeftError, Result};
use candle_core::{DType, Device, Tensor};
use lowrank_models::weights::{read_safetensors, write_atomic, write_safetensors};
use lowrank_models::ModelLayout;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT gives every key of the adapter's tensors.
pub const PREFIX: &str = "base_model.model.";

/// An adapter folder as read: its config and its tensors (f32, on the model's device).
pub struct AdapterFolder {
    pub dir: PathBuf,
    pub config: Value,
    /// By key without the `base_model.model.` prefix.
    pub tensors: BTreeMap<String, Tensor>,
    /// Things noticed while reading, for the user (unknown keys, ignored tensors).
    pub warnings: Vec<String>,
}

impl AdapterFolder {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Reads `dir`'s config and tensors.
    pub fn read(dir: &Path, device: &Device) -> Result<Self> {
        let config = read_config(&dir.join(CONFIG_FILE))?;
        let st_path = dir.join(WEIGHTS_FILE);
        if !st_path.exists() {
            let alt = dir.join("adapter_model.bin");
            let reason = if alt.exists() { "only adapter_model.bin (pickle) found; save with safe_serialization=True" } else { "file not found" };
            return Err(PeftError::Io { path: st_path, source: std::io::Error::new(std::io::ErrorKind::NotFound, reason) });
        }
        let mut warnings = Vec::new();
        let mut tensors = BTreeMap::new();
        for (key, t) in read_safetensors(&st_path, device, Some(DType::F32))? {
            match key.strip_prefix(PREFIX) {
                Some(rest) => {
                    tensors.insert(rest.to_string(), t);
                }
                None => warnings.push(format!("{}: tensor `{key}` ignored (not under `{PREFIX}`)", st_path.display())),
            }
        }
        Ok(Self { dir: dir.to_path_buf(), config, tensors, warnings })
    }

    /// The config key `key` (present and not null), or an error naming it.
    pub fn required(&self, key: &str) -> Result<&Value> {
        self.config.get(key).filter(|x| !x.is_null()).ok_or_else(|| PeftError::MissingKey { path: self.config_path(), key: key.into() })
    }

    /// An error about the config, naming the file.
    pub fn invalid(&self, reason: impl Into<String>) -> PeftError {
        PeftError::InvalidConfig { path: self.config_path(), reason: reason.into() }
    }

    /// A `target_modules`-like key (`key`): a list of names or one regular expression; any other
    /// type is refused naming the key.
    pub fn target_spec(&self, key: &str) -> Result<crate::targets::TargetSpec> {
        let bad = || self.invalid(format!("`{key}` must be a list of names or a string"));
        match self.required(key)? {
            Value::String(s) => Ok(crate::targets::TargetSpec::Pattern(s.clone())),
            Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from).ok_or_else(bad)).collect::<Result<Vec<_>>>().map(crate::targets::TargetSpec::Names),
            _ => Err(bad()),
        }
    }

    /// `exclude_modules`: absent, a name or a list of names.
    pub fn exclude_modules(&self) -> Result<Vec<String>> {
        let bad = || self.invalid("`exclude_modules` must be a name or a list of names");
        match self.config.get("exclude_modules").filter(|v| !v.is_null()) {
            None => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(String::from).ok_or_else(bad)).collect(),
            Some(_) => Err(bad()),
        }
    }

    /// Refuses tensors for modules that `target_modules` (minus `exclude_modules`) does not select
    /// among `candidates`: PEFT would build no layer for them. `what` names the tensors.
    pub fn check_coverage<'a>(&self, what: &str, modules: impl IntoIterator<Item = &'a String>, candidates: &[&str]) -> Result<()> {
        let spec = self.target_spec("target_modules")?;
        let exclude = self.exclude_modules()?;
        let selected = crate::targets::select(&spec, &exclude, candidates).map_err(|e| self.invalid(format!("target_modules: {e}")))?;
        if let Some(m) = modules.into_iter().find(|m| !selected.contains(m)) {
            let shown = self.config.get("target_modules").map(Value::to_string).unwrap_or_default();
            let minus = if exclude.is_empty() { "" } else { " minus exclude_modules" };
            return Err(self.invalid(format!("the folder holds {what} for `{m}`, which target_modules = {shown}{minus} does not select")));
        }
        Ok(())
    }

    /// Warns about every config key not in `known`.
    pub fn warn_unknown_keys(&mut self, known: &[&str]) {
        if let Some(obj) = self.config.as_object() {
            for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
                self.warnings.push(format!("{}: unknown key `{k}` ignored", self.config_path().display()));
            }
        }
    }
}

/// `adapter_config.json` as a JSON object.
pub fn read_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| PeftError::Io { path: path.to_path_buf(), source })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| PeftError::Json { path: path.to_path_buf(), source })?;
    if !v.is_object() {
        return Err(PeftError::InvalidConfig { path: path.to_path_buf(), reason: "not a JSON object".into() });
    }
    Ok(v)
}

/// Writes `tensors` (keys with the prefix) and the config, each file atomically.
pub fn write_folder(dir: &Path, tensors: BTreeMap<String, Tensor>, cfg: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Write { path: dir.to_path_buf(), source })?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    let text = serde_json::to_string_pretty(cfg).map_err(|source| PeftError::Json { path: dir.join(CONFIG_FILE), source })?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(())
}

/// A loaded adapter of any method, and what was noticed while reading it.
pub struct LoadedAdapter {
    pub adapter: Box<dyn Adapter>,
    pub warnings: Vec<String>,
    pub task_type: Option<String>,
}

/// Loads the adapter folder `dir` for a model of layout `layout`: the method is the one
/// `peft_type` names; every tensor's module must exist and its shape must fit.
pub fn load_adapter(dir: &Path, layout: &ModelLayout, device: &Device) -> Result<LoadedAdapter> {
    let mut folder = AdapterFolder::read(dir, device)?;
    let peft_type = folder.required("peft_type")?.as_str().unwrap_or_default().to_string();
    let method = crate::methods::by_peft_type(&peft_type, &folder.config_path())?;
    let task_type = folder.config.get("task_type").and_then(Value::as_str).map(String::from);
    let adapter = method.load(&mut folder, layout, device)?;
    crate::adapter::check_attached(adapter.as_ref(), layout)?;
    Ok(LoadedAdapter { adapter, warnings: folder.warnings, task_type })
}

/// Writes `adapter` as PEFT's adapter folder.
pub fn save_adapter(dir: &Path, adapter: &dyn Adapter, info: &crate::adapter::AdapterInfo) -> Result<()> {
    ensure_adapter_finite(adapter, dir)?;
    lowrank_models::weights::write_dir_atomic(dir, |tmp| adapter.save(tmp, info))
}

/// Refuses an adapter holding NaN or infinity, naming the tensor: such an adapter is never
/// written.
pub fn ensure_adapter_finite(adapter: &dyn Adapter, dir: &Path) -> Result<()> {
    let vars = adapter.named_vars();
    let named: Vec<(&str, &Tensor)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())).collect();
    lowrank_models::finite::ensure_finite(&format!("not writing {}: the adapter", dir.display()), named)?;
    Ok(())
}

/// Writes the form a checkpoint keeps (see [`Adapter::save_native`]).
pub fn save_adapter_native(dir: &Path, adapter: &dyn Adapter, info: &crate::adapter::AdapterInfo) -> Result<()> {
    ensure_adapter_finite(adapter, dir)?;
    lowrank_models::weights::write_dir_atomic(dir, |tmp| adapter.save_native(tmp, info))
}
