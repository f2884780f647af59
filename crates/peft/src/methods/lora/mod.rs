//! LoRA: `y = W x + b + s · B A dropout(x)` with `A: (r, d_in)`, `B: (d_out, r)`,
//! `s = alpha / r` (rsLoRA: `alpha / sqrt(r)`). A is kaiming-uniform, B zero: a no-op at start.
//! The method's parts: this file (settings, the trainable factors, the layer and its build hook,
//! the adapter contract), [`fused_op`] (the fused CPU/GPU layer), [`parts`] (q and v inside
//! GPT-2's fused `c_attn`) and [`format`] (PEFT's folder).
pub mod dora;
pub mod extra_params;
pub mod format;
pub mod fused_op;
pub mod init;
pub mod parts;

use crate::adapter::{Adapter, AdapterInfo};
use crate::dropout::{fnv1a, DropoutRng};
use crate::error::{PeftError, Result};
use crate::folder::AdapterFolder;
use crate::methods::{InitContext, Method};
use crate::targets::{pattern_match, select, TargetSpec};
use candle_core::{DType, Device, Tensor, Var};
use lowrank_models::generate::SplitMix64;
use lowrank_models::{BuildHook, LinearInfo, LinearLayer, ModelLayout, Weights};
use parts::{part_of, parts_layer, parts_of};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// LoRA hyper-parameters (the `[lora]` section of a run file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `["q_proj", "v_proj"]`, `"all-linear"`, or a regular expression over module paths.
    pub targets: TargetSpec,
    /// Module names or regular expressions to leave out.
    pub exclude: Vec<String>,
    pub use_rslora: bool,
    /// Per-module rank: pattern → r (PEFT's `rank_pattern`).
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha: pattern → alpha (PEFT's `alpha_pattern`).
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Seed of the A initialisation.
    pub init_seed: u64,
    /// DoRA (PEFT's `use_dora`): a trained magnitude per output row over the normalised
    /// `W + s·B·A` (see [`dora`]).
    pub use_dora: bool,
    /// LoRA+ (PEFT's `create_loraplus_optimizer`): B (and every 1-D tensor, DoRA's magnitudes)
    /// learns at this multiple of the learning rate of A. 1: plain LoRA.
    pub loraplus_lr_ratio: f64,
    /// PEFT's `init_lora_weights`: true, false, "gaussian", "pissa", "olora" (see [`init`]).
    pub init_lora_weights: init::InitLoraWeights,
    /// Biases that train beside the factors: "none", "all" (every bias of the model), "lora_only"
    /// (those of the adapted layers); see [`extra_params`].
    pub bias: String,
    /// Linear layers and norms trained whole (names by PEFT's suffix rule).
    pub modules_to_save: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            targets: TargetSpec::default(),
            exclude: vec![],
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            init_seed: 0,
            use_dora: false,
            loraplus_lr_ratio: 1.0,
            init_lora_weights: init::InitLoraWeights::default(),
            bias: "none".into(),
            modules_to_save: vec![],
        }
    }
}

impl LoraConfig {
    /// `(r, alpha)` for the module at `path`, after rank/alpha patterns.
    pub fn rank_alpha(&self, path: &str) -> Result<(usize, f64)> {
        let mut r = self.r;
        let mut alpha = self.alpha;
        for (pat, &pr) in &self.rank_pattern {
            if pattern_match(path, pat)? {
                r = pr;
                break;
            }
        }
        for (pat, &pa) in &self.alpha_pattern {
            if pattern_match(path, pat)? {
                alpha = pa;
                break;
            }
        }
        Ok((r, alpha))
    }

    pub fn scale(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(PeftError::Invalid("r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(PeftError::Invalid(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        // alpha = 0 scales the update to nothing: the adapter would train and change nothing.
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(PeftError::Invalid(format!("alpha must be a positive number, got {}", self.alpha)));
        }
        if let Some((p, a)) = self.alpha_pattern.iter().find(|(_, &a)| !(a > 0.0 && a.is_finite())) {
            return Err(PeftError::Invalid(format!("alpha_pattern `{p}` sets alpha = {a}; it must be a positive number")));
        }
        self.init_lora_weights.kind()?;
        if !matches!(self.bias.as_str(), "none" | "all" | "lora_only") {
            return Err(PeftError::Invalid(format!("bias = \"{}\" (none, all, lora_only)", self.bias)));
        }
        if !(self.loraplus_lr_ratio > 0.0 && self.loraplus_lr_ratio.is_finite()) {
            return Err(PeftError::Invalid(format!("loraplus_lr_ratio must be a positive number, got {}", self.loraplus_lr_ratio)));
        }
        if let Some((p, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return Err(PeftError::Invalid(format!("rank_pattern `{p}` sets r = 0")));
        }
        Ok(())
    }
}

/// One adapted linear layer's trainable factors.
#[derive(Clone)]
pub struct LoraModule {
    pub path: String,
    /// `(r, d_in)`.
    pub a: Var,
    /// `(d_out, r)`.
    pub b: Var,
    pub r: usize,
    pub alpha: f64,
    pub scale: f64,
    /// For a part of a fused projection (GPT-2's `c_attn.q`): the fused module and the part's
    /// index, which places it at output rows `index·d_out ..` of the fused weight.
    pub part: Option<(String, usize)>,
    /// DoRA's magnitude `m: (d_out)`, when the adapter is DoRA.
    pub magnitude: Option<Var>,
}

impl LoraModule {
    pub fn d_in(&self) -> usize {
        self.a.dims()[1]
    }
    pub fn d_out(&self) -> usize {
        self.b.dims()[0]
    }
    pub fn parameter_count(&self) -> usize {
        self.r * (self.d_in() + self.d_out()) + self.magnitude.as_ref().map(|m| m.elem_count()).unwrap_or(0)
    }
    /// `s · B · A: (d_out, d_in)`, in f32.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        let a = self.a.as_tensor().to_dtype(DType::F32)?;
        let b = self.b.as_tensor().to_dtype(DType::F32)?;
        b.matmul(&a)? * self.scale
    }
}

/// All LoRA modules of a model, keyed by module path.
#[derive(Clone)]
pub struct LoraAdapters {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, LoraModule>,
    pub dropout_rng: DropoutRng,
    /// PiSSA/OLoRA: the residual base each module trains over, by path (see [`init`]).
    pub mutated: BTreeMap<String, init::MutatedBase>,
    /// Biases and whole modules that train beside the factors.
    pub extra: extra_params::ExtraParams,
}

impl LoraAdapters {
    /// Fresh adapters for the modules of `linear_modules: (path, d_in, d_out)` chosen by the
    /// config: A kaiming-uniform in `±1/sqrt(d_in)`, B zero.
    pub fn init(config: &LoraConfig, linear_modules: &[(String, usize, usize)], device: &Device) -> Result<Self> {
        config.validate()?;
        let paths: Vec<&str> = linear_modules.iter().map(|(p, _, _)| p.as_str()).collect();
        let chosen = select(&config.targets, &config.exclude, &paths)?;
        let mut modules = BTreeMap::new();
        for (path, d_in, d_out) in linear_modules.iter().filter(|(p, _, _)| chosen.contains(p)) {
            let (r, alpha) = config.rank_alpha(path)?;
            let mut rng = SplitMix64(config.init_seed ^ fnv1a(path));
            let bound = 1.0 / (*d_in as f64).sqrt();
            let a: Vec<f32> = (0..r * d_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (r, *d_in), device)?)?;
            let b = Var::zeros((*d_out, r), DType::F32, device)?;
            let part = part_of(path, &paths);
            if config.use_dora && part.is_some() {
                return Err(PeftError::Invalid(format!("DoRA on `{path}`, a part of a fused projection, is not supported (PEFT has no such form); target the whole layer")));
            }
            let magnitude = if config.use_dora { Some(Var::ones(*d_out, DType::F32, device)?) } else { None };
            modules.insert(path.clone(), LoraModule { path: path.clone(), a, b, r, alpha, scale: config.scale(r, alpha), part, magnitude });
        }
        Ok(Self { config: config.clone(), modules, dropout_rng: DropoutRng::new(config.init_seed), mutated: BTreeMap::new(), extra: Default::default() })
    }

    /// Trainable parameters: `Σ r·(d_in + d_out)` and the biases and modules that train beside.
    pub fn trainable_parameters(&self) -> usize {
        self.modules.values().map(LoraModule::parameter_count).sum::<usize>() + self.extra.named_vars(&|_| false).iter().map(|(_, v)| v.elem_count()).sum::<usize>()
    }

    /// Whether the layer at `path` has LoRA factors (itself, or parts of it: GPT-2's c_attn).
    pub fn is_adapted(&self, path: &str) -> bool {
        self.modules.contains_key(path) || self.modules.values().any(|m| m.part.as_ref().is_some_and(|(p, _)| p == path))
    }

    /// `(name, var)` for every trainable tensor, named as in PEFT's file (without the
    /// `base_model.model.` prefix): `<path>.lora_A.weight`, `<path>.lora_B.weight`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(self.modules.len() * 2);
        for (p, m) in &self.modules {
            out.push((format!("{p}.lora_A.weight"), m.a.clone()));
            out.push((format!("{p}.lora_B.weight"), m.b.clone()));
            if let Some(mag) = &m.magnitude {
                out.push((format!("{p}.lora_magnitude_vector"), mag.clone()));
            }
        }
        out.extend(self.extra.named_vars(&|p| self.is_adapted(p)));
        out
    }

    /// The adapters as unmerged f32 branches for the CPU decoder, by module path; `None` when
    /// one adapts a part of a fused projection (GPT-2), which that decoder does not have.
    pub fn decode_branches(&self) -> Result<Option<BTreeMap<String, lowrank_models::fast_decode::LoraBranch>>> {
        let mut out = BTreeMap::new();
        if !self.extra.is_empty() {
            return Ok(None);
        }
        for m in self.modules.values() {
            if m.part.is_some() || m.magnitude.is_some() {
                return Ok(None);
            }
            let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
            out.insert(m.path.clone(), lowrank_models::fast_decode::LoraBranch { r: m.r, scale: m.scale as f32, a: flat(m.a.as_tensor())?, b: flat(m.b.as_tensor())? });
        }
        Ok(Some(out))
    }

    /// `W ← W + s·B·A` (in f32, then back to W's dtype) for every adapted module; a part of a
    /// fused projection adds into its rows of the fused weight.
    pub fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        self.apply_delta(weights, 1.0)
    }

    /// `W ← W − s·B·A`: undoes [`merge_into`](Self::merge_into).
    pub fn unmerge_from(&self, weights: &mut Weights) -> Result<()> {
        self.apply_delta(weights, -1.0)
    }

    /// DoRA's magnitudes set to the rows' norms of the base weights (`‖W‖_row`, as B is zero at
    /// start): the no-op start. Called once on fresh adapters.
    pub fn init_dora_magnitudes(&self, weights: &Weights) -> Result<()> {
        for m in self.modules.values() {
            if let Some(mag) = &m.magnitude {
                let w = weights.frozen(&format!("{}.weight", m.path), &[m.d_out(), m.d_in()])?;
                let norms = dora::DoraNorms::of(&w, mag.device())?.w_sq.sqrt()?;
                mag.set(&norms)?;
            }
        }
        Ok(())
    }

    fn apply_delta(&self, weights: &mut Weights, sign: f64) -> Result<()> {
        for m in self.modules.values() {
            if m.magnitude.is_some() {
                if sign < 0.0 {
                    return Err(PeftError::Invalid(format!("unmerging the DoRA layer `{}` is not supported", m.path)));
                }
                let key = format!("{}.weight", m.path);
                let w = weights.get(&key, &[m.d_out(), m.d_in()])?;
                let merged = dora::merged_weight(&w, m)?.to_dtype(w.dtype())?;
                weights.insert(key, merged);
                continue;
            }
            let delta = (m.delta_weight()? * sign)?;
            match &m.part {
                None => {
                    let key = format!("{}.weight", m.path);
                    let w = weights.get(&key, &[m.d_out(), m.d_in()])?;
                    let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
                    weights.insert(key, merged);
                }
                Some((parent, idx)) => {
                    let key = format!("{parent}.weight");
                    let w = weights.get_any(&key)?;
                    let off = parts::part_offset(m, *idx);
                    let (rows, cols) = w.dims2()?;
                    if cols != m.d_in() || off + m.d_out() > rows {
                        return Err(PeftError::Invalid(format!("`{key}` has shape ({rows}, {cols}); part `{}` needs rows {off}..{} of {} columns", m.path, off + m.d_out(), m.d_in())));
                    }
                    let block = (w.narrow(0, off, m.d_out())?.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
                    let merged = w.slice_assign(&[off..off + m.d_out(), 0..cols], &block)?;
                    weights.insert(key, merged);
                }
            }
        }
        Ok(())
    }
}

/// A linear layer with a LoRA branch: `inner` is the frozen base layer (then the fused op
/// computes both), or whatever an earlier hook made of it (a quantized base, another adapter:
/// then the branch is added to its output). With DoRA's norms, the DoRA layer ([`dora`]).
pub struct LoraLinear {
    pub inner: Arc<dyn LinearLayer>,
    pub module: LoraModule,
    pub dropout: f64,
    pub rng: DropoutRng,
    /// DoRA: the frozen weight's row norms (the module then has a magnitude).
    pub dora: Option<dora::DoraNorms>,
}

impl LinearLayer for LoraLinear {
    /// `x: (b, t, d_in) -> (b, t, d_out)`.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mask = self.rng.mask_like(&self.module.path, x, self.dropout, train)?;
        if let Some(norms) = &self.dora {
            return self.forward_dora(x, mask.as_ref(), norms, train);
        }
        if let Some(y) = self.fused(x, mask.as_ref(), true)? {
            return Ok(y);
        }
        self.forward_composed(x, mask.as_ref(), train)
    }
}

impl LoraLinear {
    /// `W x (+ b) + s·B A (x ⊙ m)` by the fused op, when the inner layer is the frozen base and
    /// the device and dtypes allow; `None` otherwise. Without `with_bias` no bias is added.
    fn fused(&self, x: &Tensor, mask: Option<&Tensor>, with_bias: bool) -> candle_core::Result<Option<Tensor>> {
        let Some(base) = self.inner.as_frozen() else { return Ok(None) };
        let (a, b) = (self.module.a.as_tensor(), self.module.b.as_tensor());
        let bias = if with_bias { base.bias.as_ref() } else { None };
        // A trainable bias (bias tuning beside LoRA) is added outside the fused op, where it
        // gets its gradient; a frozen one inside on the CPU.
        let trainable_bias = bias.is_some_and(|b| b.is_variable());
        let add_bias = |y: Tensor, inside: bool| match bias {
            Some(bias) if !inside => y.broadcast_add(&bias.to_dtype(y.dtype())?),
            _ => Ok(y),
        };
        let mask = mask.cloned().map(Arc::new);
        if x.device().is_cpu() && x.dtype() == DType::F32 && a.dtype() == DType::F32 && base.weight.dtype() == DType::F32 {
            let inside = !trainable_bias;
            let op = fused_op::FusedLora { weight: base.weight.clone(), bias: if inside { bias.cloned() } else { None }, scale: self.module.scale as f32, mask };
            return Ok(Some(add_bias(x.contiguous()?.apply_op3(a, b, op)?, inside)?));
        }
        if lowrank_models::ops::frozen_linear::gpu_ok(x, &base.weight) {
            // The GPU path: the factors in x's dtype (their gradients flow back to the f32
            // variables through the cast), any bias added outside the op.
            let dt = x.dtype();
            let op = fused_op::FusedLora { weight: base.weight.clone(), bias: None, scale: self.module.scale as f32, mask };
            return Ok(Some(add_bias(x.contiguous()?.apply_op3(&a.to_dtype(dt)?, &b.to_dtype(dt)?, op)?, false)?));
        }
        Ok(None)
    }

    /// `s·B A x: (..., d_out)`, the branch alone (x already dropped out where it applies).
    fn branch(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let d_in = self.module.d_in();
        let rows = x.elem_count() / d_in;
        let a = self.module.a.as_tensor().to_dtype(x.dtype())?;
        let b = self.module.b.as_tensor().to_dtype(x.dtype())?;
        // The scale is applied on the small (rows, r) product, not on (rows, d_out).
        let delta = (x.reshape((rows, d_in))?.matmul(&a.t()?)? * self.module.scale)?.matmul(&b.t()?)?;
        let mut out_dims = x.dims().to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = self.module.d_out();
        delta.reshape(out_dims)
    }

    /// The plain differentiable composition: the inner layer plus the branch (other devices and
    /// dtypes, an inner layer that is not the frozen base; the test oracle).
    pub fn forward_composed(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> candle_core::Result<Tensor> {
        let y = self.inner.forward_t(x, train)?;
        let xm = match mask {
            Some(m) => x.broadcast_mul(&m.reshape(x.shape())?)?,
            None => x.clone(),
        };
        let delta = self.branch(&xm)?.to_dtype(y.dtype())?;
        y + delta
    }

    /// DoRA ([`dora`]): `(m/n) ⊙ (W x + s·B A x) + b`; with dropout in training PEFT's form
    /// `W x + b + (m/n − 1) ⊙ W x_d + (m/n) ⊙ s·B A x_d`.
    fn forward_dora(&self, x: &Tensor, mask: Option<&Tensor>, norms: &dora::DoraNorms, train: bool) -> candle_core::Result<Tensor> {
        let Some(base) = self.inner.as_frozen() else {
            return Err(candle_core::Error::Msg(format!("DoRA on `{}` needs the frozen base layer", self.module.path)));
        };
        let scale = dora::magnitude_scale(norms, &base.weight, &self.module, x.dtype())?;
        let with_bias = |y: Tensor| match &base.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        };
        match mask {
            None => {
                let product = match self.fused(x, None, false)? {
                    Some(p) => p,
                    None => (lowrank_models::ops::frozen_weight_matmul(x, &base.weight)? + self.branch(x)?)?,
                };
                with_bias(product.broadcast_mul(&scale)?)
            }
            Some(m) => {
                let xd = x.broadcast_mul(&m.reshape(x.shape())?)?;
                let full = self.inner.forward_t(x, train)?;
                let wd = lowrank_models::ops::frozen_weight_matmul(&xd, &base.weight)?;
                let dora = (wd.broadcast_mul(&(scale.clone() - 1.0)?)? + self.branch(&xd)?.broadcast_mul(&scale)?)?;
                full + dora
            }
        }
    }
}

/// Attaches LoRA branches to the layers the adapters name; other layers stay as they are.
/// `dropout` applies only when the model runs with `train = true`.
pub struct LoraSite<'a> {
    pub adapters: &'a LoraAdapters,
    pub dropout: f64,
}

impl BuildHook for LoraSite<'_> {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        self.adapters.attach(info, layer, self.dropout)
    }
    fn norm(&self, info: &lowrank_models::NormInfo, layer: Arc<dyn lowrank_models::NormLayer>) -> lowrank_models::Result<Arc<dyn lowrank_models::NormLayer>> {
        self.adapters.extra.norm(&info.path, layer)
    }
}

impl BuildHook for LoraAdapters {
    fn linear(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        self.attach(info, layer, self.config.dropout)
    }
    fn norm(&self, info: &lowrank_models::NormInfo, layer: Arc<dyn lowrank_models::NormLayer>) -> lowrank_models::Result<Arc<dyn lowrank_models::NormLayer>> {
        self.extra.norm(&info.path, layer)
    }
}

impl LoraAdapters {
    /// `layer` with the branches of the module at `info.path` (and of its parts) attached.
    fn attach(&self, info: &LinearInfo, layer: Arc<dyn LinearLayer>, dropout: f64) -> lowrank_models::Result<Arc<dyn LinearLayer>> {
        let rng = self.dropout_rng.clone();
        // A bias that trains, or the whole layer (modules_to_save).
        let layer = self.extra.linear(&info.path, layer)?;
        // PiSSA/OLoRA: the module trains over its residual base.
        let layer: Arc<dyn LinearLayer> = match (self.mutated.get(&info.path), layer.as_frozen()) {
            (Some(m), Some(base)) => Arc::new(lowrank_models::BaseLinear { path: base.path.clone(), weight: m.residual.clone().into(), bias: base.bias.clone() }),
            (Some(_), None) => return Err(lowrank_models::ModelError::Invalid(format!("PiSSA/OLoRA on `{}` needs the frozen base layer, which another hook has replaced", info.path))),
            (None, _) => layer,
        };
        let inner: Arc<dyn LinearLayer> = match self.modules.get(&info.path) {
            Some(m) => {
                let dora = match (&m.magnitude, layer.as_frozen()) {
                    (Some(mag), Some(base)) => Some(dora::DoraNorms::of(&base.weight, mag.device())?),
                    (Some(_), None) => return Err(lowrank_models::ModelError::Invalid(format!("DoRA on `{}` needs the frozen base layer, which another hook has replaced", info.path))),
                    (None, _) => None,
                };
                Arc::new(LoraLinear { inner: layer, module: m.clone(), dropout, rng: rng.clone(), dora })
            }
            None => layer,
        };
        let parts = parts_of(&self.modules, &info.path);
        if parts.is_empty() {
            return Ok(inner);
        }
        Ok(parts_layer(info, inner, parts, dropout, rng))
    }
}

impl Adapter for LoraAdapters {
    fn method(&self) -> &'static str {
        if self.config.use_dora { "dora" } else { "lora" }
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        LoraAdapters::named_vars(self)
    }
    fn lr_scales(&self) -> Vec<f64> {
        // LoRA+: B and the 1-D tensors at the ratio, A at 1.
        let ratio = self.config.loraplus_lr_ratio;
        LoraAdapters::named_vars(self).iter().map(|(n, v)| if n.ends_with(".lora_B.weight") || v.rank() == 1 { ratio } else { 1.0 }).collect()
    }
    fn hook(&self) -> &dyn BuildHook {
        self
    }
    fn module_paths(&self) -> Vec<String> {
        self.modules.keys().chain(self.extra.biases.keys()).chain(self.extra.saved.keys()).cloned().collect()
    }
    fn reseed(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }
    fn trainable_parameters(&self) -> usize {
        LoraAdapters::trainable_parameters(self)
    }
    fn describe(&self) -> String {
        let c = &self.config;
        let name = if c.use_dora { "DoRA" } else { "LoRA" };
        format!("{name} r={} alpha={}{} on {} modules, dropout {}", c.r, c.alpha, if c.use_rslora { " (rsLoRA)" } else { "" }, self.modules.len(), c.dropout)
    }
    fn merge_into(&self, weights: &mut Weights) -> Result<()> {
        LoraAdapters::merge_into(&self.converted()?, weights)?;
        self.extra.merge_into(weights)
    }
    fn config_json(&self, info: &AdapterInfo) -> serde_json::Value {
        format::adapter_config_json(self, info)
    }
    fn save(&self, dir: &Path, info: &AdapterInfo) -> Result<()> {
        format::save_lora(dir, &self.converted()?, info)
    }
    fn save_native(&self, dir: &Path, info: &AdapterInfo) -> Result<()> {
        format::save_lora_native(dir, self, info)
    }
    fn decode_branches(&self) -> Result<Option<BTreeMap<String, lowrank_models::fast_decode::LoraBranch>>> {
        LoraAdapters::decode_branches(&self.converted()?)
    }
}

/// The `[lora]` section as settings.
fn settings_of(settings: &toml::Value) -> Result<LoraConfig> {
    settings.clone().try_into().map_err(|e: toml::de::Error| PeftError::Invalid(format!("[lora]: {}", e.message())))
}

/// The method: `[peft] method = "lora"` with a `[lora]` section; PEFT's `peft_type` `LORA`.
pub struct Lora;

impl Method for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn peft_type(&self) -> &'static str {
        "LORA"
    }
    fn check(&self, settings: &toml::Value) -> Result<()> {
        settings_of(settings)?.validate()
    }
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>> {
        let mut cfg = settings_of(settings)?;
        if cfg.targets == TargetSpec::default() {
            // PEFT's default for the family: q_proj, v_proj; GPT-2 c_attn; T5 q, v.
            cfg.targets = TargetSpec::Names(ctx.config.default_lora_targets());
        }
        if cfg.init_seed == 0 {
            cfg.init_seed = ctx.seed;
        }
        let mut adapters = LoraAdapters::init(&cfg, &ctx.layout.linear_modules(), ctx.device)?;
        adapters.init_from_base(ctx.weights)?;
        let adapted: Vec<String> = ctx.layout.linears.iter().map(|l| l.path.clone()).filter(|p| adapters.is_adapted(p)).collect();
        let adapted: Vec<&str> = adapted.iter().map(String::as_str).collect();
        adapters.extra = extra_params::ExtraParams::init(&cfg.bias, &cfg.modules_to_save, &adapted, ctx.layout, ctx.weights, ctx.device)?;
        adapters.init_dora_magnitudes(ctx.weights)?;
        Ok(Box::new(adapters))
    }
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, device: &Device) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(format::lora_from_folder(folder, layout, device)?))
    }
}
