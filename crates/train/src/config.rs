//! The run file (TOML): model, LoRA, data, training and report settings, with `--set` overrides
//! and unknown keys reported with the nearest valid name.
use crate::data::DataFormat;
use crate::error::{Result, TrainError};
use crate::optim::Schedule;
use lowrank_peft::LoraConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A Hugging Face folder or a `.gguf` file (`~` and `$VARS` expanded).
    pub path: String,
    /// Compute dtype: `f32` (default), `bf16` or `f16`.
    pub dtype: String,
    /// A GGUF base model's Q4_0 / Q4_1 / Q8_0 linear weights stay block-quantized during
    /// training and are expanded for each product (QLoRA-style; same values, a sixth of the f32
    /// memory for Q4). Default true; CPU and f32 only.
    pub keep_quantized: bool,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { path: String::new(), dtype: "f32".into(), keep_quantized: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub format: DataFormat,
    pub train: String,
    /// Parallel text: the target-side file of `train`.
    pub train_target: Option<String>,
    pub valid: Option<String>,
    pub valid_target: Option<String>,
    /// Prompts shown before and after training, side by side (first unique prompts).
    pub test: Option<String>,
    pub test_target: Option<String>,
    pub prompt_column: String,
    pub completion_column: String,
    pub prompt_template: String,
    pub completion_template: String,
    pub append_eos: bool,
    pub max_length: usize,
    /// Use only the first N training pairs (0: all).
    pub train_limit: usize,
    /// Use only the first N validation pairs (0: all).
    pub valid_limit: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            format: DataFormat::Auto,
            train: String::new(),
            train_target: None,
            valid: None,
            valid_target: None,
            test: None,
            test_target: None,
            prompt_column: "prompt".into(),
            completion_column: "completion".into(),
            prompt_template: "{prompt}".into(),
            completion_template: "{completion}".into(),
            append_eos: true,
            max_length: 256,
            train_limit: 0,
            valid_limit: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Optimizer steps; 0: derived from `epochs`.
    pub steps: usize,
    pub epochs: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Validation loss every N steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: none).
    pub save_every: usize,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Keep only each layer's input in the forward and recompute layers in the backward: less
    /// memory, about a third more time (Llama family).
    pub activation_checkpointing: bool,
    /// A NaN or infinite loss, gradient or parameter: `error` stops the run naming the step and
    /// the tensor; `skip` skips that step with a warning.
    pub on_nonfinite: crate::guard::OnNonFinite,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            steps: 0,
            epochs: 1.0,
            batch_size: 8,
            grad_accum: 1,
            lr: 2e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            max_grad_norm: 1.0,
            label_smoothing: 0.0,
            seed: 42,
            eval_every: 0,
            save_every: 0,
            threads: 0,
            activation_checkpointing: false,
            on_nonfinite: crate::guard::OnNonFinite::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// How many test prompts to generate for, before and after training.
    pub samples: usize,
    pub max_new_tokens: usize,
    /// Wrap prompts in the tokenizer's chat template when generating samples.
    pub chat_template: bool,
    /// Beam width for the samples (1: greedy).
    pub num_beams: usize,
    pub length_penalty: f64,
    pub no_repeat_ngram_size: usize,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self { samples: 0, max_new_tokens: 48, chat_template: false, num_beams: 1, length_penalty: 1.0, no_repeat_ngram_size: 0 }
    }
}

/// Which PEFT method the run trains (`[peft] method = "lora"`); its settings are the section of
/// the same name (`[lora]`, `[ia3]`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeftSection {
    pub method: String,
}

impl Default for PeftSection {
    fn default() -> Self {
        Self { method: "lora".into() }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ModelSection,
    pub peft: PeftSection,
    pub lora: LoraConfig,
    pub data: DataSection,
    pub train: TrainSection,
    pub report: ReportSection,
    /// Run folder (overridden by `--output`).
    pub output: Option<String>,
    /// The settings sections of the methods other than LoRA (`[ia3]`, ...) as written; the
    /// method reads its own.
    #[serde(skip)]
    pub method_sections: std::collections::BTreeMap<String, toml::Value>,
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of ..." messages.
fn explain(msg: &str) -> String {
    let flat: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let msg = flat.join(" ");
    let msg = msg.as_str();
    let Some(start) = msg.find("unknown field `") else { return msg.to_string() };
    let rest = &msg[start + 15..];
    let Some(end) = rest.find('`') else { return msg.to_string() };
    let bad = &rest[..end];
    let candidates: Vec<&str> = rest[end..].split('`').skip(2).step_by(2).collect();
    match candidates.iter().min_by_key(|c| levenshtein(bad, c)) {
        Some(best) => format!("{} (did you mean `{best}`?)", msg.trim_end()),
        None => msg.to_string(),
    }
}

/// [`explain`], with the methods' section names among the top-level keys suggested.
fn explain_with_sections(msg: &str) -> String {
    let sections = lowrank_peft::methods::section_names().into_iter().filter(|s| *s != "lora").map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    let msg = if msg.contains("expected one of `model`") && !sections.is_empty() { msg.replacen("expected one of `model`", &format!("expected one of {sections}, `model`"), 1) } else { msg.to_string() };
    explain(&msg)
}

/// Expands a leading `~` and `$VAR` / `${VAR}` references.
pub fn expand_path(p: &str) -> PathBuf {
    let mut s = p.to_string();
    if let Some(rest) = s.strip_prefix("~/") {
        if let Ok(home) = std::env::var("HOME") {
            s = format!("{home}/{rest}");
        }
    }
    let re_like = |s: &str| -> String {
        let mut out = String::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '$' {
                let braced = chars.get(i + 1) == Some(&'{');
                let start = if braced { i + 2 } else { i + 1 };
                let mut j = start;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                if j > start {
                    let name: String = chars[start..j].iter().collect();
                    out.push_str(&std::env::var(&name).unwrap_or_default());
                    i = if braced && chars.get(j) == Some(&'}') { j + 1 } else { j };
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        out
    };
    PathBuf::from(re_like(&s))
}

/// Applies `section.key=value` (value parsed as TOML, else taken as a string).
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> std::result::Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| format!("--set `{assignment}`: expected section.key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut table = doc;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("--set `{assignment}`: `{p}` is not a section"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl RunConfig {
    /// Parses TOML text (after `overrides`); `origin` names the file in errors.
    pub fn from_toml_str(text: &str, overrides: &[String], origin: &Path) -> Result<Self> {
        let cfg_err = |reason: String| TrainError::Config { path: origin.to_path_buf(), reason };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| cfg_err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut doc, o).map_err(cfg_err)?;
        }
        // The sections of the methods other than LoRA are the methods' to read.
        let mut method_sections = std::collections::BTreeMap::new();
        for name in lowrank_peft::methods::section_names() {
            if name != "lora" {
                if let Some(v) = doc.remove(name) {
                    method_sections.insert(name.to_string(), v);
                }
            }
        }
        let has_lora_section = doc.contains_key("lora");
        let mut cfg: RunConfig = toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| cfg_err(explain_with_sections(&e.to_string())))?;
        cfg.method_sections = method_sections;
        cfg.validate(origin, has_lora_section)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml_str(&text, overrides, path)
    }

    /// The run's method settings: its section as a TOML table (empty when not written).
    pub fn method_settings(&self) -> toml::Value {
        if self.peft.method == "lora" {
            return toml::Value::try_from(&self.lora).unwrap_or_else(|_| toml::Value::Table(Default::default()));
        }
        self.method_sections.get(&self.peft.method).cloned().unwrap_or_else(|| toml::Value::Table(Default::default()))
    }

    fn validate(&self, origin: &Path, has_lora_section: bool) -> Result<()> {
        let bad = |reason: &str| Err(TrainError::Config { path: origin.to_path_buf(), reason: reason.to_string() });
        if self.model.path.is_empty() {
            return bad("model.path is required");
        }
        if self.data.train.is_empty() {
            return bad("data.train is required");
        }
        if self.train.batch_size == 0 || self.train.grad_accum == 0 {
            return bad("train.batch_size and train.grad_accum must be at least 1");
        }
        let t = &self.train;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        let non_negative = |v: f64| v >= 0.0 && v.is_finite();
        if !positive(t.lr) {
            return bad(&format!("train.lr must be a positive number, got {}", t.lr));
        }
        if !non_negative(t.epochs) {
            return bad(&format!("train.epochs must be a number ≥ 0, got {}", t.epochs));
        }
        if t.steps == 0 && t.epochs == 0.0 {
            return bad("train.steps = 0 and train.epochs = 0: nothing to train (set one of them)");
        }
        if !non_negative(t.weight_decay) {
            return bad(&format!("train.weight_decay must be a number ≥ 0, got {}", t.weight_decay));
        }
        for (name, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(&format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if !positive(t.eps) {
            return bad(&format!("train.eps must be a positive number, got {}", t.eps));
        }
        if !non_negative(t.max_grad_norm) {
            return bad(&format!("train.max_grad_norm must be a number ≥ 0 (0: no clipping), got {}", t.max_grad_norm));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return bad(&format!("train.label_smoothing must be in [0, 1), got {}", t.label_smoothing));
        }
        if self.data.max_length < 2 {
            return bad(&format!("data.max_length must be at least 2, got {}", self.data.max_length));
        }
        let r = &self.report;
        if r.num_beams == 0 {
            return bad("report.num_beams must be at least 1 (1: greedy)");
        }
        if r.samples > 0 && r.max_new_tokens == 0 {
            return bad("report.max_new_tokens must be at least 1 when report.samples > 0");
        }
        if !r.length_penalty.is_finite() {
            return bad(&format!("report.length_penalty must be a finite number, got {}", r.length_penalty));
        }
        crate::data::check_template(&self.data.prompt_template, "prompt", "data.prompt_template").map_err(|e| TrainError::Config { path: origin.to_path_buf(), reason: e })?;
        crate::data::check_template(&self.data.completion_template, "completion", "data.completion_template").map_err(|e| TrainError::Config { path: origin.to_path_buf(), reason: e })?;
        if !matches!(self.model.dtype.as_str(), "f32" | "bf16" | "f16") {
            return bad("model.dtype must be f32, bf16 or f16");
        }
        let method = lowrank_peft::methods::by_name(&self.peft.method).map_err(|e| TrainError::Config { path: origin.to_path_buf(), reason: format!("peft.method: {e}") })?;
        // A section of one method beside another method is a mistake, not something to ignore.
        let mut given: Vec<&str> = self.method_sections.keys().map(String::as_str).collect();
        if has_lora_section {
            given.push("lora");
        }
        if let Some(other) = given.iter().find(|s| **s != self.peft.method) {
            return bad(&format!("[{other}] sets the settings of method `{other}`, but peft.method = \"{}\" (remove the section or set peft.method = \"{other}\")", self.peft.method));
        }
        method.check(&self.method_settings()).map_err(|e| TrainError::Config { path: origin.to_path_buf(), reason: format!("[{}] {}", self.peft.method, e.to_string().trim_start_matches("invalid adapter setting: ")) })?;
        Ok(())
    }

    /// The settings that determine what a run computes — model, method and its settings, data,
    /// seed and shapes — flattened to `section.key` → value. A checkpoint records them, and
    /// resuming with different ones is refused naming the keys that differ. (Step counts,
    /// learning rate and reporting may change on resume.)
    pub fn identity(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let mut add = |section: &str, v: toml::Value, skip: &[&str]| {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    if !skip.contains(&k.as_str()) {
                        out.insert(format!("{section}.{k}"), v.to_string());
                    }
                }
            }
        };
        let table = |v: Result<toml::Value>| v.unwrap_or_else(|_| toml::Value::Table(Default::default()));
        add("model", table(toml::Value::try_from(&self.model).map_err(|e| TrainError::Invalid(e.to_string()))), &[]);
        add("peft", table(toml::Value::try_from(&self.peft).map_err(|e| TrainError::Invalid(e.to_string()))), &[]);
        add(&self.peft.method, self.method_settings(), &[]);
        add("data", table(toml::Value::try_from(&self.data).map_err(|e| TrainError::Invalid(e.to_string()))), &["test", "test_target"]);
        let t = &self.train;
        for (k, v) in [("seed", t.seed.to_string()), ("batch_size", t.batch_size.to_string()), ("grad_accum", t.grad_accum.to_string())] {
            out.insert(format!("train.{k}"), v);
        }
        out
    }

    /// A short hash of [`RunConfig::identity`] (FNV-1a, hex).
    pub fn identity_hash(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in self.identity() {
            for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b'\n']) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// The resolved settings as TOML (the run folder's `config.toml`), method sections included.
    pub fn to_toml(&self) -> String {
        let Ok(toml::Value::Table(mut t)) = toml::Value::try_from(self) else { return String::new() };
        if self.peft.method != "lora" {
            // LoRA's defaults are not this run's settings.
            t.remove("lora");
        }
        for (name, section) in &self.method_sections {
            t.insert(name.clone(), section.clone());
        }
        toml::to_string_pretty(&t).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[model]\npath = \"m\"\n[data]\ntrain = \"t.csv\"\n";

    #[test]
    fn typo_names_nearest_key() {
        let err = RunConfig::from_toml_str(&format!("{BASE}[train]\nlerning_rate = 1.0\n"), &[], Path::new("run.toml")).unwrap_err().to_string();
        assert!(err.contains("lerning_rate") && err.contains("did you mean"), "{err}");
        let err = RunConfig::from_toml_str(&format!("{BASE}[train]\nbatch_sise = 4\n"), &[], Path::new("run.toml")).unwrap_err().to_string();
        assert!(err.contains("did you mean `batch_size`"), "{err}");
        assert!(err.contains("run.toml"), "{err}");
    }

    #[test]
    fn overrides_apply_with_types() {
        let cfg = RunConfig::from_toml_str(BASE, &["train.lr=0.5".into(), "lora.targets=[\"q_proj\"]".into(), "model.dtype=f32".into()], Path::new("x")).unwrap();
        assert_eq!(cfg.train.lr, 0.5);
        assert_eq!(cfg.lora.targets, lowrank_peft::TargetSpec::Names(vec!["q_proj".into()]));
    }

    #[test]
    fn lora_typo_is_reported() {
        let err = RunConfig::from_toml_str(&format!("{BASE}[lora]\nrank = 4\n"), &[], Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("rank"), "{err}");
    }
}
