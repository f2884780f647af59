//! The training loop: micro-batches → loss averaged over every completion token of the
//! accumulated batch → gradients → clipping → AdamW with warm-up and decay; validation loss,
//! checkpoints, `metrics.jsonl`, and progress through an [`Observer`].
use crate::checkpoint::{save_checkpoint, TrainerState};
use crate::config::TrainSection;
use crate::data::{collate, epoch_batches, Batch, Example};
use crate::error::{Result, TrainError};
use crate::guard::{self, CollapseWatch, OnNonFinite};
use crate::optim::{accumulate, clip_grad_norm, learning_rate, AdamW, AdamWParams};
use candle_core::{Device, Tensor};
use lowrank_models::CausalLm;
use lowrank_peft::Adapter;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One optimizer step, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Non-padding tokens processed this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub step_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The step's update was not applied (a non-finite value, `train.on_nonfinite = "skip"`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Receives progress (the CLI draws a bar; tests collect losses).
pub trait Observer {
    fn start(&mut self, _total_steps: usize, _start_step: usize) {}
    fn step(&mut self, _log: &StepLog) {}
    fn note(&mut self, _msg: &str) {}
    fn finish(&mut self) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// What a finished run reports (`summary.json`), for the whole run even when it was resumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    /// Training time of the whole run (all its sessions).
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Every step's loss (`null`: a skipped step).
    #[serde(deserialize_with = "crate::checkpoint::nulls_as_nan")]
    pub losses: Vec<f64>,
    /// Warnings given during the run (skipped steps, a collapse).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// [`crate::RunConfig::identity_hash`] of the run's settings.
    #[serde(default)]
    pub settings_hash: String,
    /// The step the last session started from (0: not resumed).
    #[serde(default)]
    pub resumed_from: usize,
}

/// Everything the loop works on.
pub struct Trainer<'a> {
    pub model: &'a dyn CausalLm,
    pub adapter: &'a dyn Adapter,
    pub train: &'a [Example],
    pub valid: &'a [Example],
    pub cfg: &'a TrainSection,
    pub pad_id: u32,
    /// Run folder for metrics.jsonl and checkpoints (None: nothing written).
    pub run_dir: Option<PathBuf>,
    /// What the checkpoints' adapter_config.json records (base model, task type, fan_in_fan_out).
    pub adapter_info: lowrank_peft::AdapterInfo,
    /// The model's vocabulary (the loss of a uniform prediction is `ln(vocab_size)`).
    pub vocab_size: usize,
    /// What checkpoints record of the settings ([`crate::RunConfig::identity`] and its hash).
    pub settings: std::collections::BTreeMap<String, String>,
    pub settings_hash: String,
}

/// Optimizer steps of a run over `examples` training examples: `steps`, or `epochs` worth of
/// accumulated batches.
pub fn total_steps(cfg: &TrainSection, examples: usize) -> usize {
    if cfg.steps > 0 {
        return cfg.steps;
    }
    let per_epoch = examples.div_ceil(cfg.batch_size.max(1));
    let micro = (cfg.epochs * per_epoch as f64).ceil() as usize;
    micro.div_ceil(cfg.grad_accum.max(1)).max(1)
}

fn batch_tensors(b: &Batch, dev: &Device) -> Result<(Tensor, Tensor)> {
    Ok((
        Tensor::from_vec(b.input_ids.clone(), (b.rows, b.len), dev)?,
        Tensor::from_vec(b.attention_mask.clone(), (b.rows, b.len), dev)?,
    ))
}

impl Trainer<'_> {
    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.cfg.batch_size.max(1))
    }

    /// Optimizer steps of the whole run: `steps`, or `epochs` worth of accumulated batches.
    pub fn total_steps(&self) -> usize {
        total_steps(self.cfg, self.train.len())
    }

    pub fn optimizer(&self) -> Result<AdamW> {
        let c = self.cfg;
        AdamW::new(self.adapter.named_vars(), AdamWParams { lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay })?.with_lr_scales(self.adapter.lr_scales())
    }

    /// The micro-batch with global index `micro` (epoch = micro / batches_per_epoch).
    fn micro_batch(&self, micro: usize, cache: &mut Option<(usize, Vec<Vec<usize>>)>) -> Batch {
        let per_epoch = self.batches_per_epoch();
        let epoch = micro / per_epoch;
        if cache.as_ref().map(|(e, _)| *e != epoch).unwrap_or(true) {
            *cache = Some((epoch, epoch_batches(self.train, self.cfg.batch_size, self.cfg.seed, epoch)));
        }
        let members: Vec<&Example> = match cache.as_ref().and_then(|(_, o)| o.get(micro % per_epoch)) {
            Some(order) => order.iter().map(|&i| &self.train[i]).collect(),
            None => vec![],
        };
        collate(&members, self.pad_id)
    }

    /// Mean token loss over the validation set (no dropout, no gradients kept).
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let dev = self.model.device();
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in self.valid.chunks(self.cfg.batch_size.max(1)) {
            let members: Vec<&Example> = chunk.iter().collect();
            let b = collate(&members, self.pad_id);
            let (ids, mask) = batch_tensors(&b, dev)?;
            let (s, k) = self.model.loss_sum(&ids, Some(&mask), &b.labels, 0.0, false)?;
            sum += s.detach().to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            n += k;
        }
        Ok(Some(if n == 0 { 0.0 } else { sum / n as f64 }))
    }

    /// Runs from `start` (a restored state and optimizer, or fresh) to the last step.
    pub fn run(&self, opt: &mut AdamW, start: Option<TrainerState>, obs: &mut dyn Observer) -> Result<TrainSummary> {
        let c = self.cfg;
        let total = self.total_steps();
        let first = start.as_ref().map(|s| s.step).unwrap_or(0);
        let dev = self.model.device().clone();
        let vars = opt.vars.clone();
        let var_list: Vec<candle_core::Var> = vars.iter().map(|(_, v)| v.clone()).collect();
        let mut metrics = match &self.run_dir {
            Some(dir) => Some(open_metrics(dir, first)?),
            None => None,
        };
        obs.start(total, first);
        let t0 = Instant::now();
        // A resumed run continues the whole run's record.
        let mut losses = start.as_ref().map(|s| s.losses.clone()).unwrap_or_default();
        let seconds_before = start.as_ref().map(|s| s.seconds).unwrap_or(0.0);
        let mut cache = None;
        let mut last_loss = start.as_ref().map(|s| s.last_loss).unwrap_or(f64::NAN);
        let mut last_val = None;
        let mut tokens_total = start.as_ref().map(|s| s.tokens).unwrap_or(0);
        let mut collapse = CollapseWatch::new(self.vocab_size);
        let mut skipped_in_a_row = 0usize;
        let mut warnings = Vec::new();
        for step in first..total {
            let ts = Instant::now();
            let lr = learning_rate(c.lr, step, total, c.warmup_steps, c.schedule);
            let micros: Vec<Batch> = (0..c.grad_accum).map(|j| self.micro_batch(step * c.grad_accum + j, &mut cache)).collect();
            let denom = micros.iter().map(|b| b.target_tokens).sum::<usize>().max(1);
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut loss_sum = 0f64;
            let mut tokens = 0usize;
            for (j, b) in micros.iter().enumerate() {
                // Dropout masks are a function of (seed, step, micro-batch): resumable.
                self.adapter.reseed(c.seed ^ ((step * c.grad_accum + j) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                let (ids, mask) = batch_tensors(b, &dev)?;
                let (value, _, g) = self.model.loss_and_grads(&ids, Some(&mask), &b.labels, c.label_smoothing as f32, 1.0 / denom as f64, &var_list)?;
                loss_sum += value;
                accumulate(&mut grads, g)?;
                tokens += b.tokens;
            }
            let done = step + 1;
            // Nothing non-finite reaches the parameters: check the loss and the gradients, then
            // the parameters after the update (restored when the step is skipped).
            let mut fault = guard::check_loss(done, loss_sum);
            if fault.is_none() {
                fault = guard::check_grads(done, &vars, &grads)?;
            }
            let mut grad_norm = f64::NAN;
            if fault.is_none() {
                let max_norm = if c.max_grad_norm > 0.0 { Some(c.max_grad_norm) } else { None };
                grad_norm = clip_grad_norm(&mut grads, max_norm)?;
                fault = guard::check_grad_norm(done, grad_norm);
            }
            if fault.is_none() {
                let before = if c.on_nonfinite == OnNonFinite::Skip { Some(opt.snapshot()?) } else { None };
                opt.step(&grads, lr)?;
                fault = guard::check_params(done, &vars)?;
                if let (Some(_), Some(before)) = (&fault, before) {
                    opt.restore(before)?;
                }
            }
            let skipped = fault.is_some();
            match fault {
                Some(f) if c.on_nonfinite == OnNonFinite::Error => return Err(f.error()),
                Some(f) => {
                    skipped_in_a_row += 1;
                    let msg = format!("warning: step {done} skipped: {}", f.what);
                    obs.note(&msg);
                    warnings.push(msg);
                    if skipped_in_a_row >= guard::MAX_SKIPPED_IN_A_ROW {
                        return Err(TrainError::NonFinite { step: done, what: format!("{} ({skipped_in_a_row} steps in a row skipped; train.on_nonfinite = \"skip\" gives up after {})", f.what, guard::MAX_SKIPPED_IN_A_ROW) });
                    }
                }
                None => {
                    skipped_in_a_row = 0;
                    last_loss = loss_sum;
                    if let Some(w) = collapse.observe(done, loss_sum, grad_norm) {
                        obs.note(&w);
                        warnings.push(w);
                    }
                }
            }
            losses.push(loss_sum);
            tokens_total += tokens;
            let micro_done = done * c.grad_accum;
            let eval_now = (c.eval_every > 0 && done % c.eval_every == 0) || done == total;
            let val_loss = if eval_now { self.validation_loss()? } else { None };
            if val_loss.is_some() {
                last_val = val_loss;
            }
            let step_s = ts.elapsed().as_secs_f64();
            let log = StepLog {
                step: done,
                total_steps: total,
                epoch: micro_done as f64 / self.batches_per_epoch() as f64,
                loss: loss_sum,
                lr,
                grad_norm,
                tokens,
                tokens_per_s: tokens as f64 / step_s.max(1e-9),
                step_ms: step_s * 1000.0,
                val_loss,
                skipped,
            };
            if let Some(m) = metrics.as_mut() {
                let line = serde_json::to_string(&log).map_err(|e| TrainError::Invalid(e.to_string()))?;
                writeln!(m.1, "{line}").map_err(|e| TrainError::write_io(&m.0, e))?;
                m.1.flush().map_err(|e| TrainError::write_io(&m.0, e))?;
            }
            obs.step(&log);
            if let Some(dir) = &self.run_dir {
                if c.save_every > 0 && done % c.save_every == 0 && done < total {
                    let state = TrainerState {
                        step: done,
                        total_steps: total,
                        seed: c.seed,
                        micro_batches: micro_done,
                        epoch: micro_done / self.batches_per_epoch(),
                        last_loss,
                        optimizer_steps: Some(opt.t),
                        losses: losses.clone(),
                        seconds: seconds_before + t0.elapsed().as_secs_f64(),
                        tokens: tokens_total,
                        settings: self.settings.clone(),
                        settings_hash: self.settings_hash.clone(),
                    };
                    let p = save_checkpoint(dir, self.adapter, opt, &state, &self.adapter_info)?;
                    obs.note(&format!("checkpoint {}", p.display()));
                }
            }
        }
        obs.finish();
        let seconds = seconds_before + t0.elapsed().as_secs_f64();
        Ok(TrainSummary {
            steps: total,
            final_loss: last_loss,
            val_loss: last_val,
            seconds,
            tokens_per_s: tokens_total as f64 / seconds.max(1e-9),
            losses,
            warnings,
            settings_hash: self.settings_hash.clone(),
            resumed_from: first,
        })
    }
}

/// Opens `metrics.jsonl`, keeping only the lines of steps ≤ `keep_until` (for a resumed run).
fn open_metrics(dir: &Path, keep_until: usize) -> Result<(PathBuf, std::fs::File)> {
    let path = dir.join("metrics.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64())).map(|s| (s as usize) <= keep_until).unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    lowrank_models::weights::write_atomic(&path, kept.concat().as_bytes())?;
    let f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| TrainError::write_io(&path, e))?;
    Ok((path, f))
}
