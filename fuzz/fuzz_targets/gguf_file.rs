//! A GGUF file as `lowrank` reads a model: header and metadata, config, tokenizer, tensors
//! (dequantized, and kept packed as training does).
#![no_main]
use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = lowrank_fuzz::file("model.gguf", data);
    let Ok(g) = lowrank_models::gguf::GgufFile::open(&path) else { return };
    let _ = g.tokenizer();
    if let Ok(cfg) = g.config() {
        let _ = g.weights(&cfg, &Device::Cpu, DType::F32, data.first().is_some_and(|b| b & 1 == 1));
    }
});
