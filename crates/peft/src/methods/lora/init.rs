//! LoRA's initialisations beside the default (PEFT's `init_lora_weights`): `false` (B random
//! too: not a no-op, for tests), `"gaussian"` (A normal with std `1/r`), and the two that start
//! from the base weight and change it: `"pissa"` (A and B from the leading `r` singular triplets
//! of `W`: `B = U_r √(S_r/s)`, `A = √(S_r/s) V_rᵀ`) and `"olora"` (from its thin QR: `B = Q_r`,
//! `A = R_r`), both training over the residual `W − s·B₀·A₀`. Such an adapter is saved, as
//! PEFT's `path_initial_model_for_weight_conversion` saves it, as the plain LoRA of rank `2r` that
//! gives the same weights on the original model: `A' = [A; A₀]`, `B' = [B, −B₀]`.
use super::{LoraAdapters, LoraModule};
use crate::error::{PeftError, Result};
use crate::linalg::{leading_qr, top_svd};
use candle_core::{DType, Tensor};
use lowrank_models::generate::SplitMix64;
use lowrank_models::Weights;
use serde::{Deserialize, Serialize};

/// PEFT's `init_lora_weights`: `true` (the default), `false`, or a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Flag(bool),
    Name(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Flag(true)
    }
}

/// What an initialisation does to the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// A kaiming-uniform, B zero.
    Default,
    /// A kaiming-uniform, B random (PEFT's `false`).
    NotZero,
    Gaussian,
    Pissa,
    Olora,
}

impl InitLoraWeights {
    pub fn kind(&self) -> Result<InitKind> {
        Ok(match self {
            InitLoraWeights::Flag(true) => InitKind::Default,
            InitLoraWeights::Flag(false) => InitKind::NotZero,
            InitLoraWeights::Name(n) if n == "gaussian" => InitKind::Gaussian,
            // PEFT's fast SVD variants: lowrank computes the leading triplets to convergence.
            InitLoraWeights::Name(n) if n == "pissa" || n.strip_prefix("pissa_niter_").is_some_and(|k| k.parse::<u32>().is_ok()) => InitKind::Pissa,
            InitLoraWeights::Name(n) if n == "olora" => InitKind::Olora,
            InitLoraWeights::Name(n) => {
                return Err(PeftError::Invalid(format!("init_lora_weights = \"{n}\" is not supported (true, false, \"gaussian\", \"pissa\", \"pissa_niter_N\", \"olora\")")))
            }
        })
    }

    /// Whether the initialisation changes the base weight (the adapter then trains over a
    /// residual and is saved converted).
    pub fn mutates_base(&self) -> bool {
        matches!(self.kind(), Ok(InitKind::Pissa | InitKind::Olora))
    }
}

/// The base a PiSSA/OLoRA module trains over, and where its factors started.
#[derive(Clone)]
pub struct MutatedBase {
    /// `W − s·B₀·A₀: (d_out, d_in)`, in the base weight's dtype, on the adapter's device.
    pub residual: Tensor,
    /// `A₀: (r, d_in)`, `B₀: (d_out, r)`, f32.
    pub a0: Tensor,
    pub b0: Tensor,
}

/// Standard normal values (Box–Muller over a SplitMix64 stream).
fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.next_f64().max(1e-300);
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Sets A and B of `m` as `kind` asks, from `seed` (and the base weight `w: (d_out, d_in)` for
/// PiSSA and OLoRA, whose residual base it returns).
pub fn initialise(m: &LoraModule, kind: InitKind, seed: u64, w: Option<&Tensor>) -> Result<Option<MutatedBase>> {
    let (r, d_in, d_out) = (m.r, m.d_in(), m.d_out());
    let dev = m.a.device().clone();
    let mut rng = SplitMix64(seed ^ 0x1a2b_3c4d);
    match kind {
        InitKind::Default => Ok(None),
        InitKind::NotZero => {
            let b: Vec<f32> = normals(&mut rng, d_out * r).into_iter().map(|v| v * 0.02).collect();
            m.b.set(&Tensor::from_vec(b, (d_out, r), &dev)?)?;
            Ok(None)
        }
        InitKind::Gaussian => {
            let a: Vec<f32> = normals(&mut rng, r * d_in).into_iter().map(|v| v / r as f32).collect();
            m.a.set(&Tensor::from_vec(a, (r, d_in), &dev)?)?;
            Ok(None)
        }
        InitKind::Pissa | InitKind::Olora => {
            let w = w.ok_or_else(|| PeftError::Invalid(format!("`{}`: PiSSA/OLoRA need the base weight", m.path)))?;
            let wf: Vec<f64> = w.to_dtype(DType::F64)?.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f64>()?;
            let s = m.scale;
            let (a0, b0): (Vec<f64>, Vec<f64>) = if kind == InitKind::Pissa {
                let (u, sv, vt) = top_svd(&wf, d_out, d_in, r);
                // B = U_r diag(√(S_r/s)), A = diag(√(S_r/s)) V_rᵀ.
                let root: Vec<f64> = sv.iter().map(|x| (x / s).max(0.0).sqrt()).collect();
                let b: Vec<f64> = (0..d_out * r).map(|i| u[i] * root[i % r]).collect();
                let a: Vec<f64> = (0..r * d_in).map(|i| vt[i] * root[i / d_in]).collect();
                (a, b)
            } else {
                let (q, rr) = leading_qr(&wf, d_out, d_in, r);
                (rr, q)
            };
            let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let a0 = Tensor::from_vec(to32(&a0), (r, d_in), &dev)?;
            let b0 = Tensor::from_vec(to32(&b0), (d_out, r), &dev)?;
            m.a.set(&a0)?;
            m.b.set(&b0)?;
            let residual = (w.to_dtype(DType::F32)?.to_device(&dev)? - (b0.matmul(&a0)? * s)?)?.to_dtype(w.dtype())?;
            Ok(Some(MutatedBase { residual, a0, b0 }))
        }
    }
}

impl LoraAdapters {
    /// The plain LoRA adapter that gives, on the original base, the weights this one gives on
    /// its residual base: rank `2r`, `A' = [A; A₀]`, `B' = [B, −B₀]`, alpha doubled (× √2 with
    /// rsLoRA) so the scale stays. Itself when no module changed its base.
    pub fn converted(&self) -> Result<LoraAdapters> {
        if self.mutated.is_empty() {
            return Ok(self.clone());
        }
        let mut config = self.config.clone();
        if config.use_rslora && (!config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty()) {
            return Err(PeftError::Invalid("PiSSA/OLoRA with rsLoRA and rank or alpha patterns cannot be saved as plain LoRA (PEFT refuses this too)".into()));
        }
        let factor = if config.use_rslora { 2f64.sqrt() } else { 2.0 };
        config.r *= 2;
        config.alpha *= factor;
        config.rank_pattern.values_mut().for_each(|r| *r *= 2);
        config.alpha_pattern.values_mut().for_each(|a| *a *= factor);
        config.init_lora_weights = InitLoraWeights::Flag(true);
        let mut modules = self.modules.clone();
        for (path, m) in modules.iter_mut() {
            if let Some(base) = self.mutated.get(path) {
                let a = Tensor::cat(&[&m.a.as_tensor().to_dtype(DType::F32)?, &base.a0], 0)?;
                let b = Tensor::cat(&[&m.b.as_tensor().to_dtype(DType::F32)?, &base.b0.neg()?], 1)?;
                m.a = candle_core::Var::from_tensor(&a)?;
                m.b = candle_core::Var::from_tensor(&b)?;
                m.r *= 2;
                m.alpha *= factor;
            }
        }
        Ok(LoraAdapters { config, modules, dropout_rng: self.dropout_rng.clone(), mutated: Default::default(), extra: self.extra.clone() })
    }

    /// Applies the configured initialisation to every module (after [`LoraAdapters::init`]):
    /// PiSSA and OLoRA read their base weights from `weights` and keep the residuals.
    pub fn init_from_base(&mut self, weights: &Weights) -> Result<()> {
        let kind = self.config.init_lora_weights.kind()?;
        if kind == InitKind::Default {
            return Ok(());
        }
        if self.config.use_dora && matches!(kind, InitKind::Pissa | InitKind::Olora) {
            return Err(PeftError::Invalid("DoRA with a PiSSA or OLoRA initialisation is not supported".into()));
        }
        for (path, m) in &self.modules {
            if m.part.is_some() && matches!(kind, InitKind::Pissa | InitKind::Olora) {
                return Err(PeftError::Invalid(format!("PiSSA/OLoRA on `{path}`, a part of a fused projection, is not supported")));
            }
            let w = match kind {
                InitKind::Pissa | InitKind::Olora => Some(weights.frozen(&format!("{path}.weight"), &[m.d_out(), m.d_in()])?.to_dense()?),
                _ => None,
            };
            if let Some(base) = initialise(m, kind, self.config.init_seed ^ crate::dropout::fnv1a(path), w.as_ref())? {
                self.mutated.insert(path.clone(), base);
            }
        }
        Ok(())
    }
}
