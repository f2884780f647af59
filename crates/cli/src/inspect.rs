//! `lowrank inspect`: modules, shapes, dtypes and parameter counts of a model (HF folder or
//! GGUF) or of an adapter folder; with `--lora`, the trainable count as PEFT prints it.
use crate::common::{thousands, trainable_line};
use anyhow::{Context, Result};
use lowrank_models::gguf::{hf_name, GgufFile};
use lowrank_models::load_config;
use lowrank_peft::{LoraAdapters, LoraConfig, TargetSpec};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder, a .gguf file, or a PEFT adapter folder.
    path: PathBuf,
    /// LoRA settings to count, e.g. `r=8,alpha=16,targets=q_proj,v_proj`.
    #[arg(long)]
    lora: Option<String>,
    /// Print every tensor, not only a summary per module kind.
    #[arg(long)]
    all: bool,
}

/// Parses `r=8,alpha=16,targets=q_proj,v_proj` (names after `targets=` run to the next `key=`).
pub fn parse_lora_spec(s: &str) -> Result<LoraConfig> {
    let mut cfg = LoraConfig::default();
    let mut targets: Option<Vec<String>> = None;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("r", v)) => cfg.r = v.parse().with_context(|| format!("--lora: r = `{v}` is not a number"))?,
            Some(("alpha", v)) | Some(("lora_alpha", v)) => cfg.alpha = v.parse().with_context(|| format!("--lora: alpha = `{v}` is not a number"))?,
            Some(("targets", v)) | Some(("target_modules", v)) => targets = Some(vec![v.to_string()]),
            Some(("rslora", v)) => cfg.use_rslora = v == "true",
            Some((k, _)) => anyhow::bail!("--lora: unknown setting `{k}` (r, alpha, targets, rslora)"),
            None => match targets.as_mut() {
                Some(t) => t.push(part.to_string()),
                None => anyhow::bail!("--lora: `{part}` is not key=value"),
            },
        }
    }
    if let Some(t) = targets {
        cfg.targets = if t.len() == 1 && (t[0] == "all-linear" || t[0].contains(['*', '\\', '(', '|'])) { TargetSpec::Pattern(t[0].clone()) } else { TargetSpec::Names(t) };
    }
    Ok(cfg)
}

struct Row {
    name: String,
    shape: Vec<usize>,
    dtype: String,
}

fn rows_of(path: &Path) -> Result<Vec<Row>> {
    if path.is_file() {
        let g = GgufFile::open(path)?;
        let mut rows: Vec<Row> = g
            .content
            .tensor_infos
            .iter()
            .map(|(n, info)| Row { name: hf_name(n).unwrap_or_else(|| n.clone()), shape: info.shape.dims().to_vec(), dtype: format!("{:?}", info.ggml_dtype) })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(rows);
    }
    let mut files = vec![];
    for f in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let p = f?.path();
        if p.extension().map(|e| e == "safetensors").unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "{}: no .safetensors file", path.display());
    let mut rows = vec![];
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("{}: invalid safetensors file: {e}", f.display()))?;
        for (name, info) in meta.tensors() {
            rows.push(Row { name, shape: info.shape.clone(), dtype: format!("{:?}", info.dtype) });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub fn run(a: InspectArgs) -> Result<()> {
    let is_adapter = a.path.join("adapter_config.json").exists();
    // The configuration first: a broken config.json is reported before any tensor is read.
    let config = if is_adapter { None } else { Some(load_config(&a.path)?) };
    let rows = rows_of(&a.path)?;
    let total: usize = rows.iter().map(|r| r.shape.iter().product::<usize>()).sum();
    if a.all || is_adapter {
        for r in &rows {
            println!("{:<70} {:<16} {:>8} {:>12}", r.name, format!("{:?}", r.shape), r.dtype, thousands(r.shape.iter().product()));
        }
    } else {
        // Group `model.layers.N.` so a 30-layer model prints one line per module kind.
        let mut groups: std::collections::BTreeMap<String, (Vec<usize>, String, usize, usize)> = Default::default();
        for r in &rows {
            let key = r.name.split('.').map(|p| if p.chars().all(|c| c.is_ascii_digit()) { "*" } else { p }).collect::<Vec<_>>().join(".");
            let e = groups.entry(key).or_insert((r.shape.clone(), r.dtype.clone(), 0, 0));
            e.2 += 1;
            e.3 += r.shape.iter().product::<usize>();
        }
        println!("{:<56} {:<16} {:>8} {:>6} {:>14}", "tensor (× count)", "shape", "dtype", "count", "parameters");
        for (k, (shape, dtype, n, p)) in groups {
            println!("{:<56} {:<16} {:>8} {:>6} {:>14}", k, format!("{shape:?}"), dtype, n, thousands(p));
        }
    }
    println!("total parameters: {}", thousands(total));
    let Some(config) = config else {
        let cfg = std::fs::read_to_string(a.path.join("adapter_config.json"))?;
        println!("adapter_config.json:\n{cfg}");
        return Ok(());
    };
    println!("{}", config.summary());
    if let Some(spec) = &a.lora {
        let mut lcfg = parse_lora_spec(spec)?;
        crate::common::family_default_targets(&mut lcfg, &config);
        let adapters = LoraAdapters::init(&lcfg, &lowrank_models::model_layout(&config)?.linear_modules(), &candle_core::Device::Cpu)?;
        println!("LoRA r={} alpha={} on {} modules", lcfg.r, lcfg.alpha, adapters.modules.len());
        println!("{}", trainable_line(adapters.trainable_parameters(), total));
    }
    Ok(())
}
