//! Parity of the T5 encoder–decoder with transformers' `T5ForConditionalGeneration` on the two
//! tiny random models of tests/fixtures/tiny-t5 (regenerate with
//! `python3 scripts/make_fixtures_gpt2_t5.py`): `v1_0` (ReLU FFN, tied head with the
//! `d_model^-0.5` output scaling) and `v1_1` (gated-GELU FFN, separate `lm_head`). Encoder output,
//! decoder logits and losses of the base model; greedy decoding and beam search against HF
//! `generate`, with the PEFT adapter merged into the weights (the LoRA parity itself is in
//! crates/train/tests/parity_t5.rs).
#[path = "../../train/tests/common/mod.rs"]
mod common;
use common::{max_abs, max_abs_diff, max_diff_labelled, rows_i64};
use candle_core::{DType, Device, Tensor};
use lowrank_models::beam::{beam_search, BeamParams};
use lowrank_models::generate::{generate, SamplingParams};
use lowrank_models::t5::T5;
use lowrank_models::weights::{load_hf_weights, read_safetensors};
use lowrank_models::{CausalLm, KvCache, ModelConfig, PlainHook};
use std::collections::BTreeMap;
use std::path::PathBuf;

const PAD: u32 = 0;
const EOS: u32 = 1;
const VERSIONS: [&str; 2] = ["v1_0", "v1_1"];

fn fx(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-t5").join(version)
}

fn golden(version: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(&fx(version).join("golden.safetensors"), &Device::Cpu, None).unwrap()
}

fn row(g: &BTreeMap<String, Tensor>, key: &str) -> Vec<u32> {
    g[key].to_vec2::<i64>().unwrap()[0].iter().map(|&x| x as u32).collect()
}

fn scalar(g: &BTreeMap<String, Tensor>, key: &str) -> f32 {
    g[key].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

/// The tiny T5 of `version`, optionally with `peft-adapter` merged: W += (alpha / r) · B · A.
fn model(version: &str, merged: bool) -> T5 {
    let dir = fx(version).join("hf");
    let ModelConfig::T5(cfg) = ModelConfig::from_json_file(&dir.join("config.json")).unwrap() else { panic!("not a T5 config") };
    let mut w = load_hf_weights(&dir, &Device::Cpu, DType::F32).unwrap();
    if merged {
        let ad_dir = fx(version).join("peft-adapter");
        let ac: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ad_dir.join("adapter_config.json")).unwrap()).unwrap();
        let scale = ac["lora_alpha"].as_f64().unwrap() / ac["r"].as_f64().unwrap();
        let ad = read_safetensors(&ad_dir.join("adapter_model.safetensors"), &Device::Cpu, None).unwrap();
        let mut n = 0;
        for (key, a) in &ad {
            let Some(path) = key.strip_suffix(".lora_A.weight") else { continue };
            let b = &ad[&format!("{path}.lora_B.weight")];
            let name = format!("{}.weight", path.strip_prefix("base_model.model.").unwrap());
            let base = w.tensors[&name].clone();
            w.tensors.insert(name, (base + (b.matmul(a).unwrap() * scale).unwrap()).unwrap());
            n += 1;
        }
        assert_eq!(n, 12, "q and v of 2 encoder self-attention, 2 decoder self- and 2 cross-attention layers");
    }
    T5::new(&cfg, &w, &PlainHook, &Device::Cpu).unwrap()
}

#[test]
fn fixtures_exercise_padding_and_the_configs() {
    for v in VERSIONS {
        let g = golden(v);
        let mask = rows_i64(&g["attention_mask"]);
        assert!(mask.iter().any(|r| r.contains(&0)), "{v}: an encoder row is padded");
        let labels = rows_i64(&g["labels"]);
        assert!(labels.iter().any(|r| r.contains(&-100)), "{v}: a label row is padded");
        let ModelConfig::T5(cfg) = ModelConfig::from_json_file(&fx(v).join("hf/config.json")).unwrap() else { panic!() };
        assert_eq!(cfg.feed_forward.is_gated(), v == "v1_1");
        assert_eq!(cfg.tie_word_embeddings, v == "v1_0");
        assert_eq!(load_hf_weights(&fx(v).join("hf"), &Device::Cpu, DType::F32).unwrap().contains("lm_head.weight"), v == "v1_1");
        // The decoder inputs we derive are HF's `_shift_right(labels)`.
        let m = model(v, false);
        let (dec, padded) = m.shift_right(&labels).unwrap();
        assert_eq!(rows_i64(&dec.to_dtype(DType::I64).unwrap()), rows_i64(&g["decoder_input_ids"]), "{v}");
        assert_eq!(padded, labels);
    }
}

#[test]
fn encoder_output_matches_transformers() {
    for v in VERSIONS {
        let g = golden(v);
        let m = model(v, false);
        let enc = m.encode(&g["input_ids"], Some(&g["attention_mask"]), false).unwrap();
        let d = max_abs_diff(&enc, &g["encoder_hidden"]);
        let scale = max_abs(&g["encoder_hidden"]);
        println!("{v} encoder hidden: max |diff| = {d:e} (max |h| = {scale})");
        assert!(d <= 1e-4 * scale.max(1.0), "{v}: encoder output differs by {d}");
    }
}

#[test]
fn base_logits_and_loss_match_transformers() {
    for v in VERSIONS {
        let g = golden(v);
        let m = model(v, false);
        let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
        let labels = rows_i64(&g["labels"]);
        let logits = m.forward(ids, Some(mask), &labels, false).unwrap();
        assert_eq!(logits.dims(), g["base.logits"].dims());
        let (d, scale) = max_diff_labelled(&logits, &g["base.logits"], &labels);
        println!("{v} base logits: max |diff| = {d:e} (max |logit| = {scale})");
        assert!(d <= 1e-4 * scale.max(1.0), "{v}: logits differ by {d}");
        // The same through encode + decode_logits with HF's decoder inputs.
        let enc = m.encode(ids, Some(mask), false).unwrap();
        let logits2 = m.decode_logits(&enc, Some(mask), &g["decoder_input_ids"], false).unwrap();
        assert!(max_abs_diff(&logits, &logits2) < 1e-6);

        let (sum, n) = CausalLm::loss_sum(&m, ids, Some(mask), &labels, 0.0, false).unwrap();
        assert_eq!(n, labels.iter().flatten().filter(|&&l| l != -100).count());
        let loss = sum.to_scalar::<f32>().unwrap() / n as f32;
        let want = scalar(&g, "base.loss");
        println!("{v} base loss: ours {loss} torch {want} (diff {:e})", (loss - want).abs());
        assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0), "{v}");
    }
}

#[test]
fn label_rows_of_different_lengths_are_padded_with_ignore() {
    let v = "v1_1";
    let g = golden(v);
    let m = model(v, false);
    let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
    let labels = rows_i64(&g["labels"]);
    // Drop the trailing -100 of the shorter row: same loss, same logits at the labelled positions.
    let ragged: Vec<Vec<i64>> = labels.iter().map(|r| r.iter().copied().take_while(|&l| l != -100).collect()).collect();
    assert_ne!(ragged[0].len(), ragged[1].len());
    let (a, na) = m.loss_sum(ids, Some(mask), &labels, 0.1, false).unwrap();
    let (b, nb) = m.loss_sum(ids, Some(mask), &ragged, 0.1, false).unwrap();
    assert_eq!(na, nb);
    assert!((a.to_scalar::<f32>().unwrap() - b.to_scalar::<f32>().unwrap()).abs() < 1e-5);
    let la = m.forward(ids, Some(mask), &labels, false).unwrap();
    let lb = m.forward(ids, Some(mask), &ragged, false).unwrap();
    let (d, _) = max_diff_labelled(&la, &lb, &labels);
    assert!(d < 1e-6);
    // No label at all: zero loss over zero tokens.
    let (z, nz) = m.loss_sum(ids, Some(mask), &[vec![-100, -100], vec![]], 0.0, false).unwrap();
    assert_eq!((z.to_scalar::<f32>().unwrap(), nz), (0.0, 0));
}

#[test]
fn merged_adapter_reproduces_peft_logits_and_losses() {
    for v in VERSIONS {
        let g = golden(v);
        let m = model(v, true);
        let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
        let labels = rows_i64(&g["labels"]);
        let logits = m.forward(ids, Some(mask), &labels, false).unwrap();
        let (d, scale) = max_diff_labelled(&logits, &g["peft.logits"], &labels);
        println!("{v} merged peft logits: max |diff| = {d:e}");
        assert!(d <= 1e-4 * scale.max(1.0), "{v}: logits differ by {d}");
        for (ls, key) in [(0.0, "peft.loss"), (0.1, "peft.loss_ls")] {
            let (sum, n) = m.loss_sum(ids, Some(mask), &labels, ls, false).unwrap();
            let loss = sum.to_scalar::<f32>().unwrap() / n as f32;
            let want = scalar(&g, key);
            println!("{v} {key}: ours {loss} torch {want}");
            assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0), "{v} {key}");
        }
    }
}

/// Step-by-step decoding through `next_logits` (KV cache, cross-attention cache, the encoder's
/// padding mask kept in the cache) reproduces the full-sequence logits at every position.
#[test]
fn incremental_decoding_matches_the_full_forward() {
    for v in VERSIONS {
        let g = golden(v);
        let m = model(v, false);
        let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
        let dec = &g["decoder_input_ids"];
        let full = m.forward(ids, Some(mask), &rows_i64(&g["labels"]), false).unwrap();
        let (b, t) = dec.dims2().unwrap();
        let mut cache = KvCache::default();
        let mut worst = 0f32;
        for i in 0..t {
            let (input, m_cols) = if i == 0 { (ids.clone(), ids.dim(1).unwrap()) } else { (dec.narrow(1, i, 1).unwrap(), ids.dim(1).unwrap() + i) };
            // The mask passed by the decoders grows by one column per step; only its encoder part matters.
            let step_mask = Tensor::cat(&[mask.clone(), Tensor::ones((b, m_cols - ids.dim(1).unwrap()), DType::I64, &Device::Cpu).unwrap()], 1).unwrap();
            let got = m.next_logits(&input, Some(&step_mask), &mut cache).unwrap();
            assert_eq!(cache.len(), i + 1);
            let want = full.narrow(1, i, 1).unwrap().squeeze(1).unwrap();
            worst = worst.max(max_abs_diff(&got, &want));
        }
        println!("{v} incremental vs full logits: max |diff| = {worst:e}");
        assert!(worst < 1e-4, "{v}: {worst}");
    }
}

fn greedy_params() -> SamplingParams {
    SamplingParams { max_new_tokens: 10, ignore_stop: true, ..Default::default() }
}

fn beam_params() -> BeamParams {
    BeamParams { num_beams: 3, max_new_tokens: 10, min_new_tokens: 10, length_penalty: 1.0, no_repeat_ngram_size: 0, early_stopping: true, eos_ids: vec![EOS] }
}

#[test]
fn greedy_matches_hf_with_and_without_adapter() {
    for v in VERSIONS {
        let g = golden(v);
        let prompt = row(&g, "greedy.prompt_ids");
        for (merged, key) in [(true, "greedy.output_ids"), (false, "greedy.base_output_ids")] {
            let out = row(&g, key);
            assert_eq!(out[0], 0, "HF output starts with the decoder start token");
            let want = out[1..].to_vec();
            let m = model(v, merged);
            let got = generate(&m, std::slice::from_ref(&prompt), &greedy_params(), PAD).unwrap();
            println!("{v} {key}: hf {want:?} ours {:?}", got[0]);
            assert_eq!(got[0], want, "{v} {key}");
            // One beam with EOS banned for all steps is exactly HF's greedy with min_new_tokens.
            let one = beam_search(&m, std::slice::from_ref(&prompt), &BeamParams { num_beams: 1, ..beam_params() }, PAD).unwrap();
            assert_eq!(one[0], want, "{v} {key} (one beam)");
        }
    }
}

#[test]
fn beam_search_matches_hf() {
    for v in VERSIONS {
        let g = golden(v);
        let prompt = row(&g, "greedy.prompt_ids");
        let m = model(v, true);
        let greedy = row(&g, "greedy.output_ids")[1..].to_vec();
        let beam = row(&g, "beam.output_ids")[1..].to_vec();
        let beam_nr = row(&g, "beam_nr.output_ids")[1..].to_vec();
        assert_ne!(beam, greedy, "{v}: the fixture prompt is one where beam search and greedy disagree");
        let got = beam_search(&m, std::slice::from_ref(&prompt), &beam_params(), PAD).unwrap();
        println!("{v} beam: hf {beam:?} ours {:?}", got[0]);
        assert_eq!(got[0], beam, "{v} beam");
        let p_nr = BeamParams { no_repeat_ngram_size: 2, length_penalty: 0.9, ..beam_params() };
        let got = beam_search(&m, std::slice::from_ref(&prompt), &p_nr, PAD).unwrap();
        println!("{v} beam_nr: hf {beam_nr:?} ours {:?}", got[0]);
        assert_eq!(got[0], beam_nr, "{v} beam_nr");
    }
}

/// Prompts of different lengths batched (left padding on the encoder side) decode as they do
/// one at a time.
#[test]
fn batched_decoding_equals_one_prompt_at_a_time() {
    for v in VERSIONS {
        let g = golden(v);
        let m = model(v, true);
        let mask = rows_i64(&g["attention_mask"]);
        let mut prompts: Vec<Vec<u32>> = rows_i64(&g["input_ids"])
            .iter()
            .zip(&mask)
            .map(|(r, k)| r.iter().zip(k).filter(|(_, &k)| k == 1).map(|(&x, _)| x as u32).collect())
            .collect();
        prompts.push(row(&g, "greedy.prompt_ids"));
        prompts.push(vec![5, 17, EOS]);
        let batched = generate(&m, &prompts, &greedy_params(), PAD).unwrap();
        let bp = BeamParams { min_new_tokens: 2, no_repeat_ngram_size: 2, ..beam_params() };
        let batched_beam = beam_search(&m, &prompts, &bp, PAD).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(batched[i], generate(&m, std::slice::from_ref(p), &greedy_params(), PAD).unwrap()[0], "{v} greedy prompt {i}");
            assert_eq!(batched_beam[i], beam_search(&m, std::slice::from_ref(p), &bp, PAD).unwrap()[0], "{v} beam prompt {i}");
        }
        println!("{v} batched greedy {batched:?} beam {batched_beam:?}");
    }
}
