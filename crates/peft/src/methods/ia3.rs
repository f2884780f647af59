//! (IA)³, PEFT's `IA3Config`: a learned vector `l` per targeted linear layer, initialised to
//! ones. A feed-forward output layer scales its *input*, `W (x ⊙ l) + b` (`l: (1, d_in)`); any
//! other layer its output, `(W x + b) ⊙ l` (`l: (d_out, 1)`). Merged as `W ⊙ l` (columns or rows)
//! and, for an output-scaled layer, `b ⊙ l`. PEFT's per-family default targets: Llama and
//! Mistral `k_proj, v_proj, down_proj`, Qwen2 `q_proj, v_proj, down_proj`, GPT-2 `c_attn,
//! mlp.c_proj`, T5 `k, v, wo`; the feed-forward ones are the feed-forward output layers.
use crate::adapter::{Adapter, AdapterInfo};
use crate::error::{PeftError, Result};
use crate::folder::{AdapterFolder, PREFIX};
use crate::methods::{InitContext, Method};
use crate::targets::{select, suffix_match, TargetSpec};
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::{BuildHook, LinearInfo, LinearLayer, ModelConfig, ModelLayout, Role, Weights};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `[ia3]` section of a run file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Ia3Config {
    /// Modules to scale (names by PEFT's suffix rule, or one regular expression); PEFT's default
    /// for the family when absent.
    pub targets: Option<TargetSpec>,
    /// Which of them scale their input; the feed-forward output layers when absent.
    pub feedforward: Option<TargetSpec>,
    /// Module names or regular expressions to leave out.
    pub exclude: Vec<String>,
}

/// PEFT's default targets for a model type (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`).
fn default_targets(config: &ModelConfig) -> Vec<String> {
    let names: &[&str] = match config.model_type() {
        "qwen2" => &["q_proj", "v_proj", "down_proj"],
        "gpt2" => &["c_attn", "mlp.c_proj"],
        "t5" => &["k", "v", "wo"],
        _ => &["k_proj", "v_proj", "down_proj"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// One scaled layer: its path, whether it scales its input, and `l` in PEFT's shape.
#[derive(Clone)]
pub struct Ia3Module {
    pub path: String,
    pub feedforward: bool,
    /// `(1, d_in)` when `feedforward`, `(d_out, 1)` otherwise.
    pub l: Var,
}

/// The (IA)³ vectors of a model.
pub struct Ia3Adapter {
    pub targets: TargetSpec,
    pub feedforward: TargetSpec,
    pub modules: BTreeMap<String, Ia3Module>,
    /// GPT-2's Conv1D layers (PEFT's `fan_in_fan_out`), recorded in the config.
    pub fan_in_fan_out: bool,
}

/// A linear layer with its (IA)³ vector: `x: (b, t, d_in) -> (b, t, d_out)`.
struct Ia3Linear {
    inner: Arc<dyn LinearLayer>,
    feedforward: bool,
    l: Var,
}

impl LinearLayer for Ia3Linear {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let l = self.l.as_tensor().flatten_all()?.to_dtype(x.dtype())?;
        if self.feedforward {
            self.inner.forward_t(&x.broadcast_mul(&l)?, train)
        } else {
            self.inner.forward_t(x, train)?.broadcast_mul(&l)
        }
    }
}

impl BuildHook for Ia3Adapter {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        Ok(match self.modules.get(&info.path) {
            Some(m) => Arc::new(Ia3Linear { inner: layer, feedforward: m.feedforward, l: m.l.clone() }),
            None => layer,
        })
    }
}

/// Whether `path` is one of the feed-forward modules `spec` names.
fn is_feedforward(spec: &TargetSpec, path: &str) -> Result<bool> {
    Ok(match spec {
        TargetSpec::Names(names) => names.iter().any(|n| suffix_match(path, n)),
        TargetSpec::Pattern(p) => crate::targets::full_match(path, p)?,
    })
}

impl Adapter for Ia3Adapter {
    fn method(&self) -> &'static str {
        "ia3"
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.modules.iter().map(|(p, m)| (format!("{p}.ia3_l"), m.l.clone())).collect()
    }
    fn hook(&self) -> &dyn BuildHook {
        self
    }
    fn module_paths(&self) -> Vec<String> {
        self.modules.keys().cloned().collect()
    }
    fn describe(&self) -> String {
        let ff = self.modules.values().filter(|m| m.feedforward).count();
        format!("(IA)³ on {} modules ({ff} scaling their input)", self.modules.len())
    }
    fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        for m in self.modules.values() {
            let key = format!("{}.weight", m.path);
            let w = weights.get_any(&key)?;
            let l = m.l.as_tensor().to_dtype(DType::F32)?;
            // (d_out, d_in) ⊙ (1, d_in) scales columns; ⊙ (d_out, 1) scales rows.
            let merged = w.to_dtype(DType::F32)?.broadcast_mul(&l.to_device(w.device())?)?.to_dtype(w.dtype())?;
            weights.insert(key, merged);
            let bias_key = format!("{}.bias", m.path);
            if !m.feedforward && weights.contains(&bias_key) {
                let b = weights.get_any(&bias_key)?;
                let scaled = (b.to_dtype(DType::F32)? * l.flatten_all()?.to_device(b.device())?)?.to_dtype(b.dtype())?;
                weights.insert(bias_key, scaled);
            }
        }
        Ok(())
    }
    fn config_json(&self, info: &AdapterInfo) -> Value {
        let spec = |s: &TargetSpec| match s {
            TargetSpec::Names(n) => json!(n),
            TargetSpec::Pattern(p) => json!(p),
        };
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": info.base_model,
            "exclude_modules": null,
            "fan_in_fan_out": self.fan_in_fan_out,
            "feedforward_modules": spec(&self.feedforward),
            "inference_mode": true,
            "init_ia3_weights": true,
            "modules_to_save": null,
            "peft_type": "IA3",
            "revision": null,
            "target_modules": spec(&self.targets),
            "task_type": info.task_type,
        })
    }
}

/// The method: `[peft] method = "ia3"` with an `[ia3]` section; PEFT's `peft_type` `IA3`.
pub struct Ia3;

fn settings_of(settings: &toml::Value) -> Result<Ia3Config> {
    settings.clone().try_into().map_err(|e: toml::de::Error| PeftError::Invalid(format!("[ia3]: {}", e.message())))
}

/// The linear layers (no head, no parts of fused projections) `targets` selects.
fn selected<'a>(layout: &'a ModelLayout, targets: &TargetSpec, exclude: &[String]) -> Result<Vec<&'a LinearInfo>> {
    let candidates: Vec<&LinearInfo> = layout.adaptable().filter(|l| l.part_of.is_none()).collect();
    let paths: Vec<&str> = candidates.iter().map(|l| l.path.as_str()).collect();
    let chosen = select(targets, exclude, &paths)?;
    Ok(candidates.into_iter().filter(|l| chosen.contains(&l.path)).collect())
}

impl Method for Ia3 {
    fn name(&self) -> &'static str {
        "ia3"
    }
    fn peft_type(&self) -> &'static str {
        "IA3"
    }
    fn check(&self, settings: &toml::Value) -> Result<()> {
        settings_of(settings).map(|_| ())
    }
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>> {
        let cfg = settings_of(settings)?;
        let targets = cfg.targets.clone().unwrap_or_else(|| TargetSpec::Names(default_targets(ctx.config)));
        let chosen = selected(ctx.layout, &targets, &cfg.exclude)?;
        // The feed-forward output layers, named as PEFT's default names them.
        let feedforward = match cfg.feedforward.clone() {
            Some(f) => f,
            None => {
                let mut leaves: Vec<String> = ctx.layout.adaptable().filter(|l| l.role == Role::FfnDown).map(|l| leaf_after_layer(&l.path)).collect();
                leaves.sort();
                leaves.dedup();
                TargetSpec::Names(leaves)
            }
        };
        let mut modules = BTreeMap::new();
        for l in chosen {
            let ff = is_feedforward(&feedforward, &l.path)?;
            let shape = if ff { (1, l.d_in) } else { (l.d_out, 1) };
            let v = Var::from_tensor(&Tensor::ones(shape, DType::F32, ctx.device)?)?;
            modules.insert(l.path.clone(), Ia3Module { path: l.path.clone(), feedforward: ff, l: v });
        }
        Ok(Box::new(Ia3Adapter { targets, feedforward, modules, fan_in_fan_out: ctx.config.fan_in_fan_out() }))
    }
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, _device: &Device) -> Result<Box<dyn Adapter>> {
        folder.warn_unknown_keys(&["auto_mapping", "base_model_name_or_path", "exclude_modules", "fan_in_fan_out", "feedforward_modules", "inference_mode", "init_ia3_weights", "modules_to_save", "peft_type", "peft_version", "revision", "target_modules", "task_type"]);
        if folder.config.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(folder.invalid("modules_to_save is not supported for IA3 yet"));
        }
        let (targets, feedforward) = (folder.target_spec("target_modules")?, folder.target_spec("feedforward_modules")?);
        let st = folder.weights_path();
        let mut modules = BTreeMap::new();
        for (rest, t) in &folder.tensors {
            let Some(path) = rest.strip_suffix(".ia3_l") else {
                folder.warnings.push(format!("{}: tensor `{PREFIX}{rest}` ignored (not an IA3 vector)", st.display()));
                continue;
            };
            let info = layout.linear(path).filter(|l| l.role != Role::Head && l.part_of.is_none()).ok_or_else(|| PeftError::UnknownModule { file: st.clone(), key: format!("{PREFIX}{rest}"), module: path.to_string() })?;
            let ff = is_feedforward(&feedforward, path)?;
            let want = if ff { vec![1, info.d_in] } else { vec![info.d_out, 1] };
            if t.dims() != want.as_slice() {
                return Err(PeftError::ShapeMismatch { file: st.clone(), key: format!("{PREFIX}{rest}"), module: path.to_string(), expected: want, actual: t.dims().to_vec() });
            }
            modules.insert(path.to_string(), Ia3Module { path: path.to_string(), feedforward: ff, l: Var::from_tensor(t)? });
        }
        if modules.is_empty() {
            return Err(PeftError::InvalidConfig { path: st, reason: "no IA3 vectors found".into() });
        }
        // The vectors are for exactly the modules target_modules (minus exclude_modules) selects.
        let paths: Vec<&str> = layout.adaptable().filter(|l| l.part_of.is_none()).map(|l| l.path.as_str()).collect();
        folder.check_coverage("an IA3 vector", modules.keys(), &paths)?;
        let fan_in_fan_out = folder.config.get("fan_in_fan_out").and_then(Value::as_bool).unwrap_or(false);
        Ok(Box::new(Ia3Adapter { targets, feedforward, modules, fan_in_fan_out }))
    }
}

/// The module name after the layer index (`model.layers.3.mlp.down_proj` → `down_proj`;
/// GPT-2's `transformer.h.0.mlp.c_proj` → `mlp.c_proj`, to tell it from `attn.c_proj`).
fn leaf_after_layer(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.iter().rposition(|p| p.chars().all(|c| c.is_ascii_digit())) {
        Some(i) if parts.len() - i > 2 && parts[parts.len() - 1] == "c_proj" => parts[parts.len() - 2..].join("."),
        _ => parts.last().copied().unwrap_or(path).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::leaf_after_layer;

    #[test]
    fn feed_forward_leaves_are_named_as_peft_names_them() {
        assert_eq!(leaf_after_layer("model.layers.3.mlp.down_proj"), "down_proj");
        assert_eq!(leaf_after_layer("transformer.h.0.mlp.c_proj"), "mlp.c_proj");
        assert_eq!(leaf_after_layer("decoder.block.1.layer.2.DenseReluDense.wo"), "wo");
    }
}
