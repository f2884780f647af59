//! Beam search with a KV cache, batched over prompts (left padding), following the semantics of
//! Hugging Face transformers' `generate(num_beams > 1, do_sample=False)` (the vectorised
//! `_beam_search` of transformers ≥ 4.50 / 5.x):
//!
//! * each step the next-token scores are `log_softmax(logits)` (f32); the logits processors
//!   (no-repeat n-gram ban, `min_new_tokens` EOS ban) then set banned entries to `-inf`
//!   *after* the normalisation, so the other scores are not renormalised;
//! * the accumulated score of a continuation is the running beam score plus that log-prob; at
//!   the first step only beam 0 is live (the other beams start at `-1e9`);
//! * the top `max(2, 1 + #eos) · num_beams` continuations over all beams of a prompt are kept;
//!   a continuation "hits a stopping criterion" when its new token is an EOS id or when it
//!   reaches `max_new_tokens`; the best `num_beams` that did not hit one run on;
//! * only continuations ranked within the top `num_beams` can become finished hypotheses, scored
//!   `sum_logprobs / generated_len ** length_penalty`, where `generated_len` counts the new tokens
//!   *including* the final EOS; the best `num_beams` finished hypotheses are kept;
//! * `early_stopping = true`: a prompt is done once it holds `num_beams` finished hypotheses;
//!   `false`: once the best running beam, scored at its current length, cannot beat the worst
//!   finished hypothesis (HF's heuristic). The loop stops when no prompt can improve.
//!
//! The returned continuation of a prompt is its best finished hypothesis, new tokens only, with a
//! final EOS removed.
use crate::error::{ModelError, Result};
use crate::causal_lm::CausalLm;
use crate::kv_cache::KvCache;
use candle_core::{DType, Tensor};

/// Beam search settings (names and meaning as in Hugging Face's `GenerationConfig`).
#[derive(Debug, Clone)]
pub struct BeamParams {
    pub num_beams: usize,
    pub max_new_tokens: usize,
    /// EOS ids get a score of `-inf` while fewer than this many tokens have been generated.
    pub min_new_tokens: usize,
    /// Exponent on the generated length in the finished-hypothesis score; > 0 favours longer
    /// sequences, < 0 shorter ones.
    pub length_penalty: f64,
    /// 0: off. Otherwise no n-gram of this size may occur twice in prompt + continuation.
    pub no_repeat_ngram_size: usize,
    /// `true`: stop a prompt as soon as it has `num_beams` finished hypotheses (HF `True`);
    /// `false`: HF's heuristic (HF `False`).
    pub early_stopping: bool,
    /// Ids that finish a hypothesis. Empty: hypotheses only finish at `max_new_tokens`.
    pub eos_ids: Vec<u32>,
}

impl Default for BeamParams {
    fn default() -> Self {
        Self {
            num_beams: 4,
            max_new_tokens: 64,
            min_new_tokens: 0,
            length_penalty: 1.0,
            no_repeat_ngram_size: 0,
            early_stopping: false,
            eos_ids: vec![],
        }
    }
}

/// Tokens that may not come next after `tokens` because they would repeat an n-gram of size `n`
/// already in `tokens` (Hugging Face's `NoRepeatNGramLogitsProcessor`): the last `n - 1` tokens
/// are looked up among all n-grams of `tokens`. Sorted, without duplicates; empty for `n == 0`
/// or when `tokens` is shorter than `n - 1`. `n == 1` bans every token seen.
pub fn no_repeat_ngram_banned(tokens: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || tokens.len() + 1 < n {
        return vec![];
    }
    let prefix = &tokens[tokens.len() + 1 - n..];
    let mut out: Vec<u32> = tokens.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// HF adds this to scores to take candidates out of the running (f32 arithmetic as in torch).
const NEG_BIG: f32 = -1.0e9;

/// One slot of a prompt's finished-hypothesis list.
#[derive(Clone)]
struct Slot {
    score: f32,
    tokens: Vec<u32>,
    /// `false`: an empty slot (or a filler that never finished).
    finished: bool,
}

/// Beam state of one prompt.
struct PromptBeams {
    /// Generated tokens of each running beam.
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    /// Always `num_beams` slots, best first.
    slots: Vec<Slot>,
    /// HF's `is_early_stop_heuristic_unsatisfied`: the running beams may still improve on the
    /// finished ones (sticky once false).
    can_improve: bool,
}

/// Row-wise log-softmax in f32 (the sum is taken in f64).
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return logits.iter().map(|_| f32::NEG_INFINITY).collect();
    }
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = sum.ln() as f32;
    logits.iter().map(|&x| x - max - lse).collect()
}

/// Indices of the `k` largest values, best first; ties go to the lower index; NaN counts as
/// `-inf`.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let key = |i: usize| if values[i].is_nan() { f32::NEG_INFINITY } else { values[i] };
    let cmp = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return vec![];
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx
}

/// Beam search continuations of `prompts`, batched (`prompts.len() · num_beams` rows, left padded
/// with `pad_id`). Returns, per prompt, the new tokens of the best hypothesis (final EOS removed).
pub fn beam_search(model: &dyn CausalLm, prompts: &[Vec<u32>], p: &BeamParams, pad_id: u32) -> Result<Vec<Vec<u32>>> {
    let nb = p.num_beams;
    if nb == 0 {
        return Err(ModelError::Invalid("beam search needs num_beams >= 1".into()));
    }
    if !p.length_penalty.is_finite() {
        return Err(ModelError::Invalid(format!("length_penalty must be finite, got {}", p.length_penalty)));
    }
    if let Some(i) = prompts.iter().position(|x| x.is_empty()) {
        return Err(ModelError::Invalid(format!("prompt {i} is empty: beam search needs at least one token")));
    }
    let b = prompts.len();
    if b == 0 || p.max_new_tokens == 0 {
        return Ok(vec![vec![]; b]);
    }
    let mut eos = p.eos_ids.clone();
    eos.sort_unstable();
    eos.dedup();
    let keep = 2usize.max(1 + eos.len()) * nb;

    let dev = model.device();
    let rows = b * nb;
    let max_len = prompts.iter().map(|x| x.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(rows * max_len);
    let mut mask = Vec::with_capacity(rows * max_len);
    for pr in prompts {
        let pad = max_len - pr.len();
        for _ in 0..nb {
            ids.extend(std::iter::repeat(pad_id).take(pad).chain(pr.iter().copied()));
            mask.extend(std::iter::repeat(0u32).take(pad).chain(std::iter::repeat(1).take(pr.len())));
        }
    }
    let mut input = Tensor::from_vec(ids, (rows, max_len), dev)?;
    let mut cache = KvCache::default();
    let mut state: Vec<PromptBeams> = (0..b)
        .map(|_| PromptBeams {
            running: vec![vec![]; nb],
            running_scores: (0..nb).map(|k| if k == 0 { 0.0 } else { NEG_BIG }).collect(),
            slots: vec![Slot { score: NEG_BIG, tokens: vec![], finished: false }; nb],
            can_improve: true,
        })
        .collect();

    for step in 0..p.max_new_tokens {
        let t = mask.len() / rows;
        let mask_t = Tensor::from_vec(mask.clone(), (rows, t), dev)?;
        let logits = model.next_logits(&input, Some(&mask_t), &mut cache)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let vocab = logits.first().map(|r| r.len()).unwrap_or(0);
        if vocab == 0 {
            return Err(ModelError::Invalid("model returned empty logits".into()));
        }
        let gen_len = step + 1; // new tokens in a continuation chosen at this step
        let last_step = gen_len >= p.max_new_tokens;
        let denom = (gen_len as f64).powf(p.length_penalty) as f32;
        let mut src_rows = Vec::with_capacity(rows);
        let mut next_tokens = Vec::with_capacity(rows);
        let mut all_hit = true;

        for (item, st) in state.iter_mut().enumerate() {
            // Accumulated scores over (beam, token).
            let mut acc: Vec<f32> = Vec::with_capacity(nb * vocab);
            for k in 0..nb {
                let mut lp = log_softmax(&logits[item * nb + k]);
                if p.no_repeat_ngram_size > 0 {
                    // The decoder's own sequence: the prompt for a decoder-only model, the start
                    // token for an encoder–decoder one (as Hugging Face bans n-grams of input_ids).
                    let mut hist = match model.decoder_start_id() {
                        Some(start) => vec![start],
                        None => prompts[item].clone(),
                    };
                    hist.extend_from_slice(&st.running[k]);
                    for tok in no_repeat_ngram_banned(&hist, p.no_repeat_ngram_size) {
                        if let Some(x) = lp.get_mut(tok as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                if step < p.min_new_tokens {
                    for &e in &eos {
                        if let Some(x) = lp.get_mut(e as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                let s = st.running_scores[k];
                acc.extend(lp.into_iter().map(|x| x + s));
            }
            // Top-K continuations.
            let top = top_k(&acc, keep);
            let cand_score: Vec<f32> = top.iter().map(|&i| acc[i]).collect();
            let cand_beam: Vec<usize> = top.iter().map(|&i| i / vocab).collect();
            let cand_tok: Vec<u32> = top.iter().map(|&i| (i % vocab) as u32).collect();
            let cand_hit: Vec<bool> = cand_tok.iter().map(|tok| last_step || eos.binary_search(tok).is_ok()).collect();
            all_hit &= cand_hit.iter().all(|&h| h);
            let cand_seq = |r: usize| {
                let mut s = st.running[cand_beam[r]].clone();
                s.push(cand_tok[r]);
                s
            };

            // Running beams for the next step: best `nb` that did not hit a stopping criterion.
            let adjusted: Vec<f32> = cand_score.iter().zip(&cand_hit).map(|(&s, &h)| if h { s + NEG_BIG } else { s }).collect();
            let next = top_k(&adjusted, nb);

            // Finished hypotheses: merge the existing slots with the new ones, keep the best `nb`.
            let full = p.early_stopping && st.slots.iter().all(|s| s.finished);
            let mut merged = st.slots.clone();
            for r in 0..top.len() {
                let just_finished = cand_hit[r] && r < nb;
                let mut s = cand_score[r] / denom;
                if full {
                    s += NEG_BIG;
                }
                if !st.can_improve {
                    s += NEG_BIG;
                }
                if !just_finished {
                    s += NEG_BIG;
                }
                merged.push(Slot { score: s, tokens: cand_seq(r), finished: just_finished });
            }
            let scores: Vec<f32> = merged.iter().map(|s| s.score).collect();
            st.slots = top_k(&scores, nb).into_iter().map(|i| merged[i].clone()).collect();

            // Running state and the cache rows to carry.
            let mut running = Vec::with_capacity(nb);
            let mut running_scores = Vec::with_capacity(nb);
            for &r in &next {
                running.push(cand_seq(r));
                running_scores.push(adjusted[r]);
                src_rows.push((item * nb + cand_beam[r]) as u32);
                next_tokens.push(cand_tok[r]);
            }
            st.running = running;
            st.running_scores = running_scores;

            // HF's early-stop heuristic, at the new length (its `early_stopping="never"` variant,
            // which would use the maximum length, is not offered).
            let best_possible = st.running_scores[0] / denom;
            let min_slot = st.slots.iter().map(|s| s.score).fold(f32::INFINITY, f32::min);
            let improvable = st.slots.iter().any(|s| best_possible > if s.finished { min_slot } else { NEG_BIG });
            st.can_improve &= improvable;
        }

        let improvement_possible = state.iter().any(|s| s.can_improve);
        let exists_open_beam = !(p.early_stopping && state.iter().all(|s| s.slots.iter().all(|x| x.finished)));
        if last_step || all_hit || !improvement_possible || !exists_open_beam {
            break;
        }

        // Reorder the cache rows to the selected beams, feed the new tokens, grow the mask.
        cache.reorder(&src_rows)?;
        input = Tensor::from_vec(next_tokens, (rows, 1), dev)?;
        let mut m2 = Vec::with_capacity(rows * (t + 1));
        for r in 0..rows {
            m2.extend_from_slice(&mask[r * t..(r + 1) * t]);
            m2.push(1);
        }
        mask = m2;
    }

    Ok(state
        .into_iter()
        .map(|st| {
            let mut best = st.slots.into_iter().next().map(|s| s.tokens).unwrap_or_default();
            if best.last().map(|t| eos.binary_search(t).is_ok()).unwrap_or(false) {
                best.pop();
            }
            best
        })
        .collect())
}
