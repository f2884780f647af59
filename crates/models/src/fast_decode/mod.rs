//! Generation on the CPU without candle's per-op overhead: a Llama-family decoder over plain
//! buffers ([`llama_decoder`]) and the weight products that are its whole cost
//! ([`weight_product`]).
pub mod attention;
pub mod int8_blocks;
pub mod llama_decoder;
pub mod spin_team;
pub mod weight_product;

pub use llama_decoder::{DecodeFormat, LlamaDecoder, LoraBranch};
pub use weight_product::DecodeWeight;
