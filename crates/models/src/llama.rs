//! Training-first Llama-family decoder (Llama, SmolLM2, Qwen2): a full-sequence forward that is
//! a pure function of its inputs; module paths are the Hugging Face parameter names.
use crate::config::{LlamaConfig, RopeScaling};
use crate::error::Result;
use crate::hooks::{BuildHook, LinearLayer, ModuleBuilder, NormKind, NormLayer, NormRole, Role};
use crate::ops::attention_core::attention_core;
use crate::ops::heads::to_heads;
use crate::ops::swiglu::{swiglu, swiglu_down};
use crate::ops::AttentionMask;
use crate::weights::Weights;
pub use crate::kv_cache::KvCache;
use candle_core::{DType, Device, Tensor, Var};
use std::sync::Arc;

struct Attention {
    q_proj: Arc<dyn LinearLayer>,
    k_proj: Arc<dyn LinearLayer>,
    v_proj: Arc<dyn LinearLayer>,
    o_proj: Arc<dyn LinearLayer>,
}

struct Mlp {
    gate_proj: Arc<dyn LinearLayer>,
    up_proj: Arc<dyn LinearLayer>,
    down_proj: Arc<dyn LinearLayer>,
}

struct DecoderLayer {
    input_layernorm: Arc<dyn NormLayer>,
    self_attn: Attention,
    post_attention_layernorm: Arc<dyn NormLayer>,
    mlp: Mlp,
}

/// A Llama-family causal language model.
pub struct Llama {
    pub config: LlamaConfig,
    /// Train with activation checkpointing (see [`Llama::loss_and_grads_checkpointed`]).
    pub activation_checkpointing: bool,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Arc<dyn NormLayer>,
    /// `(vocab, hidden)`: `lm_head.weight`, or the embedding matrix when tied.
    lm_head: Tensor,
    /// The same head as a layer built through the hook (quantized for fast decoding), for
    /// inference logits; the training loss uses `lm_head` directly.
    head: Arc<dyn LinearLayer>,
    /// `(max_pos, head_dim)` each.
    cos: Tensor,
    sin: Tensor,
}

pub(crate) fn inv_freqs(cfg: &LlamaConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)).collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Llama {
    /// Builds the model from `weights`; every linear layer and norm goes through `hook`.
    pub fn new(config: &LlamaConfig, weights: &Weights, hook: &dyn BuildHook, device: &Device) -> Result<Self> {
        let cfg = config;
        let (d, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let embed_tokens = weights.get("model.embed_tokens.weight", &[v, d])?;
        let m = ModuleBuilder { weights, hook };
        let eps = cfg.rms_norm_eps;
        let (qd, kvd, ff) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let b = cfg.attention_bias;
            layers.push(DecoderLayer {
                input_layernorm: m.norm(format!("{p}.input_layernorm"), NormRole::Attention, NormKind::Rms, d, eps)?,
                self_attn: Attention {
                    q_proj: m.linear(format!("{p}.self_attn.q_proj"), Role::Query, d, qd, b)?,
                    k_proj: m.linear(format!("{p}.self_attn.k_proj"), Role::Key, d, kvd, b)?,
                    v_proj: m.linear(format!("{p}.self_attn.v_proj"), Role::Value, d, kvd, b)?,
                    o_proj: m.linear(format!("{p}.self_attn.o_proj"), Role::AttentionOutput, qd, d, false)?,
                },
                post_attention_layernorm: m.norm(format!("{p}.post_attention_layernorm"), NormRole::FeedForward, NormKind::Rms, d, eps)?,
                mlp: Mlp {
                    gate_proj: m.linear(format!("{p}.mlp.gate_proj"), Role::FfnGate, d, ff, false)?,
                    up_proj: m.linear(format!("{p}.mlp.up_proj"), Role::FfnUp, d, ff, false)?,
                    down_proj: m.linear(format!("{p}.mlp.down_proj"), Role::FfnDown, ff, d, false)?,
                },
            });
        }
        let norm = m.norm("model.norm".into(), NormRole::Final, NormKind::Rms, d, eps)?;
        let lm_head = if weights.contains("lm_head.weight") && !cfg.tie_word_embeddings {
            weights.get("lm_head.weight", &[v, d])?
        } else {
            embed_tokens.clone()
        };
        let max_pos = cfg.max_position_embeddings.max(1);
        let inv: Vec<f32> = inv_freqs(cfg).into_iter().map(|f| f as f32).collect();
        let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, hd / 2))?;
        let pos = Tensor::arange(0u32, max_pos as u32, device)?.to_dtype(DType::F32)?.reshape((max_pos, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
        let dtype = embed_tokens.dtype();
        let head = m.head(lm_head.clone())?;
        Ok(Self {
            activation_checkpointing: false,
            head,
            config: cfg.clone(),
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// `(vocab, hidden)` output projection.
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Hidden states after the final norm: `input_ids: (b, t)` → `(b, t, hidden)`.
    /// `attention_mask: (b, t)` marks padding; positions start at 0 for every row.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mut cache = None;
        self.forward_inner(input_ids, attention_mask, train, &mut cache)
    }

    /// Incremental forward for generation: `input_ids: (b, t_new)` after `cache.len()` cached
    /// positions; `attention_mask: (b, cache.len() + t_new)`. Returns `(b, t_new, hidden)`.
    pub fn forward_cached(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        let mut c = Some(std::mem::take(cache));
        let out = self.forward_inner(input_ids, attention_mask, false, &mut c);
        *cache = c.unwrap_or_default();
        out
    }

    /// Token embeddings, attention mask and rotary tables for `input_ids: (b, t)` after `offset`
    /// cached positions: `(h0: (b, t, hidden), mask, cos, sin)`.
    fn prepare(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, offset: usize) -> Result<(Tensor, AttentionMask, Tensor, Tensor)> {
        let cfg = &self.config;
        let (b, t) = input_ids.dims2()?;
        if offset + t > cfg.max_position_embeddings {
            return Err(crate::error::ModelError::Invalid(format!(
                "sequence of {} tokens exceeds max_position_embeddings = {}",
                offset + t,
                cfg.max_position_embeddings
            )));
        }
        let ids = input_ids.flatten_all()?.to_dtype(DType::U32)?;
        let h = self.embed_tokens.index_select(&ids, 0)?.reshape((b, t, cfg.hidden_size))?;
        let key_keep = match attention_mask {
            Some(m) => Some(std::sync::Arc::new(
                m.to_dtype(DType::U32)?.to_vec2::<u32>()?.into_iter().map(|r| r.into_iter().map(|v| u8::from(v != 0)).collect()).collect(),
            )),
            None => None,
        };
        let mask = AttentionMask { t_q: t, offset, key_keep, causal: true };
        Ok((h, mask, self.cos.narrow(0, offset, t)?, self.sin.narrow(0, offset, t)?))
    }

    /// One decoder layer: `h: (b, t, hidden) -> (b, t, hidden)`.
    #[allow(clippy::too_many_arguments)]
    fn decoder_layer(&self, layer: &DecoderLayer, h: Tensor, mask: &AttentionMask, cos: &Tensor, sin: &Tensor, train: bool, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let x = layer.input_layernorm.forward(&h)?;
        let a = self.attention(&layer.self_attn, &x, mask, cos, sin, train, cache)?;
        let h = (h + a)?;
        let x = layer.post_attention_layernorm.forward(&h)?;
        let gate = layer.mlp.gate_proj.forward_t(&x, train)?;
        let up = layer.mlp.up_proj.forward_t(&x, train)?;
        let m = match layer.mlp.down_proj.as_frozen() {
            // A frozen down projection fuses with the SwiGLU: its input is never kept.
            Some(down) if down.bias.is_none() => swiglu_down(&gate, &up, &down.weight)?,
            _ => layer.mlp.down_proj.forward_t(&swiglu(&gate, &up)?, train)?,
        };
        Ok((h + m)?)
    }

    fn forward_inner(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool, cache: &mut Option<KvCache>) -> Result<Tensor> {
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (mut h, mask, cos, sin) = self.prepare(input_ids, attention_mask, offset)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| {
                if c.layers.len() < self.layers.len() {
                    c.layers.resize(self.layers.len(), None);
                }
                &mut c.layers[li]
            });
            h = self.decoder_layer(layer, h, &mask, &cos, &sin, train, layer_cache)?;
        }
        Ok(self.norm.forward(&h)?)
    }

    /// The training loss and the gradients of `vars` with activation checkpointing: the forward
    /// keeps only each layer's input; the backward recomputes one layer at a time and
    /// back-propagates through it with the gradient of its output (`Σ out ⊙ g`), so activations
    /// of a single layer are alive at once. Returns `(scale · loss sum, tokens, grads)`, equal to
    /// back-propagating `scale · loss_sum` through the whole graph.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads_checkpointed(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, scale: f64, vars: &[Var]) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
        let (h0, mask, cos, sin) = self.prepare(input_ids, attention_mask, 0)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = h0.detach();
        for layer in &self.layers {
            inputs.push(h.clone());
            h = self.decoder_layer(layer, h, &mask, &cos, &sin, true, None)?.detach();
        }
        let top = Var::from_tensor(&h)?;
        let normed = self.norm.forward(top.as_tensor())?;
        let (sum, n) = crate::causal_loss::shifted_loss_sum(&normed, &self.lm_head, labels, label_smoothing)?;
        let scaled = (sum * scale)?;
        let value = scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        if n == 0 {
            return Ok((value, n, grads));
        }
        let missing = || crate::error::ModelError::Invalid("activation checkpointing: no gradient reached a layer input".into());
        // Every part's gradients of `vars` add up: the top (the final norm may train) and each
        // recomputed layer.
        let collect = |grads: &mut Vec<Option<Tensor>>, store: &candle_core::backprop::GradStore| -> Result<()> {
            for (slot, v) in grads.iter_mut().zip(vars) {
                if let Some(gv) = store.get(v.as_tensor()) {
                    let gv = gv.detach();
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv,
                    });
                }
            }
            Ok(())
        };
        let top_store = scaled.backward()?;
        collect(&mut grads, &top_store)?;
        let mut g = top_store.get(top.as_tensor()).ok_or_else(missing)?.detach();
        drop(top_store);
        for (li, layer) in self.layers.iter().enumerate().rev() {
            let x = Var::from_tensor(&inputs[li])?;
            let out = self.decoder_layer(layer, x.as_tensor().clone(), &mask, &cos, &sin, true, None)?;
            let store = (out * &g)?.sum_all()?.backward()?;
            collect(&mut grads, &store)?;
            if li > 0 {
                g = store.get(x.as_tensor()).ok_or_else(missing)?.detach();
            }
        }
        Ok((value, n, grads))
    }

    /// Grouped-query attention without repeating K/V: the `g = heads / kv_heads` query heads of
    /// a group are stacked along the query axis. `x: (b, t, hidden) -> (b, t, hidden)`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        mask: &AttentionMask,
        cos: &Tensor,
        sin: &Tensor,
        train: bool,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (h, kvh, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        // (b, t, heads·hd) -> (b, heads, t, hd), q and k rotated on the way.
        let q = to_heads(&attn.q_proj.forward_t(x, train)?, h, Some((cos, sin)))?;
        let k = to_heads(&attn.k_proj.forward_t(x, train)?, kvh, Some((cos, sin)))?;
        let v = to_heads(&attn.v_proj.forward_t(x, train)?, kvh, None)?;
        let (k, v) = crate::kv_cache::extend_kv(cache, k, v)?;
        // Head i reads kv head i / g, as HF's repeat_kv, without repeating K/V.
        let ctx = attention_core(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt())?; // (b, t, h·hd)
        Ok(attn.o_proj.forward_t(&ctx, train)?)
    }

    /// Logits for every position: `hidden: (..., hidden) -> (..., vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward_t(hidden, false)?)
    }

    /// `input_ids: (b, t) -> logits (b, t, vocab)`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, attention_mask, train)?;
        self.logits(&h)
    }

    /// Causal-LM loss as Hugging Face computes it: logits at position i predict `labels[i+1]`;
    /// labels equal to -100 are ignored. Returns `(sum of token losses, number of tokens)`;
    /// logits are only computed at positions that have a target.
    pub fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        let h = self.hidden_states(input_ids, attention_mask, train)?;
        crate::causal_loss::shifted_loss_sum(&h, &self.lm_head, labels, label_smoothing)
    }

    /// Logits of the last position of each row: `(b, t) -> (b, vocab)`, for generation.
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?)
    }
}
