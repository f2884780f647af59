//! What a LoRA adapter trains besides its factors, as PEFT's `LoraConfig` has it:
//! `bias = "all"` (every bias of the model: linear layers' and LayerNorms'), `"lora_only"` (the
//! biases of the adapted layers), and `modules_to_save` (whole linear layers or norms, trained
//! as copies). PEFT's keys: `<path>.base_layer.bias` for an adapted layer's bias, `<path>.bias`
//! for any other, `<path>.weight` / `<path>.bias` for a saved module.
use crate::error::{PeftError, Result};
use crate::targets::suffix_match;
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::{BaseNorm, LinearLayer, ModelLayout, NormKind, NormLayer, Role, Weights};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A module trained as a whole copy.
#[derive(Clone)]
pub struct SavedModule {
    pub weight: Var,
    pub bias: Option<Var>,
    /// `Some` for a norm (its kind and epsilon are the base's), `None` for a linear layer.
    pub norm: Option<NormKind>,
}

/// The trained biases and whole modules of a LoRA adapter, by module path.
#[derive(Clone, Default)]
pub struct ExtraParams {
    pub biases: BTreeMap<String, Var>,
    pub saved: BTreeMap<String, SavedModule>,
}

fn copy(weights: &Weights, key: &str, shape: &[usize], device: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&weights.get(key, shape)?.to_dtype(DType::F32)?.contiguous()?.to_device(device)?)?)
}

impl ExtraParams {
    /// The parameters `bias` and `modules_to_save` ask for, started from the base's values;
    /// `adapted`: the module paths with LoRA factors.
    pub fn init(bias: &str, modules_to_save: &[String], adapted: &[&str], layout: &ModelLayout, weights: &Weights, device: &Device) -> Result<Self> {
        let mut out = ExtraParams::default();
        for name in modules_to_save {
            let mut found = false;
            for l in layout.linears.iter().filter(|l| l.part_of.is_none() && suffix_match(&l.path, name)) {
                if l.role == Role::Head {
                    return Err(PeftError::Invalid(format!("modules_to_save `{name}`: the output head is not supported yet (lowrank trains it through the loss directly)")));
                }
                if adapted.contains(&l.path.as_str()) {
                    return Err(PeftError::Invalid(format!("`{}` is both a LoRA target and in modules_to_save", l.path)));
                }
                let weight = copy(weights, &format!("{}.weight", l.path), &[l.d_out, l.d_in], device)?;
                let b = if l.bias { Some(copy(weights, &format!("{}.bias", l.path), &[l.d_out], device)?) } else { None };
                out.saved.insert(l.path.clone(), SavedModule { weight, bias: b, norm: None });
                found = true;
            }
            for n in layout.norms.iter().filter(|n| suffix_match(&n.path, name)) {
                let weight = copy(weights, &format!("{}.weight", n.path), &[n.dim], device)?;
                let b = if n.kind == NormKind::Layer { Some(copy(weights, &format!("{}.bias", n.path), &[n.dim], device)?) } else { None };
                out.saved.insert(n.path.clone(), SavedModule { weight, bias: b, norm: Some(n.kind) });
                found = true;
            }
            if !found {
                return Err(PeftError::Invalid(format!("modules_to_save `{name}` matches no linear layer or norm of the model (embeddings are not supported yet)")));
            }
        }
        match bias {
            "none" => {}
            "all" | "lora_only" => {
                for l in layout.linears.iter().filter(|l| l.bias && l.part_of.is_none() && l.role != Role::Head && !out.saved.contains_key(&l.path)) {
                    if bias == "all" || adapted.contains(&l.path.as_str()) {
                        out.biases.insert(l.path.clone(), copy(weights, &format!("{}.bias", l.path), &[l.d_out], device)?);
                    }
                }
                if bias == "all" {
                    for n in layout.norms.iter().filter(|n| n.kind == NormKind::Layer && !out.saved.contains_key(&n.path)) {
                        out.biases.insert(n.path.clone(), copy(weights, &format!("{}.bias", n.path), &[n.dim], device)?);
                    }
                }
            }
            other => return Err(PeftError::Invalid(format!("bias = \"{other}\" (none, all, lora_only)"))),
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.biases.is_empty() && self.saved.is_empty()
    }

    /// `(PEFT key without prefix, var)`; `adapted`: the paths with LoRA factors.
    pub fn named_vars(&self, adapted: &dyn Fn(&str) -> bool) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (p, v) in &self.biases {
            let key = if adapted(p) { format!("{p}.base_layer.bias") } else { format!("{p}.bias") };
            out.push((key, v.clone()));
        }
        for (p, m) in &self.saved {
            out.push((format!("{p}.weight"), m.weight.clone()));
            if let Some(b) = &m.bias {
                out.push((format!("{p}.bias"), b.clone()));
            }
        }
        out
    }

    /// The layer for `path` with its trained bias or as its trained copy; `layer` otherwise.
    pub fn linear(&self, path: &str, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        if let Some(m) = self.saved.get(path) {
            return Ok(Arc::new(TrainedLinear { weight: m.weight.clone(), bias: m.bias.clone() }));
        }
        match (self.biases.get(path), layer.as_frozen()) {
            (Some(b), Some(base)) => Ok(Arc::new(lowrank_models::BaseLinear { path: base.path.clone(), weight: base.weight.clone(), bias: Some(b.as_tensor().clone()) })),
            (Some(_), None) => Err(lowrank_models::ModelError::Invalid(format!("the bias of `{path}` cannot train: another hook replaced the layer"))),
            (None, _) => Ok(layer),
        }
    }

    /// The norm at `path` with its trained bias or as its trained copy; `layer` otherwise.
    pub fn norm(&self, path: &str, layer: Arc<dyn NormLayer>) -> lowrank_models::Result<Arc<dyn NormLayer>> {
        let base = match layer.as_base() {
            Some(b) => b.clone(),
            None if self.saved.contains_key(path) || self.biases.contains_key(path) => {
                return Err(lowrank_models::ModelError::Invalid(format!("the norm `{path}` cannot train: another hook replaced it")))
            }
            None => return Ok(layer),
        };
        if let Some(m) = self.saved.get(path) {
            return Ok(Arc::new(BaseNorm { kind: base.kind, weight: m.weight.as_tensor().clone(), bias: m.bias.as_ref().map(|b| b.as_tensor().clone()), eps: base.eps }));
        }
        match self.biases.get(path) {
            Some(b) => Ok(Arc::new(BaseNorm { bias: Some(b.as_tensor().clone()), ..base })),
            None => Ok(layer),
        }
    }

    /// Writes the trained values over the base ones.
    pub fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        let mut put = |key: String, v: &Var| -> Result<()> {
            let dtype = weights.get_any(&key)?.dtype();
            weights.insert(key, v.as_tensor().to_dtype(dtype)?);
            Ok(())
        };
        for (p, v) in &self.biases {
            put(format!("{p}.bias"), v)?;
        }
        for (p, m) in &self.saved {
            put(format!("{p}.weight"), &m.weight)?;
            if let Some(b) = &m.bias {
                put(format!("{p}.bias"), b)?;
            }
        }
        Ok(())
    }

    /// The parameters of a PEFT folder's non-LoRA tensors (`rest` keys without prefix), checked
    /// against the layout.
    pub fn from_tensors(tensors: &BTreeMap<String, Tensor>, layout: &ModelLayout, file: &std::path::Path) -> Result<Self> {
        let mut out = ExtraParams::default();
        let shape_err = |key: &str, module: &str, expected: Vec<usize>, t: &Tensor| PeftError::ShapeMismatch { file: file.to_path_buf(), key: key.to_string(), module: module.to_string(), expected, actual: t.dims().to_vec() };
        let mut saved_w: BTreeMap<String, Var> = BTreeMap::new();
        let mut saved_b: BTreeMap<String, Var> = BTreeMap::new();
        for (key, t) in tensors {
            if key.contains(".lora_") {
                continue;
            }
            let full = format!("{}{key}", crate::folder::PREFIX);
            if let Some(p) = key.strip_suffix(".base_layer.bias") {
                let l = layout.linear(p).ok_or_else(|| PeftError::UnknownModule { file: file.to_path_buf(), key: full.clone(), module: p.into() })?;
                if t.dims() != [l.d_out] {
                    return Err(shape_err(&full, p, vec![l.d_out], t));
                }
                out.biases.insert(p.to_string(), Var::from_tensor(t)?);
            } else if let Some(p) = key.strip_suffix(".bias") {
                saved_b.insert(p.to_string(), Var::from_tensor(t)?);
            } else if let Some(p) = key.strip_suffix(".weight") {
                saved_w.insert(p.to_string(), Var::from_tensor(t)?);
            } else {
                return Err(PeftError::UnknownModule { file: file.to_path_buf(), key: full, module: key.clone() });
            }
        }
        for (p, weight) in saved_w {
            let bias = saved_b.remove(&p);
            let norm = match (layout.linear(&p), layout.norm(&p)) {
                (Some(l), _) => {
                    if weight.dims() != [l.d_out, l.d_in] {
                        return Err(shape_err(&format!("{p}.weight"), &p, vec![l.d_out, l.d_in], weight.as_tensor()));
                    }
                    None
                }
                (None, Some(n)) => {
                    if weight.dims() != [n.dim] {
                        return Err(shape_err(&format!("{p}.weight"), &p, vec![n.dim], weight.as_tensor()));
                    }
                    Some(n.kind)
                }
                (None, None) => return Err(PeftError::UnknownModule { file: file.to_path_buf(), key: format!("{p}.weight"), module: p }),
            };
            out.saved.insert(p, SavedModule { weight, bias, norm });
        }
        // A bias on its own: the bias = "all" of a layer or LayerNorm that is not adapted.
        for (p, b) in saved_b {
            let dim = layout.linear(&p).map(|l| l.d_out).or_else(|| layout.norm(&p).map(|n| n.dim)).ok_or_else(|| PeftError::UnknownModule { file: file.to_path_buf(), key: format!("{p}.bias"), module: p.clone() })?;
            if b.dims() != [dim] {
                return Err(shape_err(&format!("{p}.bias"), &p, vec![dim], b.as_tensor()));
            }
            out.biases.insert(p, b);
        }
        Ok(out)
    }
}

/// A linear layer trained whole (modules_to_save): `x: (..., d_in) -> (..., d_out)`.
struct TrainedLinear {
    weight: Var,
    bias: Option<Var>,
}

impl LinearLayer for TrainedLinear {
    fn forward_t(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.as_tensor().to_dtype(x.dtype())?.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}
