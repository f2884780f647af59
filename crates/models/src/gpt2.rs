//! Training-first GPT-2: learned positions, pre-LayerNorm blocks, fused `c_attn` (q|k|v),
//! `gelu_new` MLP, output head tied to `wte`. Module paths are the Hugging Face names
//! (`transformer.h.{i}.attn.c_attn`, ...); the Conv1D weights, stored `(d_in, d_out)` in
//! checkpoints, arrive here already transposed to `(d_out, d_in)` (see the loader).
use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};
use crate::gpt2_config::Gpt2Config;
use crate::kv_cache::KvCache;
use crate::hooks::{BuildHook, LinearLayer, ModuleBuilder, NormKind, NormLayer, NormRole, Role};
use crate::ops::attention_core::attention_core;
use crate::ops::heads::to_heads;
use crate::ops::{frozen_matmul, AttentionMask};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

struct Block {
    ln_1: Arc<dyn NormLayer>,
    c_attn: Arc<dyn LinearLayer>,
    attn_c_proj: Arc<dyn LinearLayer>,
    ln_2: Arc<dyn NormLayer>,
    c_fc: Arc<dyn LinearLayer>,
    mlp_c_proj: Arc<dyn LinearLayer>,
}

/// A GPT-2 language model.
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Arc<dyn NormLayer>,
}

/// Position of every token of `mask: (b, t_total)` (1 = token) in columns `from..from + t`: the
/// number of tokens before it in its row, as Hugging Face's `generate` derives position ids, so
/// left padding starts at 0 (and right padding equals `0..t`).
fn positions_from_mask(mask: &[Vec<u32>], from: usize, t: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(mask.len() * t);
    for row in mask {
        let mut seen = 0u32;
        for (i, &m) in row.iter().enumerate().take(from + t) {
            if i >= from {
                out.push(seen);
            }
            seen += u32::from(m != 0);
        }
    }
    out
}

impl Gpt2 {
    /// Builds the model from `weights`; every linear layer and norm goes through `hook`.
    pub fn new(config: &Gpt2Config, weights: &Weights, hook: &dyn BuildHook, _device: &Device) -> Result<Self> {
        let c = config;
        let (d, ff, eps) = (c.n_embd, c.n_inner, c.layer_norm_epsilon);
        let wte = weights.get("transformer.wte.weight", &[c.vocab_size, d])?;
        let wpe = weights.get("transformer.wpe.weight", &[c.n_positions, d])?;
        let m = ModuleBuilder { weights, hook };
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: m.norm(format!("{p}.ln_1"), NormRole::Attention, NormKind::Layer, d, eps)?,
                c_attn: m.linear(format!("{p}.attn.c_attn"), Role::FusedQkv, d, 3 * d, true)?,
                attn_c_proj: m.linear(format!("{p}.attn.c_proj"), Role::AttentionOutput, d, d, true)?,
                ln_2: m.norm(format!("{p}.ln_2"), NormRole::FeedForward, NormKind::Layer, d, eps)?,
                c_fc: m.linear(format!("{p}.mlp.c_fc"), Role::FfnUp, d, ff, true)?,
                mlp_c_proj: m.linear(format!("{p}.mlp.c_proj"), Role::FfnDown, ff, d, true)?,
            });
        }
        let ln_f = m.norm("transformer.ln_f".into(), NormRole::Final, NormKind::Layer, d, eps)?;
        Ok(Self { config: c.clone(), wte, wpe, blocks, ln_f })
    }

    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    /// Hidden states after `ln_f`: `input_ids: (b, t) -> (b, t, n_embd)`. `attention_mask:
    /// (b, cached + t)` marks padding and sets the positions (see [`positions_from_mask`]).
    fn forward_inner(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = input_ids.dims2()?;
        let offset = cache.as_ref().map(|k| k.len()).unwrap_or(0);
        let mask_rows: Option<Vec<Vec<u32>>> = match attention_mask {
            Some(m) => Some(m.to_dtype(DType::U32)?.to_vec2::<u32>()?),
            None => None,
        };
        let positions: Vec<u32> = match &mask_rows {
            Some(rows) => {
                if rows.len() != b || rows.iter().any(|r| r.len() != offset + t) {
                    return Err(ModelError::Invalid(format!("attention_mask must be ({b}, {}), the cached plus new positions", offset + t)));
                }
                positions_from_mask(rows, offset, t)
            }
            None => (0..b).flat_map(|_| (offset..offset + t).map(|p| p as u32)).collect(),
        };
        if let Some(&p) = positions.iter().max() {
            if p as usize >= c.n_positions {
                return Err(ModelError::Invalid(format!("position {p} exceeds n_positions = {}", c.n_positions)));
            }
        }
        let ids = input_ids.flatten_all()?.to_dtype(DType::U32)?;
        let pos = Tensor::from_vec(positions, b * t, input_ids.device())?;
        let mut h = (self.wte.index_select(&ids, 0)? + self.wpe.index_select(&pos, 0)?)?.reshape((b, t, c.n_embd))?;
        let key_keep = mask_rows.map(|rows| Arc::new(rows.into_iter().map(|r| r.into_iter().map(|v| u8::from(v != 0)).collect()).collect()));
        let mask = AttentionMask { t_q: t, offset, key_keep, causal: true };
        if let Some(k) = cache.as_mut() {
            if k.layers.len() < self.blocks.len() {
                k.layers.resize(self.blocks.len(), None);
            }
        }
        for (li, blk) in self.blocks.iter().enumerate() {
            let x = blk.ln_1.forward(&h)?;
            let slot = cache.as_mut().map(|k| &mut k.layers[li]);
            let a = self.attention(blk, &x, &mask, train, slot)?;
            h = (h + a)?;
            let x = blk.ln_2.forward(&h)?;
            let m = blk.mlp_c_proj.forward_t(&blk.c_fc.forward_t(&x, train)?.gelu()?, train)?;
            h = (h + m)?;
        }
        Ok(self.ln_f.forward(&h)?)
    }

    /// Causal self-attention over the fused projection: `x: (b, t, d) -> (b, t, d)`.
    fn attention(&self, blk: &Block, x: &Tensor, mask: &AttentionMask, train: bool, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let c = &self.config;
        let d = x.dim(2)?;
        let (nh, hd) = (c.n_head, c.head_dim());
        let qkv = blk.c_attn.forward_t(x, train)?; // (b, t, 3d)
        // (b, t, d) -> (b, nh, t, hd) each.
        let split = |i: usize| -> Result<Tensor> { Ok(to_heads(&qkv.narrow(2, i * d, d)?.contiguous()?, nh, None)?) };
        let q = split(0)?;
        let (k, v) = crate::kv_cache::extend_kv(cache, split(1)?, split(2)?)?;
        let ctx = attention_core(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt())?; // (b, t, d)
        Ok(blk.attn_c_proj.forward_t(&ctx, train)?)
    }

    /// Hidden states for a full sequence (training, scoring): `(b, t) -> (b, t, n_embd)`.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.forward_inner(input_ids, attention_mask, train, None)
    }

    /// `input_ids: (b, t) -> logits (b, t, vocab)`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, attention_mask, train)?;
        Ok(frozen_matmul(&h, &self.wte)?)
    }
}

impl CausalLm for Gpt2 {
    fn device(&self) -> &Device {
        Gpt2::device(self)
    }

    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        let h = self.hidden_states(input_ids, attention_mask, train)?;
        crate::causal_loss::shifted_loss_sum(&h, &self.wte, labels, label_smoothing)
    }

    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.forward_inner(input_ids, attention_mask, false, Some(cache))?;
        let t = h.dim(1)?;
        Ok(frozen_matmul(&h.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?, &self.wte)?)
    }
}

#[cfg(test)]
mod tests {
    use super::positions_from_mask;

    #[test]
    fn positions_count_tokens_before() {
        let m = vec![vec![0, 0, 1, 1, 1], vec![1, 1, 1, 1, 0]];
        assert_eq!(positions_from_mask(&m, 0, 5), vec![0, 0, 0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(positions_from_mask(&m, 4, 1), vec![2, 4]);
    }
}
