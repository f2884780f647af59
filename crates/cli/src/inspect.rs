//! `lowrank inspect`: modules, shapes, dtypes and parameter counts of a model (HF folder or
//! GGUF) or of an adapter folder; with `--lora`, the trainable count as PEFT prints it.
use crate::common::{thousands, trainable_line};
use anyhow::{Context, Result};
use lowrank_models::gguf::{hf_name, GgufFile};
use lowrank_models::load_config;

use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder, a .gguf file, or a PEFT adapter folder.
    path: PathBuf,
    /// LoRA settings to count, e.g. `r=8,alpha=16,targets=q_proj,v_proj` (`--method lora` with
    /// these settings).
    #[arg(long)]
    lora: Option<String>,
    /// A PEFT method to count (lora, dora, ia3, bitfit, ln_tuning), with its run-file settings as
    /// `key=value,...` after it, e.g. `--method ia3 targets=k_proj,v_proj`.
    #[arg(long, num_args = 1..=2, value_names = ["NAME", "SETTINGS"])]
    method: Vec<String>,
    /// Print every tensor, not only a summary per module kind.
    #[arg(long)]
    all: bool,
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
        let path = a.path.join("adapter_config.json");
        let cfg = lowrank_peft::folder::read_config(&path)?;
        let peft_type = cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("(none)");
        let method = lowrank_peft::methods::by_peft_type(peft_type, &path).map(|m| m.name()).unwrap_or("not one lowrank reads");
        let method = if cfg.get("use_dora").and_then(|v| v.as_bool()) == Some(true) { "dora" } else { method };
        println!("adapter: peft_type {peft_type} (lowrank method: {method}), task {}, base model {}", cfg.get("task_type").and_then(|v| v.as_str()).unwrap_or("?"), cfg.get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("?"));
        println!("trainable params: {} in {} tensors", thousands(total), rows.len());
        println!("adapter_config.json:\n{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    };
    println!("{}", config.summary());
    let (name, settings) = match (&a.lora, a.method.as_slice()) {
        (Some(_), [_, ..]) => anyhow::bail!("--lora and --method: give one (--lora S is --method lora S)"),
        (Some(spec), []) => ("lora".to_string(), Some(spec.clone())),
        (None, [name]) => (name.clone(), None),
        (None, [name, spec]) => (name.clone(), Some(spec.clone())),
        (None, _) => return Ok(()),
    };
    let method = lowrank_peft::methods::by_name(&name)?;
    let settings = parse_settings(settings.as_deref().unwrap_or(""), &name)?;
    let layout = lowrank_models::model_layout(&config)?;
    let weights = lowrank_models::Weights::shapes_only();
    let ctx = lowrank_peft::InitContext { layout: &layout, config: &config, weights: &weights, device: &candle_core::Device::Cpu, seed: 1 };
    let adapter = method.init(&settings, &ctx)?;
    println!("{}", adapter.describe());
    println!("{}", trainable_line(adapter.trainable_parameters(), total));
    Ok(())
}

/// `key=value,...` as a method's run-file section: the values of `targets`, `feedforward` and
/// `exclude` are lists of names (running to the next `key=`; one regular expression or
/// `all-linear` stays a string), others TOML values (numbers, booleans) or strings. LoRA's
/// `rslora` and `lora_alpha` are accepted as `use_rslora` and `alpha`.
fn parse_settings(s: &str, method: &str) -> Result<toml::Value> {
    const LISTS: [&str; 3] = ["targets", "feedforward", "exclude"];
    let mut table = toml::Table::new();
    let mut list: Option<(String, Vec<String>)> = None;
    let flush = |table: &mut toml::Table, list: &mut Option<(String, Vec<String>)>| {
        if let Some((k, v)) = list.take() {
            let value = if k != "exclude" && v.len() == 1 && (v[0] == "all-linear" || v[0].contains(['*', '\\', '(', '|'])) { toml::Value::String(v[0].clone()) } else { toml::Value::Array(v.into_iter().map(toml::Value::String).collect()) };
            table.insert(k, value);
        }
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) => {
                flush(&mut table, &mut list);
                let k = match k { "rslora" => "use_rslora", "lora_alpha" => "alpha", "target_modules" => "targets", other => other };
                if LISTS.contains(&k) {
                    list = Some((k.to_string(), vec![v.to_string()]));
                } else {
                    let value = toml::from_str::<toml::Table>(&format!("v = {v}")).ok().and_then(|mut t| t.remove("v")).unwrap_or(toml::Value::String(v.to_string()));
                    table.insert(k.to_string(), value);
                }
            }
            None => match list.as_mut() {
                Some((_, v)) => v.push(part.to_string()),
                None => anyhow::bail!("--method {method}: `{part}` is not key=value"),
            },
        }
    }
    flush(&mut table, &mut list);
    Ok(toml::Value::Table(table))
}
