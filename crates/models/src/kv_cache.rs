//! What incremental decoding keeps between calls: self-attention keys/values per decoder layer
//! and, for encoder–decoder models, the encoder output with its mask and the cross-attention
//! keys/values (computed once per prompt).
use candle_core::Tensor;

/// The keys and values a self-attention layer attends over, `(b, kv_heads, t_k, head_dim)` each:
/// the layer's cached positions (when decoding with a cache) followed by the new ones
/// `k, v: (b, kv_heads, t, head_dim)`; the slot is updated to hold them all. The one place every
/// family extends its keys and values.
pub fn extend_kv(slot: Option<&mut Option<(Tensor, Tensor)>>, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let Some(slot) = slot else { return Ok((k, v)) };
    let (k, v) = match slot.as_ref() {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// The encoder side of an encoder–decoder model during decoding.
#[derive(Clone)]
pub struct EncoderState {
    /// `(b, s, d_model)`: the encoder's last hidden state.
    pub hidden: Tensor,
    /// Per row, 1 for a real encoder token and 0 for padding: `b` rows of `s`.
    pub keep: std::sync::Arc<Vec<Vec<u8>>>,
}

/// Decoding state, one entry per decoder layer.
#[derive(Clone, Default)]
pub struct KvCache {
    /// Self-attention `(k, v)`: `(b, kv_heads, t, head_dim)` each.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// Cross-attention `(k, v)` over the encoder output: `(b, heads, s, head_dim)` each.
    pub cross: Vec<Option<(Tensor, Tensor)>>,
    pub encoder: Option<EncoderState>,
    /// The CPU decoder's keys/values in host memory (see [`crate::fast_decode`]).
    pub host: Option<HostKv>,
}

/// Keys and values of the CPU decoder: per row, per layer, `(positions, kv_heads · head_dim)`
/// row-major, rotary embedding applied to the keys.
#[derive(Clone, Default, Debug)]
pub struct HostKv {
    /// Positions cached (the same for every row: padding is masked, not skipped).
    pub len: usize,
    /// `rows[row].keys[layer · kv_heads + kv_head]` and `.values[…]`: `(positions, head_dim)` each.
    pub rows: Vec<HostRowKv>,
}

#[derive(Clone, Default, Debug)]
pub struct HostRowKv {
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
}

impl KvCache {
    /// Decoder positions already cached.
    pub fn len(&self) -> usize {
        if let Some(h) = &self.host {
            return h.len;
        }
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps rows `idx` (in that order) of everything cached, e.g. the beams chosen by beam search.
    pub fn reorder(&mut self, idx: &[u32]) -> candle_core::Result<()> {
        if let Some(h) = &mut self.host {
            let rows = idx
                .iter()
                .map(|&i| h.rows.get(i as usize).cloned().ok_or_else(|| candle_core::Error::Msg(format!("reorder: row {i} of {} cached", h.rows.len()))))
                .collect::<candle_core::Result<Vec<_>>>()?;
            h.rows = rows;
        }
        let dev = match self.layers.iter().chain(self.cross.iter()).flatten().next() {
            Some((k, _)) => k.device().clone(),
            None => match &self.encoder {
                Some(e) => e.hidden.device().clone(),
                None => return Ok(()),
            },
        };
        let t = Tensor::new(idx, &dev)?;
        for (k, v) in self.layers.iter_mut().chain(self.cross.iter_mut()).flatten() {
            *k = k.index_select(&t, 0)?;
            *v = v.index_select(&t, 0)?;
        }
        if let Some(e) = &mut self.encoder {
            e.hidden = e.hidden.index_select(&t, 0)?;
            let keep: Vec<Vec<u8>> = idx.iter().map(|&i| e.keep.get(i as usize).cloned().unwrap_or_default()).collect();
            e.keep = std::sync::Arc::new(keep);
        }
        Ok(())
    }
}
