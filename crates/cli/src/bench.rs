//! `lowrank bench train`: median LoRA training-step time on synthetic tokens, as one JSON line.
use crate::common::{device, peak_rss_mib, training_dtype};
use anyhow::{Context, Result};
use lowrank_models::{load_model_with, model_layout, AnyModel, CausalLm, Hooks, PlainHook};
use lowrank_peft::{Adapter, LoraAdapters, LoraConfig, TargetSpec};
use lowrank_train::optim::{AdamW, AdamWParams};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time LoRA training steps (forward, backward, AdamW) at a fixed batch shape.
    Train(BenchTrainArgs),
    /// Time greedy generation (batch 1) with a LoRA adapter, merged or kept as a branch.
    Generate(BenchGenerateArgs),
}

#[derive(clap::Args)]
pub struct BenchGenerateArgs {
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value = "q_proj,v_proj")]
    targets: String,
    /// Keep the adapter as a separate branch instead of merging it.
    #[arg(long)]
    unmerged: bool,
    /// As `generate --quantize`: none, q8_0, q4_0, q4_1; q5_0, q5_1, q4_k, q6_k decode on the
    /// candle path.
    #[arg(long, default_value = "none")]
    quantize: String,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Prompts decoded together (each its own random prompt of the same length).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Time this adapter folder (any method; merged unless --unmerged or it cannot merge)
    /// instead of a random LoRA adapter.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// As `generate --engine`: `fast` (lowrank's CPU decoder where it applies) or `candle`.
    #[arg(long, value_enum, default_value = "fast")]
    engine: crate::common::Engine,
}

fn targets_of(s: &str) -> TargetSpec {
    if s == "all-linear" { TargetSpec::Pattern(s.to_string()) } else { TargetSpec::Names(s.split(',').map(String::from).collect()) }
}

fn device_name(dev: &candle_core::Device) -> &'static str {
    if dev.is_cuda() { "cuda" } else if dev.is_cpu() { "cpu" } else { "other" }
}

fn run_generate(a: BenchGenerateArgs) -> Result<()> {
    anyhow::ensure!(a.repeats >= 1, "--repeats must be at least 1");
    let dev = device();
    let fast = a.engine == crate::common::Engine::Fast;
    if let Some(dir) = &a.adapter {
        let ready = crate::common::open_for_inference(&a.model, Some(dir), !a.unmerged, candle_core::DType::F32, &a.quantize, a.engine)?;
        let engine = if matches!(ready.model, AnyModel::LlamaDecoder(_)) { "fast" } else { "candle" };
        return time_generation(&a, &ready.model, ready.loaded.config.vocab_size() as u64, engine, &dev);
    }
    let mut loaded = load_model_with(&a.model, &dev, candle_core::DType::F32, fast).with_context(|| format!("loading model {}", a.model.display()))?;
    let lcfg = LoraConfig { r: a.rank, alpha: 2.0 * a.rank as f64, targets: targets_of(&a.targets), init_seed: 1, ..Default::default() };
    let adapters = LoraAdapters::init(&lcfg, &model_layout(&loaded.config)?.linear_modules(), &dev)?;
    for m in adapters.modules.values() {
        m.b.set(&(candle_core::Tensor::ones(m.b.dims(), candle_core::DType::F32, &dev)? * 0.01)?)?;
    }
    let quant = lowrank_models::quantized_linear::parse_quantization(&a.quantize)?;
    let vocab = loaded.config.vocab_size() as u64;
    if !a.unmerged {
        adapters.merge_into(&mut loaded.weights)?;
    }
    let unmerged: Option<&dyn Adapter> = if a.unmerged { Some(&adapters) } else { None };
    let decoder = if fast { crate::common::cpu_decoder(&mut loaded, unmerged, quant, &dev, candle_core::DType::F32)? } else { None };
    let engine = if decoder.is_some() { "fast" } else { "candle" };
    let model = match decoder {
        Some(m) => m,
        None => {
            let quantized = quant.map(|dtype| lowrank_models::quantized_linear::QuantizedHook { dtype });
            let mut hooks: Vec<&dyn lowrank_models::BuildHook> = vec![&PlainHook];
            if let Some(q) = &quantized {
                hooks.push(q);
            }
            if let Some(u) = unmerged {
                hooks.push(u.hook());
            }
            AnyModel::new(&loaded.config, &loaded.weights, &Hooks(hooks), &dev)?
        }
    };
    time_generation(&a, &model, vocab, engine, &dev)
}

/// Times `a.repeats` greedy generations (after one warm-up) and prints the JSON line.
fn time_generation(a: &BenchGenerateArgs, model: &AnyModel, vocab: u64, engine: &str, dev: &candle_core::Device) -> Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let mut rng = lowrank_models::generate::SplitMix64(3);
    let prompts: Vec<Vec<u32>> = (0..a.batch).map(|_| (0..a.prompt_tokens).map(|_| (rng.next_u64() % vocab) as u32).collect()).collect();
    let params = lowrank_models::generate::SamplingParams { max_new_tokens: a.new_tokens, ignore_stop: true, ..Default::default() };
    let mut times = Vec::new();
    for i in 0..=a.repeats {
        let t = Instant::now();
        let out = lowrank_models::generate::generate(model, &prompts, &params, 0)?;
        anyhow::ensure!(out.iter().all(|o| o.len() == a.new_tokens), "generated {} tokens", out[0].len());
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let median = times[times.len() / 2];
    println!("{}", serde_json::json!({
        "bench": "generate", "model": a.model.display().to_string(), "device": device_name(dev), "prompt_tokens": a.prompt_tokens,
        "adapter_dir": a.adapter.as_ref().map(|p| p.display().to_string()),
        "new_tokens": a.new_tokens, "batch": a.batch, "adapter": if a.unmerged { "unmerged" } else { "merged" }, "quantize": a.quantize, "engine": engine,
        "threads": candle_core::utils::get_num_threads(), "repeats": a.repeats,
        "tokens_per_s": (a.batch * a.new_tokens) as f64 / median, "seconds": median,
        "seconds_min": times[0], "seconds_max": times[times.len() - 1], "peak_rss_mib": peak_rss_mib(),
    }));
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Comma-separated module names, or all-linear (default: q_proj,v_proj for LoRA and DoRA,
    /// PEFT's family default for the other methods).
    #[arg(long)]
    targets: Option<String>,
    /// The PEFT method: lora, dora, ia3, bitfit, ln_tuning.
    #[arg(long, default_value = "lora")]
    method: String,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Activation checkpointing (recompute each layer in the backward).
    #[arg(long)]
    checkpoint: bool,
    /// Expand a GGUF model's quantized linear weights to f32 on load (default: kept packed and
    /// expanded per product, as `lowrank train` does with `model.keep_quantized = true`).
    #[arg(long)]
    dequantize: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let a = match cmd {
        BenchCommand::Train(a) => a,
        BenchCommand::Generate(g) => return run_generate(g),
    };
    anyhow::ensure!(a.steps >= 1, "--steps must be at least 1");
    let dev = device();
    let loaded = load_model_with(&a.model, &dev, training_dtype(&a.dtype)?, !a.dequantize).with_context(|| format!("loading model {}", a.model.display()))?;
    let layout = model_layout(&loaded.config)?;
    let method = lowrank_peft::methods::by_name(&a.method)?;
    // LoRA and DoRA: rank r, alpha 2r; every method: the targets given, else its default.
    let mut settings = toml::Table::new();
    if matches!(a.method.as_str(), "lora" | "dora") {
        settings.insert("r".into(), toml::Value::Integer(a.rank as i64));
        settings.insert("alpha".into(), toml::Value::Float(2.0 * a.rank as f64));
        settings.insert("init_seed".into(), toml::Value::Integer(1));
    }
    if let Some(t) = &a.targets {
        let spec = targets_of(t);
        settings.insert("targets".into(), toml::Value::try_from(&spec)?);
    }
    let ctx = lowrank_peft::InitContext { layout: &layout, config: &loaded.config, weights: &loaded.weights, device: &dev, seed: 1 };
    let adapter = method.init(&toml::Value::Table(settings), &ctx)?;
    let mut model = AnyModel::new(&loaded.config, &loaded.weights, adapter.hook(), &dev)?;
    anyhow::ensure!(model.set_activation_checkpointing(a.checkpoint), "--checkpoint is only implemented for the Llama family");
    let vocab = loaded.config.vocab_size() as u64;
    let mut rng = lowrank_models::generate::SplitMix64(7);
    let ids: Vec<u32> = (0..a.batch * a.seq).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let labels: Vec<Vec<i64>> = ids.chunks(a.seq).map(|r| r.iter().map(|&x| x as i64).collect()).collect();
    let input = candle_core::Tensor::from_vec(ids, (a.batch, a.seq), &dev)?;
    let vars = adapter.named_vars();
    let var_list: Vec<candle_core::Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let debug_mem = std::env::var("LOWRANK_DEBUG_MEM").is_ok();
    let rss = || std::fs::read_to_string("/proc/self/status").ok().and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(String::from)).unwrap_or_default();
    if debug_mem {
        eprintln!("after load: {} (peak {:.0} MiB)", rss(), peak_rss_mib());
    }
    for i in 0..=a.steps {
        let t = Instant::now();
        // Every position but the first is a target: the loss is averaged over batch · (seq − 1).
        let targets = a.batch * a.seq.saturating_sub(1);
        let (loss, _, grads) = model.loss_and_grads(&input, None, &labels, 0.0, 1.0 / targets.max(1) as f64, &var_list)?;
        if debug_mem {
            eprintln!("after forward + backward: {} (peak {:.0} MiB)", rss(), peak_rss_mib());
        }
        opt.step(&grads, 1e-4)?;
        // A GPU runs the optimizer's kernels after `step` returns: count them in this step.
        dev.synchronize()?;
        losses.push(loss as f32);
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let median = times[times.len() / 2];
    let line = serde_json::json!({
        "bench": "train",
        "model": a.model.display().to_string(), "device": device_name(&dev),
        "batch": a.batch, "seq": a.seq, "method": a.method, "rank": a.rank, "targets": a.targets.as_deref().unwrap_or("default"), "dtype": a.dtype, "bf16_products": lowrank_models::ops::bf16_gemm::bf16_products(), "activation_checkpointing": a.checkpoint,
        "threads": candle_core::utils::get_num_threads(),
        "steps": a.steps,
        "tokens_per_s": (a.batch * a.seq) as f64 / median,
        "step_ms": median * 1000.0,
        "step_ms_min": times[0] * 1000.0,
        "step_ms_max": times[times.len() - 1] * 1000.0,
        "peak_rss_mib": peak_rss_mib(),
        "trainable_params": adapter.trainable_parameters(),
        "first_loss": losses[0],
        "losses": losses,
    });
    println!("{line}");
    Ok(())
}
