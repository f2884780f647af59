//! Bias tuning (BitFit), in PEFT's BEFT form (`BeftConfig`, `peft_type` `BEFT`): a bias vector
//! per targeted linear layer, zero at start and added to the layer's output, is all that trains.
//! On a layer with a bias of its own (Qwen2's q/k/v, GPT-2's) it learns the change of that bias,
//! so training it is training the bias, and it merges into it; on a layer without one (SmolLM2,
//! T5) PEFT cannot merge it either, and neither does lowrank. PEFT's per-family default targets:
//! Llama and Qwen2 `v_proj`, GPT-2 `mlp.c_proj`, T5 `v`.
use crate::adapter::{Adapter, AdapterInfo};
use crate::error::{PeftError, Result};
use crate::folder::{AdapterFolder, PREFIX};
use crate::methods::{InitContext, Method};
use crate::targets::{select, TargetSpec};
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::{BuildHook, LinearInfo, LinearLayer, ModelConfig, ModelLayout, Role, Weights};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `[bitfit]` section of a run file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BitFitConfig {
    /// Linear layers whose bias trains (names by PEFT's suffix rule, one regular expression, or
    /// "all-linear"); PEFT's default for the family when absent.
    pub targets: Option<TargetSpec>,
    pub exclude: Vec<String>,
}

fn default_targets(config: &ModelConfig) -> Vec<String> {
    let names: &[&str] = match config.model_type() {
        "gpt2" => &["mlp.c_proj"],
        "t5" => &["v"],
        _ => &["v_proj"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// One trained bias: `(1, d_out)` as PEFT stores it.
#[derive(Clone)]
pub struct TrainedBias {
    pub path: String,
    pub bias: Var,
}

pub struct BitFitAdapter {
    pub targets: TargetSpec,
    pub modules: BTreeMap<String, TrainedBias>,
}

/// A linear layer plus its trained bias: `x: (b, t, d_in) -> (b, t, d_out)`.
struct BiasedLinear {
    inner: Arc<dyn LinearLayer>,
    bias: Var,
}

impl LinearLayer for BiasedLinear {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.inner.forward_t(x, train)?;
        y.broadcast_add(&self.bias.as_tensor().flatten_all()?.to_dtype(y.dtype())?)
    }
}

impl BuildHook for BitFitAdapter {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        Ok(match self.modules.get(&info.path) {
            Some(m) => Arc::new(BiasedLinear { inner: layer, bias: m.bias.clone() }),
            None => layer,
        })
    }
}

impl Adapter for BitFitAdapter {
    fn method(&self) -> &'static str {
        "bitfit"
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.modules.iter().map(|(p, m)| (format!("{p}.beft_bias"), m.bias.clone())).collect()
    }
    fn hook(&self) -> &dyn BuildHook {
        self
    }
    fn module_paths(&self) -> Vec<String> {
        self.modules.keys().cloned().collect()
    }
    fn describe(&self) -> String {
        format!("bias tuning (BitFit, as PEFT's BEFT) on {} modules", self.modules.len())
    }
    fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        if let Some(m) = self.modules.values().find(|m| !weights.contains(&format!("{}.bias", m.path))) {
            return Err(PeftError::NotMergeable {
                method: "bias tuning".into(),
                reason: format!("`{}` has no bias of its own to merge into (PEFT refuses this too); use the adapter unmerged", m.path),
            });
        }
        for m in self.modules.values() {
            let key = format!("{}.bias", m.path);
            let b = weights.get_any(&key)?;
            let merged = (b.to_dtype(DType::F32)? + m.bias.as_tensor().flatten_all()?.to_device(b.device())?)?.to_dtype(b.dtype())?;
            weights.insert(key, merged);
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
            "inference_mode": true,
            "init_weights": true,
            "modules_to_save": null,
            "peft_type": "BEFT",
            "revision": null,
            "target_modules": targets,
            "task_type": info.task_type,
        })
    }
}

/// The method: `[peft] method = "bitfit"` with a `[bitfit]` section; `peft_type` `BEFT`.
pub struct BitFit;

fn settings_of(settings: &toml::Value) -> Result<BitFitConfig> {
    settings.clone().try_into().map_err(|e: toml::de::Error| PeftError::Invalid(format!("[bitfit]: {}", e.message())))
}

impl Method for BitFit {
    fn name(&self) -> &'static str {
        "bitfit"
    }
    fn peft_type(&self) -> &'static str {
        "BEFT"
    }
    fn check(&self, settings: &toml::Value) -> Result<()> {
        settings_of(settings).map(|_| ())
    }
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>> {
        let cfg = settings_of(settings)?;
        if ctx.config.fan_in_fan_out() {
            return Err(PeftError::Invalid(
                "bias tuning in PEFT's BEFT form takes nn.Linear layers only, and GPT-2's are Conv1D (PEFT refuses them too); train GPT-2's norms with ln_tuning, or use LoRA".into(),
            ));
        }
        let targets = cfg.targets.clone().unwrap_or_else(|| TargetSpec::Names(default_targets(ctx.config)));
        let candidates: Vec<&LinearInfo> = ctx.layout.adaptable().filter(|l| l.part_of.is_none()).collect();
        let paths: Vec<&str> = candidates.iter().map(|l| l.path.as_str()).collect();
        let chosen = select(&targets, &cfg.exclude, &paths)?;
        let mut modules = BTreeMap::new();
        for l in candidates.into_iter().filter(|l| chosen.contains(&l.path)) {
            let bias = Var::zeros((1, l.d_out), DType::F32, ctx.device)?;
            modules.insert(l.path.clone(), TrainedBias { path: l.path.clone(), bias });
        }
        Ok(Box::new(BitFitAdapter { targets, modules }))
    }
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, _device: &Device) -> Result<Box<dyn Adapter>> {
        folder.warn_unknown_keys(&["auto_mapping", "base_model_name_or_path", "exclude_modules", "inference_mode", "init_weights", "modules_to_save", "peft_type", "peft_version", "revision", "target_modules", "task_type"]);
        if folder.config.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(folder.invalid("modules_to_save is not supported for BEFT yet"));
        }
        let targets = folder.target_spec("target_modules")?;
        let st = folder.weights_path();
        let mut modules = BTreeMap::new();
        for (rest, t) in &folder.tensors {
            let key = format!("{PREFIX}{rest}");
            let Some(path) = rest.strip_suffix(".beft_bias") else {
                folder.warnings.push(format!("{}: tensor `{key}` ignored (not a BEFT bias)", st.display()));
                continue;
            };
            let info = layout.linear(path).filter(|l| l.role != Role::Head && l.part_of.is_none()).ok_or_else(|| PeftError::UnknownModule { file: st.clone(), key: key.clone(), module: path.to_string() })?;
            if t.dims() != [1, info.d_out] {
                return Err(PeftError::ShapeMismatch { file: st.clone(), key, module: path.to_string(), expected: vec![1, info.d_out], actual: t.dims().to_vec() });
            }
            modules.insert(path.to_string(), TrainedBias { path: path.to_string(), bias: Var::from_tensor(t)? });
        }
        if modules.is_empty() {
            return Err(PeftError::InvalidConfig { path: st, reason: "no BEFT biases found".into() });
        }
        let paths: Vec<&str> = layout.adaptable().filter(|l| l.part_of.is_none()).map(|l| l.path.as_str()).collect();
        folder.check_coverage("a BEFT bias", modules.keys(), &paths)?;
        Ok(Box::new(BitFitAdapter { targets, modules }))
    }
}
