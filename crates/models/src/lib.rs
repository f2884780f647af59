//! Training-first transformer models for lowrank: the Llama family (Llama, SmolLM2, Qwen2),
//! GPT-2 and T5 / FLAN-T5, loaded from Hugging Face folders (Llama also from GGUF files), with
//! the linear-layer seam adapters attach to.
pub mod allocator;
pub mod any_model;
pub mod beam;
pub mod causal_lm;
pub mod causal_loss;
pub mod config;
pub mod error;
pub mod fast_decode;
pub mod finite;
pub mod frozen_weight;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod gpt2_config;
pub mod hooks;
pub mod kv_cache;
pub mod llama;
pub mod loader;
pub mod model_config;
pub mod ops;
pub mod packed_matrix;
pub mod quantized_linear;
pub mod t5;
pub mod t5_config;
pub mod thread_pools;
pub mod tokenizer;
pub mod weights;

pub use causal_lm::CausalLm;
pub use any_model::{model_layout, AnyModel};
pub use config::LlamaConfig;
pub use model_config::ModelConfig;
pub use error::{ModelError, Result};
pub use frozen_weight::FrozenWeight;
pub use hooks::{BaseLinear, BaseNorm, BuildHook, Hooks, LinearInfo, LinearLayer, ModelLayout, NormInfo, NormKind, NormLayer, NormRole, PlainHook, Role};
pub use llama::{KvCache, Llama};
pub use loader::{load_config, load_model, load_model_with, LoadedModel, ModelSource};
pub use tokenizer::TextTokenizer;
pub use weights::Weights;
