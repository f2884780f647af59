//! Training-first transformer models for lowrank: the Llama family (Llama, SmolLM2, Qwen2),
//! loaded from Hugging Face folders or GGUF files, with the linear-layer seam adapters attach to.
pub mod beam;
pub mod causal_lm;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod linear_site;
pub mod llama;
pub mod loader;
pub mod ops;
pub mod tokenizer;
pub mod weights;

pub use causal_lm::CausalLm;
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use linear_site::{BaseLinear, LinearLayer, LinearSite, PlainSite};
pub use llama::{KvCache, Llama};
pub use loader::{load_config, load_model, LoadedModel, ModelSource};
pub use tokenizer::TextTokenizer;
pub use weights::Weights;
