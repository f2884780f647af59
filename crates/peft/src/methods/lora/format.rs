//! LoRA's adapter folder as Hugging Face PEFT writes it: `adapter_config.json` with
//! `peft_type: "LORA"` and keys `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight`.
use super::parts::{export_fused, group_parts, part_of, PART_NAMES};
use super::{LoraAdapters, LoraConfig, LoraModule};
use crate::adapter::AdapterInfo;
use crate::dropout::DropoutRng;
use crate::error::{PeftError, Result};
use crate::folder::{write_folder, AdapterFolder, PREFIX};
use crate::targets::TargetSpec;
use candle_core::{DType, Device, Var};
use lowrank_models::ModelLayout;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Keys PEFT writes in a LoRA `adapter_config.json`; others are reported as warnings.
const KNOWN_KEYS: &[&str] = &[
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "corda_config", "eva_config",
    "exclude_modules", "fan_in_fan_out", "inference_mode", "init_lora_weights", "layer_replication",
    "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", "lora_bias", "lora_dropout",
    "megatron_config", "megatron_core", "modules_to_save", "peft_type", "peft_version", "qalora_group_size",
    "r", "rank_pattern", "revision", "target_modules", "target_parameters", "task_type",
    "trainable_token_indices", "use_dora", "use_qalora", "use_rslora", "alora_invocation_tokens",
    "arrow_config", "ensure_weight_tying", "kasa_config", "lora_ga_config", "monteclora_config",
    "use_bdlora", "velora_config",
];

fn leaves<'a>(paths: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut leaves: Vec<String> = paths.map(|p| p.rsplit('.').next().unwrap_or(p).to_string()).collect();
    leaves.sort();
    leaves.dedup();
    leaves
}

/// `adapter_config.json` for `adapters` (as they are, parts of fused layers included).
pub fn adapter_config_json(adapters: &LoraAdapters, info: &AdapterInfo) -> Value {
    let c = &adapters.config;
    let target_modules = match &c.targets {
        TargetSpec::Names(n) => json!(n),
        // PEFT records the resolved leaf names.
        TargetSpec::Pattern(p) if p == "all-linear" => json!(leaves(adapters.modules.keys())),
        TargetSpec::Pattern(p) => json!(p),
    };
    json!({
        "alpha_pattern": c.alpha_pattern,
        "auto_mapping": null,
        "base_model_name_or_path": info.base_model,
        "bias": c.bias,
        "exclude_modules": if c.exclude.is_empty() { Value::Null } else { json!(c.exclude) },
        "fan_in_fan_out": info.fan_in_fan_out,
        "inference_mode": true,
        "init_lora_weights": c.init_lora_weights,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "modules_to_save": if c.modules_to_save.is_empty() { Value::Null } else { json!(c.modules_to_save) },
        "peft_type": "LORA",
        "r": c.r,
        "rank_pattern": c.rank_pattern,
        "revision": null,
        "target_modules": target_modules,
        "task_type": info.task_type,
        "use_dora": c.use_dora,
        "use_rslora": c.use_rslora,
    })
}

/// Writes the adapter as lowrank holds it (each file atomically): parts of fused layers keep
/// their own factors (`…c_attn.q.lora_A.weight`). Checkpoints use this form; lowrank reads it
/// back exactly. Without parts it is the same as [`save_adapter`].
pub fn save_lora_native(dir: &Path, adapters: &LoraAdapters, info: &AdapterInfo) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (name, var) in adapters.named_vars() {
        tensors.insert(format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?);
    }
    write_folder(dir, tensors, &adapter_config_json(adapters, info))
}

/// Writes the adapter folder in the form Hugging Face PEFT (and vLLM, mistral.rs) load. LoRA on
/// parts of a fused layer (GPT-2's q and v inside `c_attn`) is written as the equivalent LoRA of
/// rank `Σ r` on the fused layer, B zero in the rows of the parts left out, with `rank_pattern`
/// and `alpha_pattern` entries for it: the same function, loadable everywhere.
pub fn save_lora(dir: &Path, adapters: &LoraAdapters, info: &AdapterInfo) -> Result<()> {
    let groups = group_parts(&adapters.modules);
    if groups.is_empty() {
        return save_lora_native(dir, adapters, info);
    }
    let c = &adapters.config;
    let mut tensors = BTreeMap::new();
    let mut fused_ranks: Vec<(usize, f64)> = Vec::new();
    for (p, m) in &adapters.modules {
        if m.part.is_some() || groups.contains_key(p) {
            continue;
        }
        tensors.insert(format!("{PREFIX}{p}.lora_A.weight"), m.a.as_tensor().to_dtype(DType::F32)?);
        tensors.insert(format!("{PREFIX}{p}.lora_B.weight"), m.b.as_tensor().to_dtype(DType::F32)?);
    }
    for (parent, parts) in &groups {
        let full = adapters.modules.get(parent);
        let d_out = full.map(|m| m.d_out()).unwrap_or_else(|| parts.iter().map(|(m, _)| m.d_out()).max().unwrap_or(0) * PART_NAMES.len());
        let e = export_fused(full, parts, d_out, c.use_rslora)?;
        tensors.insert(format!("{PREFIX}{parent}.lora_A.weight"), e.a);
        tensors.insert(format!("{PREFIX}{parent}.lora_B.weight"), e.b);
        fused_ranks.push((e.r, e.alpha));
    }
    for (name, var) in adapters.extra.named_vars(&|p| adapters.is_adapted(p)) {
        tensors.insert(format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?);
    }
    let (r0, a0) = fused_ranks[0];
    if fused_ranks.iter().any(|&(r, a)| r != r0 || (a - a0).abs() > 1e-12 * a0.abs().max(1.0)) {
        return Err(PeftError::Invalid("the fused layers' parts differ in rank or alpha from layer to layer: PEFT's format cannot express that; use one rank and alpha for all".into()));
    }
    let mut cfg = adapter_config_json(adapters, info);
    let fused_leaves = leaves(groups.keys());
    let other_paths: Vec<&String> = adapters.modules.iter().filter(|(p, m)| m.part.is_none() && !groups.contains_key(*p)).map(|(p, _)| p).collect();
    let mut targets = fused_leaves.clone();
    targets.extend(leaves(other_paths.into_iter()));
    targets.sort();
    targets.dedup();
    cfg["target_modules"] = json!(targets);
    for leaf in &fused_leaves {
        cfg["rank_pattern"][leaf] = json!(r0);
        cfg["alpha_pattern"][leaf] = json!(a0);
    }
    write_folder(dir, tensors, &cfg)
}

/// Reads a LoRA `adapter_config.json` (already parsed in `folder`) into a [`LoraConfig`].
pub fn config_from_folder(folder: &mut AdapterFolder) -> Result<LoraConfig> {
    folder.warn_unknown_keys(KNOWN_KEYS);
    let v = folder.config.clone();
    let bad = |key: &str, what: &str| folder.invalid(format!("`{key}` must be {what}"));
    let r = folder.required("r")?.as_u64().filter(|&r| r > 0).ok_or_else(|| bad("r", "a positive integer"))? as usize;
    let alpha = folder.required("lora_alpha")?.as_f64().ok_or_else(|| bad("lora_alpha", "a number"))?;
    let targets = match folder.required("target_modules")? {
        Value::String(s) => TargetSpec::Pattern(s.clone()),
        Value::Array(a) => TargetSpec::Names(a.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| bad("target_modules", "a list of names or a string"))).collect::<Result<_>>()?),
        _ => return Err(bad("target_modules", "a list of names or a string")),
    };
    if let Some(init) = v.get("init_lora_weights").filter(|x| !x.is_null()) {
        let parsed: super::init::InitLoraWeights = serde_json::from_value(init.clone()).map_err(|_| bad("init_lora_weights", "true, false or a name"))?;
        if parsed.mutates_base() {
            return Err(folder.invalid(format!(
                "init_lora_weights = {init}: this is PiSSA/OLoRA's own form, which works only over its residual base; save it with path_initial_model_for_weight_conversion (lowrank's adapter/ folders are converted so)"
            )));
        }
    }
    // Keys that change what the adapter computes: honoured above or refused by name.
    if let Some(b) = v.get("bias").and_then(Value::as_str).filter(|b| !matches!(*b, "none" | "all" | "lora_only")) {
        return Err(bad("bias", &format!("\"none\", \"all\" or \"lora_only\" (got \"{b}\")")));
    }
    for key in ["layers_to_transform", "layers_pattern", "layer_replication", "target_parameters", "trainable_token_indices", "loftq_config", "eva_config", "corda_config"] {
        let set = v.get(key).is_some_and(|x| !(x.is_null() || x.as_object().is_some_and(|o| o.is_empty())));
        if set {
            return Err(folder.invalid(format!("`{key}` is set, which lowrank does not support yet")));
        }
    }
    for key in ["lora_bias", "use_qalora", "use_bdlora"] {
        if v.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(folder.invalid(format!("`{key}: true` is not supported yet")));
        }
    }
    // Every key that changes the computation has the type PEFT gives it, or the folder is
    // refused naming the key (never read as if it were absent).
    let present = |key: &str| v.get(key).filter(|x| !x.is_null());
    let map_usize = |key: &str| -> Result<BTreeMap<String, usize>> {
        match present(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(o)) => o.iter().map(|(k, x)| x.as_u64().filter(|&n| n > 0).map(|n| (k.clone(), n as usize)).ok_or_else(|| bad(key, &format!("a map to positive integers (`{k}`: {x})")))).collect(),
            Some(_) => Err(bad(key, "a map from module patterns to ranks")),
        }
    };
    let map_f64 = |key: &str| -> Result<BTreeMap<String, f64>> {
        match present(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(o)) => o.iter().map(|(k, x)| x.as_f64().filter(|a| a.is_finite()).map(|n| (k.clone(), n)).ok_or_else(|| bad(key, &format!("a map to numbers (`{k}`: {x})")))).collect(),
            Some(_) => Err(bad(key, "a map from module patterns to numbers")),
        }
    };
    let flag = |key: &str| -> Result<bool> {
        match present(key) {
            None => Ok(false),
            Some(x) => x.as_bool().ok_or_else(|| bad(key, "true or false")),
        }
    };
    let names = |key: &str| -> Result<Vec<String>> {
        match present(key) {
            None => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| bad(key, "a list of names"))).collect(),
            Some(_) => Err(bad(key, "a name or a list of names")),
        }
    };
    let dropout = match present("lora_dropout") {
        None => 0.0,
        Some(x) => x.as_f64().filter(|d| (0.0..1.0).contains(d)).ok_or_else(|| bad("lora_dropout", &format!("a number in [0, 1) (got {x})")))?,
    };
    if !alpha.is_finite() {
        return Err(bad("lora_alpha", "a finite number"));
    }
    let bias = match present("bias") {
        None => "none".to_string(),
        Some(x) => x.as_str().map(String::from).ok_or_else(|| bad("bias", "\"none\", \"all\" or \"lora_only\""))?,
    };
    Ok(LoraConfig {
        r,
        alpha,
        dropout,
        targets,
        exclude: names("exclude_modules")?,
        use_rslora: flag("use_rslora")?,
        rank_pattern: map_usize("rank_pattern")?,
        alpha_pattern: map_f64("alpha_pattern")?,
        init_seed: 0,
        use_dora: flag("use_dora")?,
        loraplus_lr_ratio: 1.0,
        init_lora_weights: super::init::InitLoraWeights::Flag(true),
        bias,
        modules_to_save: names("modules_to_save")?,
    })
}

/// The LoRA adapter of a PEFT folder for a model of `layout`: every tensor's module must exist
/// and its shape must fit.
pub fn lora_from_folder(folder: &mut AdapterFolder, layout: &ModelLayout, _device: &Device) -> Result<LoraAdapters> {
    let config = config_from_folder(folder)?;
    let st_path = folder.weights_path();
    let linear_modules = layout.linear_modules();
    let shapes: BTreeMap<&str, (usize, usize)> = linear_modules.iter().map(|(p, i, o)| (p.as_str(), (*i, *o))).collect();
    let paths: Vec<&str> = linear_modules.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut a_map = BTreeMap::new();
    let mut b_map = BTreeMap::new();
    let mut magnitudes = BTreeMap::new();
    for (rest, t) in &folder.tensors {
        let key = format!("{PREFIX}{rest}");
        if let Some(m) = rest.strip_suffix(".lora_magnitude_vector") {
            if !config.use_dora {
                return Err(folder.invalid(format!("tensor `{key}` is a DoRA magnitude, but use_dora is not true")));
            }
            magnitudes.insert(m.to_string(), (key, t.clone()));
            continue;
        }
        let (module, is_a) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m.to_string(), true)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m.to_string(), false)
        } else {
            // A bias or a saved module (see extra_params), read below.
            continue;
        };
        if !shapes.contains_key(module.as_str()) {
            return Err(PeftError::UnknownModule { file: st_path.clone(), key, module });
        }
        if is_a { a_map.insert(module, (key, t.clone())) } else { b_map.insert(module, (key, t.clone())) };
    }
    let mut modules = BTreeMap::new();
    for (module, (a_key, a)) in a_map {
        let (d_in, d_out) = shapes[module.as_str()];
        let (b_key, b) = b_map.remove(&module).ok_or_else(|| PeftError::MissingTensor { file: st_path.clone(), key: format!("{PREFIX}{module}.lora_B.weight") })?;
        let a_dims = a.dims().to_vec();
        if a_dims.len() != 2 || a_dims[1] != d_in {
            return Err(PeftError::ShapeMismatch { file: st_path.clone(), key: a_key, module, expected: vec![a_dims.first().copied().unwrap_or(0), d_in], actual: a_dims });
        }
        let r = a_dims[0];
        if b.dims() != [d_out, r] {
            return Err(PeftError::ShapeMismatch { file: st_path.clone(), key: b_key, module, expected: vec![d_out, r], actual: b.dims().to_vec() });
        }
        let (config_r, alpha) = config.rank_alpha(&module)?;
        if r != config_r {
            return Err(folder.invalid(format!("tensor `{a_key}` has rank {r}, but the config gives `{module}` r = {config_r} (r or rank_pattern disagrees with the tensors)")));
        }
        let scale = config.scale(r, alpha);
        let part = part_of(&module, &paths);
        let magnitude = match (config.use_dora, magnitudes.remove(&module)) {
            (true, Some((m_key, m))) => {
                if m.dims() != [d_out] {
                    return Err(PeftError::ShapeMismatch { file: st_path.clone(), key: m_key, module, expected: vec![d_out], actual: m.dims().to_vec() });
                }
                Some(Var::from_tensor(&m)?)
            }
            (true, None) => return Err(PeftError::MissingTensor { file: st_path.clone(), key: format!("{PREFIX}{module}.lora_magnitude_vector") }),
            (false, _) => None,
        };
        modules.insert(module.clone(), LoraModule { path: module, a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, r, alpha, scale, part, magnitude });
    }
    if let Some((module, (key, _))) = magnitudes.into_iter().next() {
        return Err(PeftError::UnknownModule { file: st_path.clone(), key, module });
    }
    if let Some((_, (key, _))) = b_map.into_iter().next() {
        return Err(PeftError::MissingTensor { file: st_path.clone(), key: key.replace(".lora_B.", ".lora_A.") });
    }
    if modules.is_empty() {
        return Err(PeftError::InvalidConfig { path: st_path, reason: "no LoRA tensors found".into() });
    }
    // The tensors are for exactly the modules target_modules (minus exclude_modules) selects:
    // PEFT would build no layer for any other.
    let selected = crate::targets::select(&config.targets, &config.exclude, &paths).map_err(|e| folder.invalid(format!("target_modules: {e}")))?;
    if let Some(m) = modules.keys().find(|m| !selected.contains(m)) {
        let spec = folder.config.get("target_modules").map(Value::to_string).unwrap_or_default();
        let minus = if config.exclude.is_empty() { "" } else { " minus exclude_modules" };
        return Err(folder.invalid(format!("the folder holds LoRA tensors for `{m}`, which target_modules = {spec}{minus} does not select")));
    }
    let extra = super::extra_params::ExtraParams::from_tensors(&folder.tensors, layout, &st_path)?;
    // Every trained bias and module must be one the config asks for.
    if config.bias == "none" && !extra.biases.is_empty() {
        let p = extra.biases.keys().next().cloned().unwrap_or_default();
        return Err(folder.invalid(format!("the folder holds the bias of `{p}`, but bias = \"none\"")));
    }
    if let Some(p) = extra.saved.keys().find(|p| !config.modules_to_save.iter().any(|n| crate::targets::suffix_match(p, n))) {
        return Err(folder.invalid(format!("the folder holds the weight of `{p}`, which modules_to_save does not name")));
    }
    Ok(LoraAdapters { config, modules, dropout_rng: DropoutRng::new(0), mutated: BTreeMap::new(), extra })
}

/// A LoRA folder read as LoRA (tests and tools that need LoRA's own types).
pub struct LoadedLora {
    pub adapters: LoraAdapters,
    pub warnings: Vec<String>,
    pub task_type: Option<String>,
}

/// Reads the LoRA adapter folder `dir` for a model of `layout`.
pub fn load_lora(dir: &Path, layout: &ModelLayout, device: &Device) -> Result<LoadedLora> {
    let mut folder = AdapterFolder::read(dir, device)?;
    let peft_type = folder.required("peft_type")?.as_str().unwrap_or_default().to_string();
    if peft_type != "LORA" {
        return Err(folder.invalid(format!("peft_type `{peft_type}` is not LORA")));
    }
    let adapters = lora_from_folder(&mut folder, layout, device)?;
    let task_type = folder.config.get("task_type").and_then(Value::as_str).map(String::from);
    Ok(LoadedLora { adapters, warnings: folder.warnings, task_type })
}
