//! Parameter-efficient adapters for lowrank models, behind one contract ([`Adapter`]): the
//! methods ([`methods`], found by run-file name or PEFT `peft_type`), target selection, merging,
//! and the Hugging Face PEFT adapter folder.
pub mod adapter;
pub mod dropout;
pub mod error;
pub mod folder;
pub mod linalg;
pub mod methods;
pub mod targets;

pub use adapter::{check_attached, Adapter, AdapterInfo};
pub use error::{PeftError, Result};
pub use folder::{load_adapter, save_adapter, save_adapter_native, LoadedAdapter};
pub use methods::lora::format::{load_lora, LoadedLora};
pub use methods::lora::{LoraAdapters, LoraConfig, LoraLinear, LoraModule, LoraSite};
pub use methods::{InitContext, Method};
pub use targets::TargetSpec;
