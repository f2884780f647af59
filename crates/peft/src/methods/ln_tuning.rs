//! LN tuning, PEFT's `LNTuningConfig`: the targeted norm layers' weights (and a LayerNorm's
//! bias) train, everything else stays frozen; a trained copy replaces each norm. Merging writes
//! the trained values over the base ones. PEFT's per-family default targets: Llama
//! `input_layernorm, post_attention_layernorm, norm`, Qwen2 `post_attention_layernorm`, GPT-2
//! `ln_1, ln_2, ln_f`, T5 `layer_norm, final_layer_norm`.
use crate::adapter::{Adapter, AdapterInfo};
use crate::error::{PeftError, Result};
use crate::folder::{AdapterFolder, PREFIX};
use crate::methods::{InitContext, Method};
use crate::targets::{select, TargetSpec};
use candle_core::{DType, Device, Var};
use lowrank_models::{BaseNorm, BuildHook, ModelConfig, ModelLayout, NormInfo, NormKind, NormLayer, Weights};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `[ln_tuning]` section of a run file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LnTuningConfig {
    /// Norm modules to train (names by PEFT's suffix rule, or one regular expression); PEFT's
    /// default for the family when absent.
    pub targets: Option<TargetSpec>,
    pub exclude: Vec<String>,
}

fn default_targets(config: &ModelConfig) -> Vec<String> {
    let names: &[&str] = match config.model_type() {
        "qwen2" => &["post_attention_layernorm"],
        "gpt2" => &["ln_1", "ln_2", "ln_f"],
        "t5" => &["layer_norm", "final_layer_norm"],
        _ => &["input_layernorm", "post_attention_layernorm", "norm"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// One trained norm: its weight and, for a LayerNorm, its bias.
#[derive(Clone)]
pub struct TunedNorm {
    pub path: String,
    pub kind: NormKind,
    pub weight: Var,
    pub bias: Option<Var>,
}

/// The trained norms of a model.
pub struct LnTuningAdapter {
    pub targets: TargetSpec,
    pub norms: BTreeMap<String, TunedNorm>,
}

impl BuildHook for LnTuningAdapter {
    fn norm(&self, info: &NormInfo, layer: Arc<dyn NormLayer>) -> lowrank_models::Result<Arc<dyn NormLayer>> {
        let Some(t) = self.norms.get(&info.path) else { return Ok(layer) };
        let eps = match layer.as_base() {
            Some(b) => b.eps,
            None => return Err(lowrank_models::ModelError::Invalid(format!("LN tuning: `{}` was already changed by another adapter", info.path))),
        };
        Ok(Arc::new(BaseNorm { kind: t.kind, weight: t.weight.as_tensor().clone(), bias: t.bias.as_ref().map(|b| b.as_tensor().clone()), eps }))
    }
}

impl Adapter for LnTuningAdapter {
    fn method(&self) -> &'static str {
        "ln_tuning"
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (p, n) in &self.norms {
            out.push((format!("{p}.ln_tuning_layers.weight"), n.weight.clone()));
            if let Some(b) = &n.bias {
                out.push((format!("{p}.ln_tuning_layers.bias"), b.clone()));
            }
        }
        out
    }
    fn hook(&self) -> &dyn BuildHook {
        self
    }
    fn module_paths(&self) -> Vec<String> {
        self.norms.keys().cloned().collect()
    }
    fn describe(&self) -> String {
        format!("LN tuning of {} norm layers", self.norms.len())
    }
    fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        for n in self.norms.values() {
            let key = format!("{}.weight", n.path);
            let dtype = weights.get_any(&key)?.dtype();
            weights.insert(key, n.weight.as_tensor().to_dtype(dtype)?);
            if let Some(b) = &n.bias {
                weights.insert(format!("{}.bias", n.path), b.as_tensor().to_dtype(dtype)?);
            }
        }
        Ok(())
    }
    fn config_json(&self, info: &AdapterInfo) -> Value {
        let targets = match &self.targets {
            TargetSpec::Names(n) => json!(n),
            TargetSpec::Pattern(p) => json!(p),
        };
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": info.base_model,
            "exclude_modules": null,
            "inference_mode": true,
            "modules_to_save": null,
            "peft_type": "LN_TUNING",
            "revision": null,
            "target_modules": targets,
            "task_type": info.task_type,
        })
    }
}

/// The method: `[peft] method = "ln_tuning"` with an `[ln_tuning]` section; `peft_type`
/// `LN_TUNING`.
pub struct LnTuning;

fn settings_of(settings: &toml::Value) -> Result<LnTuningConfig> {
    settings.clone().try_into().map_err(|e: toml::de::Error| PeftError::Invalid(format!("[ln_tuning]: {}", e.message())))
}

impl Method for LnTuning {
    fn name(&self) -> &'static str {
        "ln_tuning"
    }
    fn peft_type(&self) -> &'static str {
        "LN_TUNING"
    }
    fn check(&self, settings: &toml::Value) -> Result<()> {
        settings_of(settings).map(|_| ())
    }
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>> {
        let cfg = settings_of(settings)?;
        let targets = cfg.targets.clone().unwrap_or_else(|| TargetSpec::Names(default_targets(ctx.config)));
        let paths: Vec<&str> = ctx.layout.norms.iter().map(|n| n.path.as_str()).collect();
        let chosen = select(&targets, &cfg.exclude, &paths)?;
        // The trained copies start from the checkpoint's values.
        let mut norms = BTreeMap::new();
        for info in ctx.layout.norms.iter().filter(|n| chosen.contains(&n.path)) {
            let copy = |name: &str| -> Result<Var> { Ok(Var::from_tensor(&ctx.weights.get(&format!("{}.{name}", info.path), &[info.dim])?.to_dtype(DType::F32)?.contiguous()?.to_device(ctx.device)?)?) };
            let bias = match info.kind {
                NormKind::Layer => Some(copy("bias")?),
                NormKind::Rms => None,
            };
            norms.insert(info.path.clone(), TunedNorm { path: info.path.clone(), kind: info.kind, weight: copy("weight")?, bias });
        }
        Ok(Box::new(LnTuningAdapter { targets, norms }))
    }
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, _device: &Device) -> Result<Box<dyn Adapter>> {
        folder.warn_unknown_keys(&["auto_mapping", "base_model_name_or_path", "exclude_modules", "inference_mode", "modules_to_save", "peft_type", "peft_version", "revision", "target_modules", "task_type"]);
        if folder.config.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(folder.invalid("modules_to_save is not supported for LN tuning yet"));
        }
        let targets = folder.target_spec("target_modules")?;
        let st = folder.weights_path();
        let mut weights: BTreeMap<String, Var> = BTreeMap::new();
        let mut biases: BTreeMap<String, Var> = BTreeMap::new();
        for (rest, t) in &folder.tensors {
            let key = format!("{PREFIX}{rest}");
            let (path, is_weight) = if let Some(p) = rest.strip_suffix(".ln_tuning_layers.weight") {
                (p, true)
            } else if let Some(p) = rest.strip_suffix(".ln_tuning_layers.bias") {
                (p, false)
            } else {
                folder.warnings.push(format!("{}: tensor `{key}` ignored (not an LN tuning layer)", st.display()));
                continue;
            };
            let info = layout.norm(path).ok_or_else(|| PeftError::UnknownModule { file: st.clone(), key: key.clone(), module: path.to_string() })?;
            if t.dims() != [info.dim] {
                return Err(PeftError::ShapeMismatch { file: st.clone(), key, module: path.to_string(), expected: vec![info.dim], actual: t.dims().to_vec() });
            }
            let v = Var::from_tensor(t)?;
            if is_weight { weights.insert(path.to_string(), v) } else { biases.insert(path.to_string(), v) };
        }
        let mut norms = BTreeMap::new();
        for (path, weight) in weights {
            let info = layout.norm(&path).ok_or_else(|| PeftError::Invalid(format!("no norm `{path}`")))?;
            let bias = biases.remove(&path);
            if info.kind == NormKind::Layer && bias.is_none() {
                return Err(PeftError::MissingTensor { file: st.clone(), key: format!("{PREFIX}{path}.ln_tuning_layers.bias") });
            }
            norms.insert(path.clone(), TunedNorm { path, kind: info.kind, weight, bias });
        }
        if let Some(path) = biases.keys().next() {
            return Err(PeftError::MissingTensor { file: st.clone(), key: format!("{PREFIX}{path}.ln_tuning_layers.weight") });
        }
        if norms.is_empty() {
            return Err(PeftError::InvalidConfig { path: st, reason: "no LN tuning layers found".into() });
        }
        let paths: Vec<&str> = layout.norms.iter().map(|n| n.path.as_str()).collect();
        folder.check_coverage("an LN tuning layer", norms.keys(), &paths)?;
        Ok(Box::new(LnTuningAdapter { targets, norms }))
    }
}
