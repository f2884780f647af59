//! Shared pieces of the commands: opening a model (with an adapter), devices, number formats.
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_core::quantized::GgmlDType;
use lowrank_models::{load_model_with, model_layout, AnyModel, CausalLm, Hooks, LoadedModel, PlainHook, TextTokenizer};
use lowrank_peft::{load_adapter, Adapter};
use std::path::Path;

pub use lowrank_models::allocator::tune_allocator;

pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("unknown dtype `{other}` (f32, bf16, f16)"),
    })
}

/// The dtype models compute in for inference, from a `dtype` setting. candle's CPU matmul
/// (gemm 0.19) has no bf16 kernel and the CPU decoder computes in f32 (or 8 bits), so bf16 falls
/// back to f32 on the CPU, with a warning, instead of failing mid-run.
pub fn compute_dtype(s: &str) -> Result<DType> {
    let d = parse_dtype(s)?;
    if d == DType::BF16 && device().is_cpu() {
        eprintln!("lowrank: warning: bf16 inference has no CPU kernel; computing in f32");
        return Ok(DType::F32);
    }
    Ok(d)
}

static SELECTED_DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// Chooses the device every command computes on, from `--device`: `cpu` (the default), `cuda` or
/// `cuda:N`. Called once, before any command runs; a CUDA device is created once and shared, since
/// candle treats two handles on the same GPU as different devices.
pub fn select_device(spec: &str, tf32: bool) -> Result<()> {
    let dev = match spec {
        "cpu" => Device::Cpu,
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().with_context(|| format!("--device {s}: `{n}` is not a GPU number"))?,
            };
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!("--device {s}: this build of lowrank has no CUDA support (build one with `cargo build --release -p lowrank-cli --features cuda` or `scripts/build_cuda.sh`)");
            }
            let dev = Device::new_cuda(ordinal).with_context(|| format!("--device {s}: opening CUDA device {ordinal}"))?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(c) = &dev {
                // lowrank computes on the device's one stream: the driver orders everything, so
                // the two CUDA events cudarc would create (and destroy) for every buffer to
                // synchronise streams are pure overhead (several driver calls per tensor).
                // SAFETY: no buffer exists yet, and no second stream is ever created.
                unsafe { c.disable_event_tracking() };
            }
            lowrank_models::allocator::tune_gpu_allocator(&dev).with_context(|| format!("--device {s}"))?;
            dev
        }
        other => anyhow::bail!("unknown device `{other}` (cpu, cuda, cuda:N)"),
    };
    if tf32 {
        anyhow::ensure!(dev.is_cuda(), "--tf32 applies to the GPU's matrix products (--device cuda)");
        #[cfg(feature = "cuda")]
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(true);
    }
    let _ = SELECTED_DEVICE.set(dev);
    Ok(())
}

/// The device chosen by `--device` (the CPU unless one was chosen).
pub fn device() -> Device {
    SELECTED_DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

pub use lowrank_train::run::{thousands, trainable_line};

/// The dtype a training run (or `bench train`) loads the model in: [`lowrank_train::run::training_dtype`],
/// its note printed.
pub fn training_dtype(s: &str) -> Result<DType> {
    let (d, note) = lowrank_train::run::training_dtype(s, &device())?;
    if let Some(n) = note {
        eprintln!("lowrank: {n}");
    }
    Ok(d)
}

/// A model ready for inference, with an adapter merged (default) or attached.
pub struct Ready {
    pub loaded: LoadedModel,
    pub model: AnyModel,
    #[allow(dead_code)]
    pub adapter: Option<Box<dyn Adapter>>,
}

/// Which code decodes on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// lowrank's CPU decoder where it applies (Llama family, CPU, f32), candle otherwise.
    Fast,
    /// The training model's own incremental forward (candle ops).
    Candle,
}

pub fn open_for_inference(model: &Path, adapter: Option<&Path>, merge: bool, dtype: DType, quantize: &str, engine: Engine) -> Result<Ready> {
    let dev = device();
    let quant = lowrank_models::quantized_linear::parse_quantization(quantize)?;
    // For the CPU decoder a GGUF's block-quantized weights stay packed and are read as stored.
    let keep_packed = engine == Engine::Fast && dev.is_cpu() && dtype == DType::F32;
    let mut loaded = load_model_with(model, &dev, dtype, keep_packed).with_context(|| format!("loading model {}", model.display()))?;
    let adapter = match adapter {
        Some(dir) => {
            let layout = model_layout(&loaded.config)?;
            let a = load_adapter(dir, &layout, &dev).with_context(|| format!("loading adapter {}", dir.display()))?;
            for w in &a.warnings {
                eprintln!("lowrank: warning: {w}");
            }
            Some(a.adapter)
        }
        None => None,
    };
    // Rounding merged weights to 4- or 8-bit blocks would round a small adapter update away
    // (the step between 4-bit levels is larger than most of B·A's entries): with `--quantize`
    // the adapter stays an f32 branch beside the quantized base.
    let mut merge = merge && quant.is_none();
    if let (Some(a), true) = (&adapter, merge) {
        // Into a copy (the tensors are shared, not copied): a method that cannot merge leaves
        // the weights as they were and runs unmerged.
        let mut merged = loaded.weights.clone();
        match a.merge_into(&mut merged) {
            Ok(()) => loaded.weights = merged,
            Err(lowrank_peft::PeftError::NotMergeable { reason, .. }) => {
                eprintln!("lowrank: note: the adapter runs unmerged: {reason}");
                merge = false;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let unmerged = adapter.as_deref().filter(|_| !merge);
    if engine == Engine::Fast {
        if let Some(model) = cpu_decoder(&mut loaded, unmerged, quant, &dev, dtype)? {
            return Ok(Ready { loaded, model, adapter });
        }
    }
    let quantized = quant.map(|dtype| lowrank_models::quantized_linear::QuantizedHook { dtype });
    let mut hooks: Vec<&dyn lowrank_models::BuildHook> = vec![&PlainHook];
    if let Some(q) = &quantized {
        hooks.push(q);
    }
    if let Some(a) = unmerged {
        hooks.push(a.hook());
    }
    let model = AnyModel::new(&loaded.config, &loaded.weights, &Hooks(hooks), &dev)?;
    Ok(Ready { loaded, model, adapter })
}

/// The CPU decoder for a Llama-family model on the CPU in f32 (weights as loaded, or quantized
/// to Q4_0 / Q4_1 / Q8_0), with unmerged adapters as branches; `None` where it does not apply
/// (another family or device, bf16, other formats), and the candle model decodes. The dense
/// weights it copied are released from `loaded`.
pub fn cpu_decoder(loaded: &mut LoadedModel, unmerged: Option<&dyn Adapter>, quant: Option<GgmlDType>, dev: &Device, dtype: DType) -> Result<Option<AnyModel>> {
    use lowrank_models::fast_decode::{DecodeFormat, LlamaDecoder};
    let lowrank_models::ModelConfig::Llama(cfg) = &loaded.config else { return Ok(None) };
    if !dev.is_cpu() || dtype != DType::F32 {
        return Ok(None);
    }
    let format = match quant {
        None => DecodeFormat::AsLoaded,
        Some(q) => match lowrank_models::packed_matrix::BlockFormat::of(q) {
            Some(f) => DecodeFormat::Quantize(f),
            None => return Ok(None),
        },
    };
    let branches = match unmerged {
        Some(a) => match a.decode_branches()? {
            Some(b) => b,
            None => return Ok(None),
        },
        None => Default::default(),
    };
    let decoder = LlamaDecoder::new(cfg, &loaded.weights, &branches, format)?;
    loaded.weights = lowrank_models::Weights::default();
    Ok(Some(AnyModel::LlamaDecoder(decoder)))
}

/// Token ids of a prompt as the model reads it: an encoder–decoder's encoder input ends with EOS
/// (as T5's tokenizer adds `</s>`); a decoder-only prompt is left as it is.
pub fn prompt_ids(model: &dyn CausalLm, tok: &TextTokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text)?;
    if model.decoder_start_id().is_some() {
        ids.extend(tok.eos_ids.first());
    }
    Ok(ids)
}

/// `requested` new tokens, lowered (with a warning) so that the longest prompt plus them fits in
/// a decoder-only model's positions; an encoder–decoder (relative positions) is not limited.
pub fn fit_new_tokens(config: &lowrank_models::ModelConfig, longest_prompt: usize, requested: usize) -> usize {
    if config.is_encoder_decoder() {
        return requested;
    }
    let room = config.max_positions().saturating_sub(longest_prompt);
    if requested > room {
        eprintln!("lowrank: warning: a {longest_prompt}-token prompt leaves room for {room} new tokens in the model's {} positions; generating at most {room}", config.max_positions());
        return room;
    }
    requested
}

/// How outputs are decoded (shared by `eval` and the training samples).
pub struct Decoding {
    /// 1: greedy; more: beam search.
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub length_penalty: f64,
    pub no_repeat_ngram_size: usize,
    pub early_stopping: bool,
}

/// New tokens for each prompt (EOS removed), by greedy decoding or beam search.
pub fn decode(model: &dyn CausalLm, tok: &TextTokenizer, ids: &[Vec<u32>], d: &Decoding) -> Result<Vec<Vec<u32>>> {
    use lowrank_models::beam::{beam_search, BeamParams};
    use lowrank_models::generate::{generate, SamplingParams};
    Ok(if d.num_beams > 1 {
        let p = BeamParams {
            num_beams: d.num_beams,
            max_new_tokens: d.max_new_tokens,
            min_new_tokens: 0,
            length_penalty: d.length_penalty,
            no_repeat_ngram_size: d.no_repeat_ngram_size,
            early_stopping: d.early_stopping,
            eos_ids: tok.eos_ids.clone(),
        };
        beam_search(model, ids, &p, tok.pad_id)?
    } else {
        let p = SamplingParams { max_new_tokens: d.max_new_tokens, stop_ids: tok.eos_ids.clone(), ..Default::default() };
        generate(model, ids, &p, tok.pad_id)?
    })
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
