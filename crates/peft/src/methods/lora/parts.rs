//! LoRA on parts of a fused projection: GPT-2's `c_attn` computes q|k|v in one matrix, and the
//! LoRA paper (loralib's `MergedLinear`) adapts the q and v blocks with separate rank-r factors
//! while k stays untouched. The parts appear as virtual modules under the fused one
//! (`transformer.h.0.attn.c_attn.q`, `.k`, `.v`, each `(d, d)`); part `i` owns output rows
//! `i·d .. (i+1)·d` of the fused layer.
use super::LoraModule;
use crate::dropout::DropoutRng;
use crate::error::{PeftError, Result};
use candle_core::Tensor;
use lowrank_models::{LinearInfo, LinearLayer};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The names of the parts, in output-row order.
pub const PART_NAMES: [&str; 3] = ["q", "k", "v"];

/// `(fused module path, part index)` when `path` is a part of a fused module listed in `modules`.
pub fn part_of(path: &str, modules: &[&str]) -> Option<(String, usize)> {
    let (parent, leaf) = path.rsplit_once('.')?;
    let idx = PART_NAMES.iter().position(|p| *p == leaf)?;
    modules.contains(&parent).then(|| (parent.to_string(), idx))
}

/// Output rows `offset .. offset + d_out` of the fused weight that part module `m` adapts.
pub fn part_offset(m: &LoraModule, index: usize) -> usize {
    index * m.d_out()
}

/// A fused linear layer with LoRA on some of its parts (and optionally on the whole layer):
/// `y = W x + b + s_full·B A x + Σ_parts place_i(s_i · B_i A_i x)`, one dropout mask shared by
/// the parts as in loralib. `x: (b, t, d_in) -> (b, t, d_out)`.
pub struct PartsLoraLinear {
    /// Module path of the fused layer (keys the dropout mask).
    pub path: String,
    /// The base layer, or the base layer with a LoRA branch over the whole output.
    pub inner: Arc<dyn LinearLayer>,
    pub d_in: usize,
    pub d_out: usize,
    /// `(module, part index)`, sorted by index.
    pub parts: Vec<(LoraModule, usize)>,
    pub dropout: f64,
    pub rng: DropoutRng,
}

impl LinearLayer for PartsLoraLinear {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.inner.forward_t(x, train)?;
        let rows = x.elem_count() / self.d_in;
        let mut xa = x.reshape((rows, self.d_in))?;
        if let Some(mask) = self.rng.mask_like(&self.path, x, self.dropout, train)? {
            xa = (xa * mask)?;
        }
        let mut pieces = Vec::new();
        let mut filled = 0usize;
        for (m, idx) in &self.parts {
            let off = part_offset(m, *idx);
            if off > filled {
                pieces.push(Tensor::zeros((rows, off - filled), x.dtype(), x.device())?);
            }
            let a = m.a.as_tensor().to_dtype(x.dtype())?;
            let b = m.b.as_tensor().to_dtype(x.dtype())?;
            pieces.push((xa.matmul(&a.t()?)? * m.scale)?.matmul(&b.t()?)?);
            filled = off + m.d_out();
        }
        if filled < self.d_out {
            pieces.push(Tensor::zeros((rows, self.d_out - filled), x.dtype(), x.device())?);
        }
        let delta = Tensor::cat(&pieces, 1)?;
        let delta = delta.reshape(y.shape())?;
        y + delta
    }
}

/// Builds the layer for the fused module `info` when adapters exist for its parts.
pub fn parts_layer(info: &LinearInfo, inner: Arc<dyn LinearLayer>, parts: Vec<(LoraModule, usize)>, dropout: f64, rng: DropoutRng) -> Arc<dyn LinearLayer> {
    Arc::new(PartsLoraLinear { path: info.path.clone(), inner, d_in: info.d_in, d_out: info.d_out, parts, dropout, rng })
}

/// One PEFT-loadable module that equals the whole-layer LoRA (if any) plus the parts of a fused
/// layer: rank `R = Σ r`, `A = [A_full; A_1; A_2 …]`, `B` block-placed (zeros where a part does not
/// reach) with each block scaled by `s_i / s`, where `s` is the scale PEFT will apply.
pub struct ExportedModule {
    pub a: Tensor,
    pub b: Tensor,
    pub r: usize,
    pub alpha: f64,
}

/// Combines `full` (optional) and `parts` of a fused layer with output width `d_out` into one
/// module for PEFT, whose scale is `alpha / R` (or `alpha / sqrt(R)` with rsLoRA).
pub fn export_fused(full: Option<&LoraModule>, parts: &[(LoraModule, usize)], d_out: usize, use_rslora: bool) -> Result<ExportedModule> {
    let first = full.or(parts.first().map(|(m, _)| m)).ok_or_else(|| PeftError::Invalid("nothing to export".into()))?;
    let s = first.scale;
    let mut a_rows = Vec::new();
    let mut b_cols = Vec::new();
    let dev = first.a.device().clone();
    let mut push = |m: &LoraModule, off: usize| -> Result<()> {
        a_rows.push(m.a.as_tensor().to_dtype(candle_core::DType::F32)?);
        let b = (m.b.as_tensor().to_dtype(candle_core::DType::F32)? * (m.scale / s))?;
        let mut col = Vec::new();
        if off > 0 {
            col.push(Tensor::zeros((off, m.r), candle_core::DType::F32, &dev)?);
        }
        col.push(b);
        if off + m.d_out() < d_out {
            col.push(Tensor::zeros((d_out - off - m.d_out(), m.r), candle_core::DType::F32, &dev)?);
        }
        b_cols.push(Tensor::cat(&col, 0)?);
        Ok(())
    };
    if let Some(m) = full {
        push(m, 0)?;
    }
    for (m, idx) in parts {
        push(m, part_offset(m, *idx))?;
    }
    let r: usize = a_rows.iter().map(|a| a.dims()[0]).sum();
    let alpha = if use_rslora { s * (r as f64).sqrt() } else { s * r as f64 };
    Ok(ExportedModule { a: Tensor::cat(&a_rows, 0)?, b: Tensor::cat(&b_cols, 1)?, r, alpha })
}

/// The adapters on the parts of the fused layer at `path` (`path.q`, `path.k`, `path.v`), with
/// their indices.
pub fn parts_of(modules: &BTreeMap<String, LoraModule>, path: &str) -> Vec<(LoraModule, usize)> {
    PART_NAMES
        .iter()
        .enumerate()
        .filter_map(|(i, name)| modules.get(&format!("{path}.{name}")).filter(|m| m.part.is_some()).map(|m| (m.clone(), i)))
        .collect()
}

/// Groups part modules by their fused parent: parent → [(module, index)], sorted by index.
pub fn group_parts(modules: &BTreeMap<String, LoraModule>) -> BTreeMap<String, Vec<(LoraModule, usize)>> {
    let mut out: BTreeMap<String, Vec<(LoraModule, usize)>> = BTreeMap::new();
    for m in modules.values() {
        if let Some((parent, idx)) = &m.part {
            out.entry(parent.clone()).or_default().push((m.clone(), *idx));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|(_, i)| *i);
    }
    out
}
