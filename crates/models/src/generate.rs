//! Autoregressive decoding with a KV cache: greedy and sampling (temperature, top-k, top-p).
use crate::error::Result;
use crate::causal_lm::CausalLm;
use crate::llama::KvCache;
use candle_core::{DType, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// `None` or 0: greedy.
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Generation stops for a row when it emits one of these.
    pub stop_ids: Vec<u32>,
    /// Keep going to `max_new_tokens` even after a stop id (for tests against `min_new_tokens`).
    pub ignore_stop: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: None, top_k: None, top_p: None, seed: 0, stop_ids: vec![], ignore_stop: false }
    }
}

/// A small deterministic generator (SplitMix64) so a seed fixes the samples on every platform.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks a token from one row of logits.
pub fn sample_token(logits: &[f32], p: &SamplingParams, rng: &mut SplitMix64) -> u32 {
    let greedy = p.temperature.map(|t| t <= 0.0).unwrap_or(true);
    if greedy {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let temp = p.temperature.unwrap_or(1.0);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
    if let Some(k) = p.top_k.filter(|&k| k > 0) {
        idx.truncate(k);
    }
    let max = logits[idx[0]] as f64;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / temp).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    if let Some(top_p) = p.top_p.filter(|&v| v < 1.0) {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
    }
    let r = rng.next_f64();
    let mut cum = 0.0;
    for (j, &pr) in probs.iter().enumerate() {
        cum += pr;
        if r < cum {
            return idx[j] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

/// Generates continuations of `prompts` (each a list of ids), batched with left padding.
/// Returns only the new ids of each row (stop id excluded).
pub fn generate(model: &dyn CausalLm, prompts: &[Vec<u32>], p: &SamplingParams, pad_id: u32) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let dev = model.device();
    let max_len = prompts.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(b * max_len);
    let mut mask = Vec::with_capacity(b * max_len);
    for pr in prompts {
        let pad = max_len - pr.len();
        ids.extend(std::iter::repeat(pad_id).take(pad).chain(pr.iter().copied()));
        mask.extend(std::iter::repeat(0u32).take(pad).chain(std::iter::repeat(1).take(pr.len())));
    }
    let mut rng = SplitMix64(p.seed);
    let mut cache = KvCache::default();
    let mut out: Vec<Vec<u32>> = vec![vec![]; b];
    let mut done = vec![false; b];
    let mut input = Tensor::from_vec(ids, (b, max_len), dev)?;
    for _ in 0..p.max_new_tokens {
        let mask_t = Tensor::from_vec(mask.clone(), (b, mask.len() / b), dev)?;
        let logits = model.next_logits(&input, Some(&mask_t), &mut cache)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (row, l) in logits.iter().enumerate() {
            let tok = if done[row] { pad_id } else { sample_token(l, p, &mut rng) };
            if !done[row] {
                if !p.ignore_stop && p.stop_ids.contains(&tok) {
                    done[row] = true;
                } else {
                    out[row].push(tok);
                }
            }
            next.push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // Append the new column to the mask: (b, t) -> (b, t + 1).
        let t = mask.len() / b;
        let mut m2 = Vec::with_capacity(b * (t + 1));
        for row in 0..b {
            m2.extend_from_slice(&mask[row * t..(row + 1) * t]);
            m2.push(1);
        }
        mask = m2;
        input = Tensor::from_vec(next, (b, 1), dev)?;
    }
    Ok(out)
}
