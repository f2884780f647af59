//! The causal-LM loss from final hidden states, computing logits only where there is a target.
use crate::error::Result;
use crate::ops::{head_cross_entropy_sum, IGNORE_INDEX};
use candle_core::Tensor;

/// Hugging Face's causal-LM loss: the hidden state at position i predicts `labels[i+1]`; labels
/// equal to -100 are skipped. `hidden: (b, t, d)`, `lm_head: (vocab, d)`. Returns `(sum of token losses, number of tokens)`.
pub fn shifted_loss_sum(hidden: &Tensor, lm_head: &Tensor, labels: &[Vec<i64>], label_smoothing: f32) -> Result<(Tensor, usize)> {
    let (b, t, d) = hidden.dims3()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (bi, row) in labels.iter().enumerate().take(b) {
        for i in 0..t.saturating_sub(1) {
            let target = row.get(i + 1).copied().unwrap_or(IGNORE_INDEX);
            if target != IGNORE_INDEX {
                rows.push((bi * t + i) as u32);
                targets.push(target);
            }
        }
    }
    rows_loss_sum(&hidden.reshape((b * t, d))?, rows, &targets, lm_head, label_smoothing)
}

/// Cross-entropy summed over the rows `rows` of `hidden: (n, d)` against `targets`.
pub fn rows_loss_sum(hidden: &Tensor, rows: Vec<u32>, targets: &[i64], lm_head: &Tensor, label_smoothing: f32) -> Result<(Tensor, usize)> {
    if rows.is_empty() {
        return Ok((hidden.sum_all()?.affine(0.0, 0.0)?, 0));
    }
    let n = rows.len();
    let idx = Tensor::from_vec(rows, n, hidden.device())?;
    let hs = hidden.index_select(&idx, 0)?;
    let loss = head_cross_entropy_sum(&hs, lm_head, targets, label_smoothing)?;
    Ok((loss, n))
}
