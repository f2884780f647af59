//! Parameter-efficient adapters for lowrank models: LoRA (and rsLoRA), target selection, merging,
//! and the Hugging Face PEFT adapter format.
pub mod error;
pub mod fused_parts;
pub mod lora;
pub mod lora_op;
pub mod peft_format;
pub mod targets;

pub use error::{PeftError, Result};
pub use fused_parts::QuantizedLoraSite;
pub use lora::{LoraAdapters, LoraConfig, LoraLinear, LoraModule, LoraSite};
pub use peft_format::{load_adapter, save_adapter, save_adapter_native, AdapterInfo, LoadedAdapter};
pub use targets::TargetSpec;
