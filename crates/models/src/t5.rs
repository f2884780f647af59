//! Training-first T5 encoder–decoder (T5 v1.0, v1.1, FLAN-T5), as Hugging Face transformers'
//! `T5ForConditionalGeneration` computes it: T5LayerNorm (RMS, no mean, no bias) before every
//! sublayer, attention without `1/sqrt(d)` scaling and with a relative position bias (held by the
//! first block of each stack, shared by all its blocks; bidirectional buckets in the encoder,
//! causal in the decoder, none in cross-attention), a ReLU or gated-GELU feed-forward block, and
//! an output head that is either the shared embedding (decoder output scaled by `d_model^-0.5`,
//! v1.0) or a separate `lm_head` (v1.1 / FLAN-T5).
//!
//! The full-sequence forward is a pure function of its inputs; module paths are the Hugging Face
//! parameter names and every linear layer is built through the [`LinearSite`], so LoRA attaches.
use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};
use crate::kv_cache::{EncoderState, KvCache};
use crate::hooks::{BuildHook, LinearLayer, ModuleBuilder, NormKind, NormLayer, NormRole, Role};
use crate::ops::{frozen_matmul, masked_softmax, AttentionMask, IGNORE_INDEX};
use crate::t5_config::{T5Config, T5FeedForward};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Per batch row, per key: 1 = token, 0 = padding.
type KeyKeep = Arc<Vec<Vec<u8>>>;

struct Attention {
    q: Arc<dyn LinearLayer>,
    k: Arc<dyn LinearLayer>,
    v: Arc<dyn LinearLayer>,
    o: Arc<dyn LinearLayer>,
}

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Relu,
    /// `gelu_new`: the tanh approximation (candle's `gelu`).
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
}

impl Act {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Relu => x.relu(),
            Act::GeluTanh => x.gelu(),
            Act::GeluErf => x.gelu_erf(),
        }
    }
}

struct FeedForward {
    /// `wi` (ungated) or `wi_0` (gated, the activated branch).
    wi: Arc<dyn LinearLayer>,
    /// `wi_1`: the linear branch of a gated block.
    wi_1: Option<Arc<dyn LinearLayer>>,
    wo: Arc<dyn LinearLayer>,
    act: Act,
}

impl FeedForward {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let a = self.act.apply(&self.wi.forward_t(x, train)?)?;
        let h = match &self.wi_1 {
            Some(wi_1) => (a * wi_1.forward_t(x, train)?)?,
            None => a,
        };
        self.wo.forward_t(&h, train)
    }
}

struct EncoderBlock {
    self_attn_norm: Arc<dyn NormLayer>,
    self_attn: Attention,
    ff_norm: Arc<dyn NormLayer>,
    ff: FeedForward,
}

struct DecoderBlock {
    self_attn_norm: Arc<dyn NormLayer>,
    self_attn: Attention,
    cross_attn_norm: Arc<dyn NormLayer>,
    cross_attn: Attention,
    ff_norm: Arc<dyn NormLayer>,
    ff: FeedForward,
}

/// A T5 encoder–decoder.
pub struct T5 {
    pub config: T5Config,
    device: Device,
    /// `(vocab, d_model)`: `shared.weight`, the token embedding of both stacks.
    shared: Tensor,
    encoder: Vec<EncoderBlock>,
    encoder_final_norm: Arc<dyn NormLayer>,
    /// `(num_buckets, num_heads)`: `encoder.block.0.layer.0.SelfAttention.relative_attention_bias`.
    encoder_rel_bias: Tensor,
    decoder: Vec<DecoderBlock>,
    decoder_final_norm: Arc<dyn NormLayer>,
    /// `(num_buckets, num_heads)`: `decoder.block.0.layer.0.SelfAttention.relative_attention_bias`.
    decoder_rel_bias: Tensor,
    /// `(vocab, d_model)`: `lm_head.weight` when the checkpoint has one, else `shared.weight`.
    lm_head: Tensor,
    /// `Some(d_model^-0.5)` when the decoder output is scaled before the head (T5 v1.0).
    output_scale: Option<f64>,
}

/// Hugging Face's `T5Attention._relative_position_bucket` for `relative_position = key − query`,
/// with the logarithmic part computed in f32 and truncated as torch does.
pub fn relative_position_bucket(relative_position: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let rp = if bidirectional {
        nb /= 2;
        if relative_position > 0 {
            bucket += nb;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = nb / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        // torch: log(rp.float() / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact),
        // every operation in f32 (the Python scalars are cast to the tensor's dtype).
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let v = (rp as f32 / max_exact as f32).ln() / denom * (nb - max_exact) as f32;
        let large = max_exact + (v as i64);
        bucket += large.min(nb - 1);
    }
    bucket as u32
}

/// 1/0 rows of an attention mask `(b, s)`; `None` without one.
fn key_keep(mask: Option<&Tensor>) -> Result<Option<KeyKeep>> {
    Ok(match mask {
        Some(m) => Some(Arc::new(
            m.to_dtype(DType::U32)?.to_vec2::<u32>()?.into_iter().map(|r| r.into_iter().map(|v| u8::from(v != 0)).collect()).collect(),
        )),
        None => None,
    })
}

impl T5 {
    /// Builds the model from `weights`; every linear layer and norm goes through `hook`.
    pub fn new(config: &T5Config, weights: &Weights, hook: &dyn BuildHook, device: &Device) -> Result<Self> {
        let cfg = config;
        let (d, inner, ff, v) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff, cfg.vocab_size);
        let shared = if weights.contains("shared.weight") {
            weights.get("shared.weight", &[v, d])?
        } else if weights.contains("encoder.embed_tokens.weight") {
            weights.get("encoder.embed_tokens.weight", &[v, d])?
        } else {
            weights.get("decoder.embed_tokens.weight", &[v, d])?
        };
        let m = ModuleBuilder { weights, hook };
        let eps = cfg.layer_norm_epsilon;
        let attention = |p: String| -> Result<Attention> {
            Ok(Attention {
                q: m.linear(format!("{p}.q"), Role::Query, d, inner, false)?,
                k: m.linear(format!("{p}.k"), Role::Key, d, inner, false)?,
                v: m.linear(format!("{p}.v"), Role::Value, d, inner, false)?,
                o: m.linear(format!("{p}.o"), Role::AttentionOutput, inner, d, false)?,
            })
        };
        // "gelu" is the exact GELU in transformers, "gelu_new" and "gated-gelu" the tanh form.
        let act = match cfg.feed_forward {
            T5FeedForward::Relu | T5FeedForward::GatedRelu => Act::Relu,
            T5FeedForward::GatedGelu | T5FeedForward::GeluNew => Act::GeluTanh,
            T5FeedForward::Gelu => Act::GeluErf,
        };
        let feed_forward = |p: String| -> Result<FeedForward> {
            Ok(if cfg.feed_forward.is_gated() {
                FeedForward {
                    wi: m.linear(format!("{p}.wi_0"), Role::FfnGate, d, ff, false)?,
                    wi_1: Some(m.linear(format!("{p}.wi_1"), Role::FfnUp, d, ff, false)?),
                    wo: m.linear(format!("{p}.wo"), Role::FfnDown, ff, d, false)?,
                    act,
                }
            } else {
                FeedForward { wi: m.linear(format!("{p}.wi"), Role::FfnUp, d, ff, false)?, wi_1: None, wo: m.linear(format!("{p}.wo"), Role::FfnDown, ff, d, false)?, act }
            })
        };
        let norm = |path: String, role: NormRole| m.norm(path, role, NormKind::Rms, d, eps);
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            encoder.push(EncoderBlock {
                self_attn_norm: norm(format!("{p}.0.layer_norm"), NormRole::Attention)?,
                self_attn: attention(format!("{p}.0.SelfAttention"))?,
                ff_norm: norm(format!("{p}.1.layer_norm"), NormRole::FeedForward)?,
                ff: feed_forward(format!("{p}.1.DenseReluDense"))?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.num_decoder_layers);
        for i in 0..cfg.num_decoder_layers {
            let p = format!("decoder.block.{i}.layer");
            decoder.push(DecoderBlock {
                self_attn_norm: norm(format!("{p}.0.layer_norm"), NormRole::Attention)?,
                self_attn: attention(format!("{p}.0.SelfAttention"))?,
                cross_attn_norm: norm(format!("{p}.1.layer_norm"), NormRole::CrossAttention)?,
                cross_attn: attention(format!("{p}.1.EncDecAttention"))?,
                ff_norm: norm(format!("{p}.2.layer_norm"), NormRole::FeedForward)?,
                ff: feed_forward(format!("{p}.2.DenseReluDense"))?,
            });
        }
        let rel = |stack: &str| {
            weights.get(
                &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )
        };
        // transformers ≥ 5 ties `lm_head` to `shared` unless the checkpoint holds its own.
        let lm_head = if weights.contains("lm_head.weight") { weights.get("lm_head.weight", &[v, d])? } else { shared.clone() };
        let scale = cfg.scale_decoder_outputs;
        Ok(Self {
            config: cfg.clone(),
            device: device.clone(),
            encoder_rel_bias: rel("encoder")?,
            decoder_rel_bias: rel("decoder")?,
            encoder_final_norm: norm("encoder.final_layer_norm".into(), NormRole::Final)?,
            decoder_final_norm: norm("decoder.final_layer_norm".into(), NormRole::Final)?,
            shared,
            encoder,
            decoder,
            lm_head,
            output_scale: scale.then(|| (d as f64).powf(-0.5)),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.shared.dtype()
    }

    /// `(vocab, d_model)` output projection (before the optional scaling of its input).
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        Ok(self.shared.index_select(&flat, 0)?.reshape((b, t, self.config.d_model))?)
    }

    /// The relative position bias `(1, heads, t_q, t_k)` of a stack for queries at positions
    /// `offset..offset + t_q` and keys at `0..t_k`: a frozen constant.
    fn position_bias(&self, table: &Tensor, t_q: usize, t_k: usize, offset: usize, bidirectional: bool) -> Result<Tensor> {
        let cfg = &self.config;
        let mut ids = Vec::with_capacity(t_q * t_k);
        for i in 0..t_q {
            for j in 0..t_k {
                let rel = j as i64 - (i + offset) as i64;
                ids.push(relative_position_bucket(rel, bidirectional, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance));
            }
        }
        let ids = Tensor::from_vec(ids, t_q * t_k, table.device())?;
        let bias = table.index_select(&ids, 0)?.reshape((t_q, t_k, cfg.num_heads))?.permute((2, 0, 1))?.contiguous()?;
        Ok(bias.unsqueeze(0)?)
    }

    /// `x: (b, t, d_model) -> (b, heads, t, d_kv)`.
    fn heads(&self, layer: &Arc<dyn LinearLayer>, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let y = layer.forward_t(x, train)?;
        Ok(y.reshape((b, t, self.config.num_heads, self.config.d_kv))?.transpose(1, 2)?.contiguous()?)
    }

    /// `softmax(q·kᵀ + bias + mask)·v` then `o`: `q: (b, h, t_q, d_kv)`, `k, v: (b, h, t_k, d_kv)`
    /// → `(b, t_q, d_model)`. No `1/sqrt(d)` scaling.
    #[allow(clippy::too_many_arguments)]
    fn attend(&self, attn: &Attention, q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, mask: &AttentionMask, train: bool) -> Result<Tensor> {
        let (b, h, t, dk) = q.dims4()?;
        let mut scores = q.matmul(&k.t()?)?; // (b, h, t_q, t_k)
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = masked_softmax(&scores, mask, 1.0)?;
        let ctx = probs.matmul(v)?; // (b, h, t_q, d_kv)
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, h * dk))?;
        Ok(attn.o.forward_t(&ctx, train)?)
    }

    /// The encoder's last hidden state: `input_ids: (b, s)`, `attention_mask: (b, s)` (1 = token,
    /// 0 = padding) → `(b, s, d_model)`.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let keep = key_keep(attention_mask)?;
        self.encode_keep(input_ids, keep, train)
    }

    fn encode_keep(&self, input_ids: &Tensor, keep: Option<KeyKeep>, train: bool) -> Result<Tensor> {
        let (_, s) = input_ids.dims2()?;
        let mut h = self.embed(input_ids)?;
        let mask = AttentionMask { t_q: s, offset: 0, key_keep: keep, causal: false };
        let bias = self.position_bias(&self.encoder_rel_bias, s, s, 0, true)?;
        for block in &self.encoder {
            let x = block.self_attn_norm.forward(&h)?;
            let q = self.heads(&block.self_attn.q, &x, train)?;
            let k = self.heads(&block.self_attn.k, &x, train)?;
            let v = self.heads(&block.self_attn.v, &x, train)?;
            let a = self.attend(&block.self_attn, &q, &k, &v, Some(&bias), &mask, train)?;
            h = (h + a)?;
            let x = block.ff_norm.forward(&h)?;
            h = (&h + block.ff.forward(&x, train)?)?;
        }
        Ok(self.encoder_final_norm.forward(&h)?)
    }

    /// The decoder's last hidden state (after the final norm) for `decoder_ids: (b, t)` at
    /// positions `cache.len()..` (0 without a cache), attending to `encoder_hidden: (b, s, d)`.
    fn decode_hidden(&self, decoder_ids: &Tensor, encoder_hidden: &Tensor, encoder_keep: Option<KeyKeep>, train: bool, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (_, t) = decoder_ids.dims2()?;
        let n = self.decoder.len();
        let offset = match cache.as_deref_mut() {
            Some(c) => {
                if c.layers.len() < n {
                    c.layers.resize(n, None);
                }
                if c.cross.len() < n {
                    c.cross.resize(n, None);
                }
                c.len()
            }
            None => 0,
        };
        let mut h = self.embed(decoder_ids)?;
        let self_mask = AttentionMask { t_q: t, offset, key_keep: None, causal: true };
        let cross_mask = AttentionMask { t_q: t, offset: 0, key_keep: encoder_keep, causal: false };
        let bias = self.position_bias(&self.decoder_rel_bias, t, offset + t, offset, false)?;
        for (li, block) in self.decoder.iter().enumerate() {
            // Causal self-attention with the relative position bias.
            let x = block.self_attn_norm.forward(&h)?;
            let q = self.heads(&block.self_attn.q, &x, train)?;
            let k = self.heads(&block.self_attn.k, &x, train)?;
            let v = self.heads(&block.self_attn.v, &x, train)?;
            let (k, v) = crate::kv_cache::extend_kv(cache.as_deref_mut().map(|c| &mut c.layers[li]), k, v)?;
            let a = self.attend(&block.self_attn, &q, &k, &v, Some(&bias), &self_mask, train)?;
            h = (h + a)?;
            // Cross-attention over the encoder output: no position bias, only its padding mask.
            let x = block.cross_attn_norm.forward(&h)?;
            let q = self.heads(&block.cross_attn.q, &x, train)?;
            let cached = cache.as_deref().and_then(|c| c.cross[li].clone());
            let (k, v) = match cached {
                Some(kv) => kv,
                None => {
                    let k = self.heads(&block.cross_attn.k, encoder_hidden, train)?;
                    let v = self.heads(&block.cross_attn.v, encoder_hidden, train)?;
                    if let Some(c) = cache.as_deref_mut() {
                        c.cross[li] = Some((k.clone(), v.clone()));
                    }
                    (k, v)
                }
            };
            let a = self.attend(&block.cross_attn, &q, &k, &v, None, &cross_mask, train)?;
            h = (h + a)?;
            let x = block.ff_norm.forward(&h)?;
            h = (&h + block.ff.forward(&x, train)?)?;
        }
        Ok(self.decoder_final_norm.forward(&h)?)
    }

    /// Logits from decoder hidden states: `(..., d_model) -> (..., vocab)`, scaled by
    /// `d_model^-0.5` first when the head is the tied embedding (v1.0).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = match self.output_scale {
            Some(s) => hidden.affine(s, 0.0)?,
            None => hidden.clone(),
        };
        Ok(frozen_matmul(&h, &self.lm_head)?)
    }

    /// Decoder logits for the whole sequence `decoder_input_ids: (b, t)` given the encoder output
    /// `(b, s, d_model)` and its mask `(b, s)` → `(b, t, vocab)`.
    pub fn decode_logits(&self, encoder_hidden: &Tensor, encoder_mask: Option<&Tensor>, decoder_input_ids: &Tensor, train: bool) -> Result<Tensor> {
        let keep = key_keep(encoder_mask)?;
        let h = self.decode_hidden(decoder_input_ids, encoder_hidden, keep, train, None)?;
        self.logits(&h)
    }

    /// Decoder inputs and targets from `labels` as Hugging Face's `_shift_right`: rows padded to
    /// the longest with `IGNORE_INDEX`; the decoder reads the start token then `labels[..t-1]`
    /// with `IGNORE_INDEX` replaced by the pad id. Returns `(decoder_input_ids (b, t), padded labels)`.
    pub fn shift_right(&self, labels: &[Vec<i64>]) -> Result<(Tensor, Vec<Vec<i64>>)> {
        let b = labels.len();
        let t = labels.iter().map(|r| r.len()).max().unwrap_or(0);
        let padded: Vec<Vec<i64>> = labels.iter().map(|r| r.iter().copied().chain(std::iter::repeat(IGNORE_INDEX)).take(t).collect()).collect();
        let mut ids = Vec::with_capacity(b * t);
        for row in &padded {
            for i in 0..t {
                let id = if i == 0 {
                    self.config.decoder_start_token_id as i64
                } else {
                    match row[i - 1] {
                        IGNORE_INDEX => self.config.pad_token_id as i64,
                        x if x < 0 || x as usize >= self.config.vocab_size => {
                            return Err(ModelError::Invalid(format!("label {x} is outside the vocabulary of {}", self.config.vocab_size)))
                        }
                        x => x,
                    }
                };
                ids.push(id as u32);
            }
        }
        Ok((Tensor::from_vec(ids, (b, t), &self.device)?, padded))
    }

    /// All decoder logits `(b, t, vocab)` for encoder `input_ids: (b, s)` with `attention_mask`
    /// and decoder targets `labels` (the decoder reads them shifted right).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], train: bool) -> Result<Tensor> {
        let (dec, _) = self.shift_right(labels)?;
        let keep = key_keep(attention_mask)?;
        let enc = self.encode_keep(input_ids, keep.clone(), train)?;
        let h = self.decode_hidden(&dec, &enc, keep, train, None)?;
        self.logits(&h)
    }

    /// Sequence-to-sequence loss as Hugging Face computes it: position i of the decoder predicts
    /// `labels[i]`; `IGNORE_INDEX` labels are skipped. Returns `(sum of token losses, tokens)`;
    /// logits are only computed at positions that have a target.
    pub fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        let (b, _) = input_ids.dims2()?;
        if labels.len() != b {
            return Err(ModelError::Invalid(format!("{} label rows for a batch of {b}", labels.len())));
        }
        let keep = key_keep(attention_mask)?;
        let enc = self.encode_keep(input_ids, keep.clone(), train)?;
        let (dec, padded) = self.shift_right(labels)?;
        let t = dec.dim(1)?;
        if t == 0 {
            return Ok((enc.sum_all()?.affine(0.0, 0.0)?, 0));
        }
        let h = self.decode_hidden(&dec, &enc, keep, train, None)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (bi, row) in padded.iter().enumerate() {
            for (i, &target) in row.iter().enumerate() {
                if target != IGNORE_INDEX {
                    rows.push((bi * t + i) as u32);
                    targets.push(target);
                }
            }
        }
        if rows.is_empty() {
            return Ok((h.sum_all()?.affine(0.0, 0.0)?, 0));
        }
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, h.device())?;
        let hs = h.reshape((b * t, self.config.d_model))?.index_select(&idx, 0)?;
        let logits = self.logits(&hs)?;
        let loss = crate::ops::cross_entropy_sum(&logits, &targets, label_smoothing)?;
        Ok((loss, n))
    }

    /// Incremental decoding (see [`CausalLm::next_logits`]): with no encoder state in `cache`,
    /// `input_ids` is the (left-padded) prompt, which is encoded and stored, and the decoder reads
    /// the start token; afterwards `input_ids: (b, t_new)` are decoder tokens (the mask is not
    /// needed then: the encoder's padding mask is kept in the cache). Returns `(b, vocab)`.
    pub fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        let dec_ids = match &cache.encoder {
            Some(_) => input_ids.clone(),
            None => {
                let (b, s) = input_ids.dims2()?;
                let keep = match key_keep(attention_mask)? {
                    Some(k) if k.len() == b && k.iter().all(|r| r.len() == s) => k,
                    Some(_) => return Err(ModelError::Invalid(format!("the prompt's attention mask must be ({b}, {s})"))),
                    None => Arc::new(vec![vec![1u8; s]; b]),
                };
                let hidden = self.encode_keep(input_ids, Some(keep.clone()), false)?;
                cache.layers = vec![None; self.decoder.len()];
                cache.cross = vec![None; self.decoder.len()];
                cache.encoder = Some(EncoderState { hidden, keep });
                Tensor::full(self.config.decoder_start_token_id, (b, 1), &self.device)?
            }
        };
        let enc = cache.encoder.clone().ok_or_else(|| ModelError::Invalid("no encoder state".into()))?;
        let h = self.decode_hidden(&dec_ids, &enc.hidden, Some(enc.keep.clone()), false, Some(cache))?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?)
    }
}

impl CausalLm for T5 {
    fn device(&self) -> &Device {
        &self.device
    }
    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        T5::loss_sum(self, input_ids, attention_mask, labels, label_smoothing, train)
    }
    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        T5::next_logits(self, input_ids, attention_mask, cache)
    }
    fn decoder_start_id(&self) -> Option<u32> {
        Some(self.config.decoder_start_token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    /// Distances at which the bucket changes, from transformers 5.23's
    /// `T5Attention._relative_position_bucket` over relative positions −2000..=2000.
    #[test]
    fn buckets_match_transformers() {
        let cases: &[(usize, usize, bool, &[i64], u32)] = &[
            (32, 128, true, &[1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 23, 32, 46, 64, 91], 15),
            (32, 128, false, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113], 31),
            (32, 64, true, &[1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 18, 23, 30, 39, 50], 15),
            (32, 64, false, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 23, 25, 27, 30, 32, 35, 39, 42, 46, 50, 54, 59], 31),
            (8, 20, true, &[1, 2, 7], 3),
            (8, 20, false, &[1, 2, 3, 4, 6, 9, 14], 7),
            (16, 50, true, &[1, 2, 3, 4, 8, 15, 27], 7),
            (16, 50, false, &[1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 16, 20, 26, 32, 40], 15),
            (
                64,
                256,
                true,
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 23, 27, 32, 39, 46, 54, 64, 77, 91, 108, 128, 153, 182, 216],
                31,
            ),
            (
                64,
                256,
                false,
                &[
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 35, 37, 39, 42, 45, 48, 51, 54, 58, 62, 66, 70, 75,
                    80, 85, 91, 97, 104, 110, 118, 126, 134, 143, 153, 163, 174, 185, 198, 211, 225, 240,
                ],
                63,
            ),
            (6, 7, true, &[1, 3], 2),
            (6, 7, false, &[1, 2, 3, 4, 6], 5),
        ];
        for &(nb, md, bidi, bounds, last) in cases {
            // Expected bucket of distance d on the negative side: the number of bounds ≤ d.
            let half = if bidi { nb as u32 / 2 } else { 0 };
            for d in 0..=2000i64 {
                let want = bounds.iter().filter(|&&x| x <= d).count() as u32;
                assert_eq!(relative_position_bucket(-d, bidi, nb, md), want, "nb {nb} md {md} bidi {bidi} rp -{d}");
                if bidi && d > 0 {
                    assert_eq!(relative_position_bucket(d, bidi, nb, md), half + want, "nb {nb} md {md} rp +{d}");
                } else if !bidi && d > 0 {
                    assert_eq!(relative_position_bucket(d, bidi, nb, md), 0);
                }
            }
            assert_eq!(relative_position_bucket(-2000, bidi, nb, md), last);
        }
    }
}
