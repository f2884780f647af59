//! A Llama-family decoder for generation on the CPU, outside candle's graph: plain f32 buffers,
//! the weights read in the form they were loaded in (a GGUF model's 4-bit blocks stay 4-bit,
//! see [`super::weight_product`]), one parallel pass per group of projections that share an
//! input (q|k|v, o, gate|up, down, the head) and keys/values kept per row in host memory.
//! LoRA adapters may stay unmerged: `y = W x + s·B(A x)` with A, B in f32.
//!
//! It computes what [`crate::llama::Llama`] computes (the same positions and padding
//! convention: positions are columns, left padding is masked), to f32 rounding; the tests
//! compare the two.
use super::spin_team::SpinTeam;
use super::attention::{attend_head, dot};
use super::int8_blocks::Int8Blocks;
use super::weight_product::{multiply_then_read_ahead, DecodeWeight};
use crate::causal_lm::CausalLm;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::frozen_weight::FrozenWeight;
use crate::kv_cache::{HostKv, HostRowKv, KvCache};
use crate::packed_matrix::{BlockFormat, PackedMatrix};
use crate::weights::Weights;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An unmerged LoRA branch in f32: `a: (r, d_in)`, `b: (d_out, r)`, added as `scale · B(A x)`.
#[derive(Clone, Debug)]
pub struct LoraBranch {
    pub r: usize,
    pub scale: f32,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// A linear layer of the decoder: `x: (n, d_in) -> (n, d_out)`.
struct Projection {
    weight: DecodeWeight,
    bias: Option<Vec<f32>>,
    lora: Option<Branch>,
}

/// A LoRA branch as the decoder applies it: `a: (r, d_in)` pre-multiplied by the scale and
/// `b_t = Bᵀ: (r, d_out)`, so `y += Σ_k (s·A x)_k · b_t[k]` runs along contiguous rows.
struct Branch {
    r: usize,
    a: Arc<Vec<f32>>,
    b_t: Arc<Vec<f32>>,
}

impl Branch {
    fn new(l: &LoraBranch, d_out: usize) -> Self {
        let b_t = Arc::new((0..l.r).flat_map(|k| (0..d_out).map(move |o| l.b[o * l.r + k])).collect());
        Self { r: l.r, a: Arc::new(l.a.iter().map(|v| v * l.scale).collect()), b_t }
    }
}

impl Projection {
    /// Bias and LoRA branch added to `y: (n, d_out)`, the base product of `x: (n, d_in)`.
    fn finish(&self, x: &[f32], y: &mut [f32]) {
        let (d_out, d_in) = self.weight.dims();
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(d_out) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        if let Some(l) = &self.lora {
            add_lora(&l.a, &l.b_t, l.r, x, d_in, y, d_out);
        }
    }
}

crate::ops::cpu_util::simd_versions! {
    /// `y: (n, d_out) += (x A_sᵀ) B` for `x: (n, d_in)`, `a: (r, d_in)` (scaled), `b_t: (r, d_out)`.
    pub fn add_lora(a: &[f32], b_t: &[f32], r: usize, x: &[f32], d_in: usize, y: &mut [f32], d_out: usize) -> () {
        for (xj, yj) in x.chunks_exact(d_in).zip(y.chunks_exact_mut(d_out)) {
            for k in 0..r {
                let ax = dot(&a[k * d_in..(k + 1) * d_in], xj);
                for (yo, &b) in yj.iter_mut().zip(&b_t[k * d_out..(k + 1) * d_out]) {
                    *yo += ax * b;
                }
            }
        }
    }
}

/// What the projections `ps` read from memory, their LoRA branches first (each is read right
/// after the product, on the caller's thread), then their weights.
fn memory_of(ps: &[&Projection]) -> Vec<DecodeWeight> {
    let mut m = Vec::with_capacity(3 * ps.len());
    for p in ps {
        if let Some(l) = &p.lora {
            let (d_out, d_in) = p.weight.dims();
            m.push(DecodeWeight::Dense { rows: l.r, cols: d_in, values: l.a.clone() });
            m.push(DecodeWeight::Dense { rows: l.r, cols: d_out, values: l.b_t.clone() });
        }
    }
    m.extend(ps.iter().map(|p| p.weight.clone()));
    m
}

/// Products of several projections that read the same input, in one parallel pass; then, where
/// that pays, the weights of `next` (the next pass's) are read ahead while the caller goes on.
fn project(ps: &[&Projection], x: &[f32], n: usize, team: &SpinTeam, next: Vec<DecodeWeight>) -> Vec<Vec<f32>> {
    let weights: Vec<&DecodeWeight> = ps.iter().map(|p| &p.weight).collect();
    let mut ys = multiply_then_read_ahead(&weights, x, n, Some(team), next);
    for (p, y) in ps.iter().zip(ys.iter_mut()) {
        p.finish(x, y);
    }
    ys
}

struct Layer {
    input_layernorm: Vec<f32>,
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    post_attention_layernorm: Vec<f32>,
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

/// The CPU decoder; see the module documentation.
pub struct LlamaDecoder {
    config: LlamaConfig,
    /// `(vocab, hidden)` f32, read a row per input token.
    embed_tokens: Arc<Vec<f32>>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: DecodeWeight,
    /// `(max_pos, head_dim / 2)` each: the rotary angles' cosines and sines.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The threads of the weight products (as many as rayon's pool has).
    team: SpinTeam,
    device: Device,
}

/// How the decoder stores the linear weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeFormat {
    /// As loaded: GGUF blocks stay as they are, f32 stays f32; a dense head (or tied embedding)
    /// whose values are all Q8_0 values (a GGUF's Q8_0 embedding, dequantized on load) is kept
    /// as Q8_0, which loses nothing.
    AsLoaded,
    /// Weights held in f32 quantized to this format, weights already in blocks (a GGUF's, a
    /// head whose values are Q8_0 values) kept as they are, never rounded twice; activations
    /// rounded to 8 bits for the products, as llama.cpp computes: faster, approximate
    /// (`--quantize`). The input embedding stays as loaded.
    Quantize(BlockFormat),
}

fn dense_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn ggml(f: BlockFormat) -> GgmlDType {
    match f {
        BlockFormat::Q4_0 => GgmlDType::Q4_0,
        BlockFormat::Q4_1 => GgmlDType::Q4_1,
        BlockFormat::Q8_0 => GgmlDType::Q8_0,
    }
}

/// `values: (rows, cols)` quantized to `f` for 8-bit products (kept dense in f32 when `cols` is
/// not whole blocks).
fn quantized(values: Vec<f32>, rows: usize, cols: usize, f: BlockFormat) -> Result<DecodeWeight> {
    if cols % crate::packed_matrix::BLOCK_LEN != 0 {
        return Ok(DecodeWeight::Dense { rows, cols, values: Arc::new(values) });
    }
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
    let q = QTensor::quantize(&t, ggml(f))?;
    match PackedMatrix::from_qtensor(&q)? {
        Some(p) => Ok(DecodeWeight::Int8(Arc::new(Int8Blocks::from_packed(&p)))),
        None => Err(ModelError::Invalid(format!("cannot pack a ({rows}, {cols}) matrix as {}", f.name()))),
    }
}

fn decode_weight(w: FrozenWeight, format: DecodeFormat) -> Result<DecodeWeight> {
    let (rows, cols) = w.dims2()?;
    match (w, format) {
        (FrozenWeight::Packed(p), DecodeFormat::AsLoaded) => Ok(DecodeWeight::Packed(p)),
        // Already in blocks (a GGUF's): kept as stored, never rounded a second time.
        (FrozenWeight::Packed(p), DecodeFormat::Quantize(_)) => Ok(DecodeWeight::Int8(Arc::new(Int8Blocks::from_packed(&p)))),
        (FrozenWeight::Dense(t), DecodeFormat::AsLoaded) => Ok(DecodeWeight::Dense { rows, cols, values: Arc::new(dense_values(&t)?) }),
        (FrozenWeight::Dense(t), DecodeFormat::Quantize(f)) => quantized(dense_values(&t)?, rows, cols, f),
    }
}

impl LlamaDecoder {
    /// Builds the decoder from `weights`; `lora` holds unmerged branches by module path
    /// (`model.layers.0.self_attn.q_proj`).
    pub fn new(config: &LlamaConfig, weights: &Weights, lora: &BTreeMap<String, LoraBranch>, format: DecodeFormat) -> Result<Self> {
        let cfg = config;
        let (d, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        if hd % 2 != 0 || cfg.num_key_value_heads == 0 || cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
            return Err(ModelError::Invalid(format!("CPU decoder: head_dim {hd} with {} heads over {} key/value heads", cfg.num_attention_heads, cfg.num_key_value_heads)));
        }
        let mut used = 0usize;
        let mut projection = |path: String, d_in: usize, d_out: usize, bias: bool| -> Result<Projection> {
            let weight = decode_weight(weights.frozen(&format!("{path}.weight"), &[d_out, d_in])?, format)?;
            let bias = if bias { Some(dense_values(&weights.get(&format!("{path}.bias"), &[d_out])?)?) } else { None };
            let lora = match lora.get(&path) {
                Some(l) => {
                    if l.r == 0 || l.a.len() != l.r * d_in || l.b.len() != d_out * l.r {
                        return Err(ModelError::ShapeMismatch {
                            name: format!("{path} (LoRA A {} values, B {} values, r = {})", l.a.len(), l.b.len(), l.r),
                            expected: vec![l.r, d_in, d_out, l.r],
                            actual: vec![l.a.len(), l.b.len()],
                        });
                    }
                    used += 1;
                    Some(Branch::new(l, d_out))
                }
                None => None,
            };
            Ok(Projection { weight, bias, lora })
        };
        let (qd, kvd, ff) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let b = cfg.attention_bias;
            layers.push(Layer {
                input_layernorm: dense_values(&weights.get(&format!("{p}.input_layernorm.weight"), &[d])?)?,
                q_proj: projection(format!("{p}.self_attn.q_proj"), d, qd, b)?,
                k_proj: projection(format!("{p}.self_attn.k_proj"), d, kvd, b)?,
                v_proj: projection(format!("{p}.self_attn.v_proj"), d, kvd, b)?,
                o_proj: projection(format!("{p}.self_attn.o_proj"), qd, d, false)?,
                post_attention_layernorm: dense_values(&weights.get(&format!("{p}.post_attention_layernorm.weight"), &[d])?)?,
                gate_proj: projection(format!("{p}.mlp.gate_proj"), d, ff, false)?,
                up_proj: projection(format!("{p}.mlp.up_proj"), d, ff, false)?,
                down_proj: projection(format!("{p}.mlp.down_proj"), ff, d, false)?,
            });
        }
        if used != lora.len() {
            let unknown: Vec<&String> = lora.keys().filter(|k| !k.starts_with("model.layers.")).collect();
            return Err(ModelError::Invalid(format!("CPU decoder: {} of {} LoRA branches match no linear layer (e.g. {unknown:?})", lora.len() - used, lora.len())));
        }
        let norm = dense_values(&weights.get("model.norm.weight", &[d])?)?;
        let embed_values = Arc::new(dense_values(&weights.get("model.embed_tokens.weight", &[v, d])?)?);
        let embed_tokens = embed_values.clone();
        let tied = !(weights.contains("lm_head.weight") && !cfg.tie_word_embeddings);
        let head_values = if tied { embed_values } else { Arc::new(dense_values(&weights.get("lm_head.weight", &[v, d])?)?) };
        let lm_head = match format {
            DecodeFormat::AsLoaded => match PackedMatrix::q8_0_if_exact(&head_values, v, d) {
                Some(p) => DecodeWeight::Packed(Arc::new(p)),
                None => DecodeWeight::Dense { rows: v, cols: d, values: head_values },
            },
            DecodeFormat::Quantize(f) => match PackedMatrix::q8_0_if_exact(&head_values, v, d) {
                Some(p) => DecodeWeight::Int8(Arc::new(Int8Blocks::from_packed(&p))),
                None => quantized(head_values.to_vec(), v, d, f)?,
            },
        };
        // As the training model builds its tables: f32 inverse frequencies times f32 positions.
        let inv: Vec<f32> = crate::llama::inv_freqs(cfg).into_iter().map(|f| f as f32).collect();
        let max_pos = cfg.max_position_embeddings.max(1);
        let (mut cos, mut sin) = (Vec::with_capacity(max_pos * hd / 2), Vec::with_capacity(max_pos * hd / 2));
        for p in 0..max_pos {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self { config: cfg.clone(), embed_tokens, layers, norm, lm_head, cos, sin, team: SpinTeam::new(rayon::current_num_threads()), device: Device::Cpu })
    }

    /// Bytes of weights read per decoded token (every linear layer and the head once).
    pub fn bytes_per_token(&self) -> usize {
        let per_layer = |l: &Layer| [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj].iter().map(|p| p.weight.stored_bytes()).sum::<usize>();
        self.layers.iter().map(per_layer).sum::<usize>() + self.lm_head.stored_bytes()
    }

    /// `x: (n, d)` normalised in place by `weight`.
    fn rms_norm(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let eps = self.config.rms_norm_eps as f32;
        let d = weight.len();
        let mut out = vec![0f32; x.len()];
        for (xr, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            for ((o, &xv), &w) in o.iter_mut().zip(xr).zip(weight) {
                *o = xv * r * w;
            }
        }
        out
    }

    /// Rotates each head of `x: (n, heads · hd)`; vector `j` sits at position `pos(j)`.
    fn rotate(&self, x: &mut [f32], heads: usize, pos: impl Fn(usize) -> usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        for (j, v) in x.chunks_exact_mut(heads * hd).enumerate() {
            let p = pos(j);
            let (c, s) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
            for head in v.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (x1, x2) = (head[i], head[i + half]);
                    head[i] = x1 * c[i] - x2 * s[i];
                    head[i + half] = x2 * c[i] + x1 * s[i];
                }
            }
        }
    }

    /// Logits of the last new position of each row: `ids: b rows of t` new tokens after
    /// `cache.len` positions, `keep: b rows of cache.len + t` (0 marks padding) → `(b, vocab)`.
    pub fn step(&self, ids: &[u32], b: usize, t: usize, keep: &[Vec<u8>], cache: &mut HostKv) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (d, hd, heads, kvh) = (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads);
        let (qd, kvd, group) = (heads * hd, kvh * hd, heads / kvh);
        let offset = cache.len;
        if ids.len() != b * t || keep.len() != b || keep.iter().any(|k| k.len() != offset + t) {
            return Err(ModelError::Invalid(format!("CPU decoder: {} ids for {b} rows of {t}, mask rows must hold {} positions", ids.len(), offset + t)));
        }
        if offset + t > cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!("sequence of {} tokens exceeds max_position_embeddings = {}", offset + t, cfg.max_position_embeddings)));
        }
        let slots = self.layers.len() * kvh;
        if cache.rows.is_empty() {
            cache.rows = vec![HostRowKv { keys: vec![Vec::new(); slots], values: vec![Vec::new(); slots] }; b];
        } else if cache.rows.len() != b {
            return Err(ModelError::Invalid(format!("CPU decoder: {b} rows, the cache holds {}", cache.rows.len())));
        } else if cache.rows.iter().any(|r| r.keys.len() != slots || r.values.len() != slots) {
            return Err(ModelError::Invalid(format!("CPU decoder: the cache was not made for {} layers of {kvh} key/value heads", self.layers.len())));
        }
        let n = b * t;
        let mut h = vec![0f32; n * d];
        for (j, &id) in ids.iter().enumerate() {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::Invalid(format!("token id {id} is outside the vocabulary of {}", cfg.vocab_size)));
            }
            let id = id as usize;
            h[j * d..(j + 1) * d].copy_from_slice(&self.embed_tokens[id * d..(id + 1) * d]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let total = offset + t;
        // The positions each new token sees (the same in every layer).
        let visible: Vec<Vec<usize>> = (0..n).map(|j| (0..=offset + j % t).filter(|&p| keep[j / t][p] != 0).collect()).collect();
        for (li, layer) in self.layers.iter().enumerate() {
            let x = self.rms_norm(&h, &layer.input_layernorm);
            let mut qkv = project(&[&layer.q_proj, &layer.k_proj, &layer.v_proj], &x, n, &self.team, memory_of(&[&layer.o_proj])).into_iter();
            let (mut q, mut k, v) = (qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default());
            self.rotate(&mut q, heads, |j| offset + j % t);
            self.rotate(&mut k, kvh, |j| offset + j % t);
            for (row, kv) in cache.rows.iter_mut().enumerate() {
                for p in row * t..(row + 1) * t {
                    for g in 0..kvh {
                        let at = p * kvd + g * hd;
                        kv.keys[li * kvh + g].extend_from_slice(&k[at..at + hd]);
                        kv.values[li * kvh + g].extend_from_slice(&v[at..at + hd]);
                    }
                }
            }
            // Attention of each new position (row, i) over the row's kept positions ≤ offset + i,
            // one head a unit of work, on the team when there is enough of it.
            let mut ctx = vec![0f32; n * qd];
            let rows = &cache.rows;
            let unit = |scores: &mut Vec<f32>, u: usize, out: &mut [f32]| {
                let (j, hh) = (u / heads, u % heads);
                let row = &rows[j / t];
                let q_h = &q[j * qd + hh * hd..j * qd + (hh + 1) * hd];
                let slot = li * kvh + hh / group;
                attend_head(q_h, &row.keys[slot], &row.values[slot], &visible[j], scale, scores, out);
            };
            if n * heads * total * hd < 1 << 12 || self.team.threads() == 1 {
                let mut scores = Vec::new();
                ctx.chunks_mut(hd).enumerate().for_each(|(u, out)| unit(&mut scores, u, out));
            } else {
                let mut units: Vec<&mut [f32]> = ctx.chunks_mut(hd).collect();
                let per_claim = units.len() / (self.team.threads() * 8);
                self.team.share_out(&mut units, per_claim, Vec::new, &|scores, u, out| unit(scores, u, out), None);
            }
            let o = project(&[&layer.o_proj], &ctx, n, &self.team, memory_of(&[&layer.gate_proj, &layer.up_proj])).pop().unwrap_or_default();
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let x = self.rms_norm(&h, &layer.post_attention_layernorm);
            let mut gu = project(&[&layer.gate_proj, &layer.up_proj], &x, n, &self.team, memory_of(&[&layer.down_proj])).into_iter();
            let (gate, up) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default());
            let mut act = vec![0f32; gate.len()];
            super::elementwise::swiglu_into(&gate, &up, &mut act);
            let next = match self.layers.get(li + 1) {
                Some(l) => memory_of(&[&l.q_proj, &l.k_proj, &l.v_proj]),
                None => vec![self.lm_head.clone()],
            };
            let m = project(&[&layer.down_proj], &act, n, &self.team, next).pop().unwrap_or_default();
            h.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        }
        cache.len = total;
        let mut last = Vec::with_capacity(b * d);
        for row in 0..b {
            last.extend_from_slice(&h[(row * t + t - 1) * d..(row * t + t) * d]);
        }
        let last = self.rms_norm(&last, &self.norm);
        // The next step starts with the first layer's q, k, v.
        let next = self.layers.first().map(|l| memory_of(&[&l.q_proj, &l.k_proj, &l.v_proj])).unwrap_or_default();
        Ok(multiply_then_read_ahead(&[&self.lm_head], &last, b, Some(&self.team), next).pop().unwrap_or_default())
    }
}

impl CausalLm for LlamaDecoder {
    fn device(&self) -> &Device {
        &self.device
    }

    fn loss_sum(&self, _input_ids: &Tensor, _attention_mask: Option<&Tensor>, _labels: &[Vec<i64>], _label_smoothing: f32, _train: bool) -> Result<(Tensor, usize)> {
        Err(ModelError::Invalid("the CPU decoder generates text only; losses are computed by the training model".into()))
    }

    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let host = cache.host.get_or_insert_with(HostKv::default);
        let keep: Vec<Vec<u8>> = match attention_mask {
            Some(m) => m.to_dtype(DType::U32)?.to_vec2::<u32>()?.into_iter().map(|r| r.into_iter().map(|v| u8::from(v != 0)).collect()).collect(),
            None => vec![vec![1u8; host.len + t]; b],
        };
        let logits = self.step(&ids, b, t, &keep, host)?;
        Ok(Tensor::from_vec(logits, (b, self.config.vocab_size), &self.device)?)
    }
}
