//! Generation on the CPU without candle's per-op overhead: a Llama-family decoder over plain
//! buffers ([`llama_decoder`]) and the weight products that are its whole cost
//! ([`weight_product`]).
pub mod attention;
pub mod elementwise;
pub mod int8_blocks;
pub mod llama_decoder;
pub mod spin_team;
pub mod weight_product;

pub use llama_decoder::{DecodeFormat, LlamaDecoder, LoraBranch};
pub use weight_product::DecodeWeight;

/// Deterministic values in (−1, 1) for the tests of this module's kernels.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}
