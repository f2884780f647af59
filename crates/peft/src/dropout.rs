//! Adapter dropout shared by the methods that drop inputs of their branch (LoRA, DoRA, ...).
use candle_core::Tensor;
use lowrank_models::generate::SplitMix64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared state for adapter dropout. The trainer reseeds it every micro-step; each adapted layer
/// draws its mask from a generator seeded by `(seed, module path)`, so a mask does not depend on
/// the order layers run in, and recomputing a layer (activation checkpointing) or resuming a run
/// draws the same masks.
#[derive(Clone)]
pub struct DropoutRng(pub Arc<AtomicU64>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(AtomicU64::new(seed)))
    }
    pub fn reseed(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }
    /// The mask the layer at `path` draws (for tests that rebuild the same mask).
    pub fn mask_for_test(&self, path: &str, n: usize, p: f64) -> Vec<f32> {
        self.mask(path, n, p)
    }

    /// Inverted-dropout mask of `n` values for the layer at `path`: 0 or `1/(1-p)`.
    pub(crate) fn mask(&self, path: &str, n: usize, p: f64) -> Vec<f32> {
        let keep = 1.0 / (1.0 - p) as f32;
        let mut g = SplitMix64(self.0.load(Ordering::Relaxed) ^ fnv1a(path));
        (0..n).map(|_| if g.next_f64() < p { 0.0 } else { keep }).collect()
    }

    /// The mask for `x: (..., d_in)` at `path` as a tensor of x's shape, device and dtype, when
    /// training with `p > 0`; `None` otherwise.
    pub fn mask_like(&self, path: &str, x: &Tensor, p: f64, train: bool) -> candle_core::Result<Option<Tensor>> {
        if !train || p <= 0.0 {
            return Ok(None);
        }
        let d_in = *x.dims().last().unwrap_or(&1);
        let rows = x.elem_count() / d_in.max(1);
        Ok(Some(Tensor::from_vec(self.mask(path, rows * d_in, p), (rows, d_in), x.device())?.to_dtype(x.dtype())?))
    }
}

/// 64-bit FNV-1a of a string: a stable per-module seed.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
