//! A PEFT adapter folder — `adapter_config.json` and `adapter_model.safetensors` — loaded for
//! the tiny Llama or the tiny GPT-2 (the first byte picks), every method by its `peft_type`.
//! Input: the config, a 0xFF byte, the tensors file.
#![no_main]
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use lowrank_models::{load_config, model_layout, ModelLayout};
use std::sync::OnceLock;

fn layouts() -> &'static [ModelLayout; 2] {
    static L: OnceLock<[ModelLayout; 2]> = OnceLock::new();
    L.get_or_init(|| {
        let of = |m: &str| model_layout(&load_config(&lowrank_fuzz::root().join(m)).expect("fixture config")).expect("layout");
        [of("tests/fixtures/tiny-llama/hf"), of("tests/fixtures/tiny-gpt2/hf")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (config, tensors) = lowrank_fuzz::split_at_byte(rest, 0xFF);
    lowrank_fuzz::file("adapter/adapter_config.json", config);
    let dir = lowrank_fuzz::file("adapter/adapter_model.safetensors", tensors).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let layout = &layouts()[usize::from(pick & 1)];
    if let Ok(loaded) = lowrank_peft::load_adapter(&dir, layout, &Device::Cpu) {
        let _ = loaded.adapter.describe();
        let _ = loaded.adapter.trainable_parameters();
    }
});
