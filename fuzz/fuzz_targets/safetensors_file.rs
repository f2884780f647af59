//! A `.safetensors` file as the model and adapter loaders read it.
#![no_main]
use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = lowrank_fuzz::file("model.safetensors", data);
    let _ = lowrank_models::weights::read_safetensors(&path, &Device::Cpu, Some(DType::F32));
});
