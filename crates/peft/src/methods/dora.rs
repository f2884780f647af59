//! DoRA as a method of its own in run files: `[peft] method = "dora"` with a `[dora]` section of
//! LoRA's keys (`r`, `alpha`, `targets`, ...). It is LoRA with PEFT's `use_dora = true` (the math
//! is in [`super::lora::dora`]); its folders are PEFT's LoRA folders, read by the LoRA method.
use crate::adapter::Adapter;
use crate::error::Result;
use crate::folder::AdapterFolder;
use crate::methods::{lora::Lora, InitContext, Method};
use candle_core::Device;
use lowrank_models::ModelLayout;

pub struct Dora;

/// The `[dora]` section as LoRA settings with `use_dora = true`.
fn as_lora(settings: &toml::Value) -> toml::Value {
    let mut t = settings.as_table().cloned().unwrap_or_default();
    t.insert("use_dora".into(), toml::Value::Boolean(true));
    toml::Value::Table(t)
}

impl Method for Dora {
    fn name(&self) -> &'static str {
        "dora"
    }
    fn peft_type(&self) -> &'static str {
        "LORA"
    }
    fn check(&self, settings: &toml::Value) -> Result<()> {
        Lora.check(&as_lora(settings))
    }
    fn init(&self, settings: &toml::Value, ctx: &InitContext) -> Result<Box<dyn Adapter>> {
        Lora.init(&as_lora(settings), ctx)
    }
    fn load(&self, folder: &mut AdapterFolder, layout: &ModelLayout, device: &Device) -> Result<Box<dyn Adapter>> {
        Lora.load(folder, layout, device)
    }
}
