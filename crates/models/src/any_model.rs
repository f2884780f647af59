//! One of the supported model families, built from a [`ModelConfig`].
use crate::causal_lm::CausalLm;
use crate::error::Result;
use crate::gpt2::Gpt2;
use crate::kv_cache::KvCache;
use crate::hooks::{BuildHook, ModelLayout, RecordingHook};
use crate::llama::Llama;
use crate::model_config::ModelConfig;
use crate::t5::T5;
use crate::weights::Weights;
use candle_core::{Device, Tensor, Var};

/// The modules of a model of `config`, read off the model itself: it is built once over
/// shape-only weights (no memory) with a [`RecordingHook`]. The one list of a family's modules.
pub fn model_layout(config: &ModelConfig) -> Result<ModelLayout> {
    let recorder = RecordingHook::default();
    AnyModel::new(config, &Weights::shapes_only(), &recorder, &Device::Cpu)?;
    Ok(recorder.layout())
}

/// A built model of any supported family.
pub enum AnyModel {
    Llama(Llama),
    Gpt2(Gpt2),
    T5(T5),
    /// The Llama family's CPU decoder: generation only (see [`crate::fast_decode`]).
    LlamaDecoder(crate::fast_decode::LlamaDecoder),
}

impl AnyModel {
    /// Builds the model of `config`'s family; every linear layer and norm goes through `hook`.
    pub fn new(config: &ModelConfig, weights: &Weights, hook: &dyn BuildHook, device: &Device) -> Result<Self> {
        Ok(match config {
            ModelConfig::Llama(c) => AnyModel::Llama(Llama::new(c, weights, hook, device)?),
            ModelConfig::Gpt2(c) => AnyModel::Gpt2(Gpt2::new(c, weights, hook, device)?),
            ModelConfig::T5(c) => AnyModel::T5(T5::new(c, weights, hook, device)?),
        })
    }

    /// Turns activation checkpointing on or off; only the Llama family has it (false otherwise).
    pub fn set_activation_checkpointing(&mut self, on: bool) -> bool {
        match self {
            AnyModel::Llama(m) => {
                m.activation_checkpointing = on;
                true
            }
            _ => !on,
        }
    }

    fn inner(&self) -> &dyn CausalLm {
        match self {
            AnyModel::Llama(m) => m,
            AnyModel::Gpt2(m) => m,
            AnyModel::T5(m) => m,
            AnyModel::LlamaDecoder(m) => m,
        }
    }
}

impl CausalLm for AnyModel {
    fn device(&self) -> &Device {
        self.inner().device()
    }
    fn loss_sum(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, train: bool) -> Result<(Tensor, usize)> {
        self.inner().loss_sum(input_ids, attention_mask, labels, label_smoothing, train)
    }
    fn next_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: &mut KvCache) -> Result<Tensor> {
        self.inner().next_logits(input_ids, attention_mask, cache)
    }
    fn decoder_start_id(&self) -> Option<u32> {
        self.inner().decoder_start_id()
    }
    fn loss_and_grads(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: &[Vec<i64>], label_smoothing: f32, scale: f64, vars: &[Var]) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
        self.inner().loss_and_grads(input_ids, attention_mask, labels, label_smoothing, scale, vars)
    }
}
