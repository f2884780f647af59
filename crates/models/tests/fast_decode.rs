//! The CPU decoder against Hugging Face transformers + PEFT (golden logits and `generate`
//! outputs of the tiny Llama fixture) and against PyTorch on GGUF-dequantized weights.
use candle_core::{DType, Device, Tensor};
use lowrank_models::beam::{beam_search, BeamParams};
use lowrank_models::fast_decode::{DecodeFormat, LlamaDecoder, LoraBranch};
use lowrank_models::generate::{generate, SamplingParams};
use lowrank_models::kv_cache::HostKv;
use lowrank_models::packed_matrix::BlockFormat;
use lowrank_models::weights::read_safetensors;
use lowrank_models::{load_model_with, CausalLm, KvCache};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

fn golden() -> BTreeMap<String, Tensor> {
    read_safetensors(&fx().join("golden.safetensors"), &Device::Cpu, None).unwrap()
}

/// The PEFT adapter of the fixture as unmerged branches (`scale = alpha / r = 2`).
fn peft_branches() -> BTreeMap<String, LoraBranch> {
    let ad = read_safetensors(&fx().join("peft-adapter/adapter_model.safetensors"), &Device::Cpu, None).unwrap();
    let mut out = BTreeMap::new();
    for (key, a) in &ad {
        let Some(path) = key.strip_suffix(".lora_A.weight") else { continue };
        let b = &ad[&format!("{path}.lora_B.weight")];
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        out.insert(path.strip_prefix("base_model.model.").unwrap().to_string(), LoraBranch { r: a.dims()[0], scale: 2.0, a: flat(a), b: flat(b) });
    }
    assert_eq!(out.len(), 4);
    out
}

fn decoder(path: &Path, lora: &BTreeMap<String, LoraBranch>, format: DecodeFormat) -> LlamaDecoder {
    let m = load_model_with(path, &Device::Cpu, DType::F32, true).unwrap();
    LlamaDecoder::new(m.config.as_llama().unwrap(), &m.weights, lora, format).unwrap()
}

/// The largest |difference| to `want: (b, t, vocab)` at the kept positions, decoding the fixture
/// batch in three ways: one position a step, a 4-position prefill then single steps, and the
/// whole sequence at once (last position only).
fn max_diff_to(dec: &LlamaDecoder, want: &Tensor) -> f32 {
    let g = golden();
    let ids = g["input_ids"].to_vec2::<i64>().unwrap();
    let mask = g["attention_mask"].to_vec2::<i64>().unwrap();
    let want = want.to_vec3::<f32>().unwrap();
    let (b, t) = (ids.len(), ids[0].len());
    let keep: Vec<Vec<u8>> = mask.iter().map(|r| r.iter().map(|&m| m as u8).collect()).collect();
    let mut worst = 0f32;
    let mut compare = |pos: usize, logits: &[f32]| {
        for row in 0..b {
            if keep[row][pos] == 1 {
                for (x, y) in logits[row * 400..(row + 1) * 400].iter().zip(&want[row][pos]) {
                    worst = worst.max((x - y).abs());
                }
            }
        }
    };
    for prefill in [1usize, 4, t] {
        let mut cache = HostKv::default();
        let mut at = 0;
        while at < t {
            let n = if at == 0 { prefill } else { 1 };
            let step_ids: Vec<u32> = ids.iter().flat_map(|r| r[at..at + n].iter().map(|&x| x as u32)).collect();
            let step_keep: Vec<Vec<u8>> = keep.iter().map(|r| r[..at + n].to_vec()).collect();
            let logits = dec.step(&step_ids, b, n, &step_keep, &mut cache).unwrap();
            compare(at + n - 1, &logits);
            at += n;
        }
        assert_eq!(cache.len, t);
    }
    worst
}

#[test]
fn logits_match_transformers_with_and_without_an_unmerged_adapter() {
    let g = golden();
    let none = BTreeMap::new();
    let d = max_diff_to(&decoder(&fx().join("hf"), &none, DecodeFormat::AsLoaded), &g["base.logits"]);
    println!("base: max |diff| vs transformers = {d:e}");
    assert!(d < 1e-4, "base {d}");
    let d = max_diff_to(&decoder(&fx().join("hf"), &peft_branches(), DecodeFormat::AsLoaded), &g["peft.logits"]);
    println!("LoRA unmerged: max |diff| vs transformers + PEFT = {d:e}");
    assert!(d < 1e-4, "peft {d}");
    // Qwen2: q/k/v carry a bias.
    let d = max_diff_to(&decoder(&fx().join("hf-qwen2"), &none, DecodeFormat::AsLoaded), &g["qwen2.logits"]);
    println!("qwen2: max |diff| vs transformers = {d:e}");
    assert!(d < 1e-4, "qwen2 {d}");
}

#[test]
fn gguf_blocks_read_as_stored_match_pytorch_on_dequantized_weights() {
    let refs = read_safetensors(&fx().join("gguf_dequant_logits.safetensors"), &Device::Cpu, None).unwrap();
    for (file, key) in [("model-q8_0.gguf", "q8_0.logits"), ("model-q4_1.gguf", "q4_1.logits")] {
        let d = max_diff_to(&decoder(&fx().join(file), &BTreeMap::new(), DecodeFormat::AsLoaded), &refs[key]);
        println!("{file}: max |diff| vs PyTorch on dequantized weights = {d:e}");
        assert!(d < 1e-4, "{file}: {d}");
    }
}

#[test]
fn greedy_and_beam_search_match_hf_generate() {
    let g = golden();
    let row = |key: &str| -> Vec<u32> { g[key].to_vec2::<i64>().unwrap()[0].iter().map(|&x| x as u32).collect() };
    let prompt = row("greedy.prompt_ids");
    let p = SamplingParams { max_new_tokens: 12, ignore_stop: true, ..Default::default() };
    let plain = decoder(&fx().join("hf"), &BTreeMap::new(), DecodeFormat::AsLoaded);
    let adapted = decoder(&fx().join("hf"), &peft_branches(), DecodeFormat::AsLoaded);
    assert_eq!(generate(&plain, &[prompt.clone()], &p, 0).unwrap()[0], row("greedy.base_output_ids")[prompt.len()..]);
    assert_eq!(generate(&adapted, &[prompt.clone()], &p, 0).unwrap()[0], row("greedy.output_ids")[prompt.len()..]);
    let beam = BeamParams { num_beams: 3, max_new_tokens: 12, min_new_tokens: 12, length_penalty: 1.0, no_repeat_ngram_size: 0, early_stopping: true, eos_ids: vec![2] };
    assert_eq!(beam_search(&adapted, &[prompt.clone()], &beam, 0).unwrap()[0], row("beam.output_ids")[prompt.len()..]);
    // Batched with left padding: each row as when decoded alone.
    let prompts = vec![prompt.clone(), vec![1, 37, 120], vec![5, 9, 11, 13, 200, 7, 3]];
    let batched = generate(&adapted, &prompts, &p, 0).unwrap();
    for (i, pr) in prompts.iter().enumerate() {
        assert_eq!(batched[i], generate(&adapted, std::slice::from_ref(pr), &p, 0).unwrap()[0], "prompt {i}");
    }
}

#[test]
fn quantizing_for_decoding_stays_close_and_bad_inputs_are_errors() {
    let g = golden();
    let dec = decoder(&fx().join("hf"), &BTreeMap::new(), DecodeFormat::Quantize(BlockFormat::Q8_0));
    let d = max_diff_to(&dec, &g["base.logits"]);
    let scale = g["base.logits"].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    println!("f32 weights quantized to Q8_0: max |diff| vs transformers f32 = {d:e} (largest |logit| {scale})");
    // Quantized (so not equal), and near: this tiny random model is sensitive (candle's own Q8_0
    // path, which also quantizes the activations, is 0.43 away).
    assert!(d > 1e-3 && d < 0.1 * scale, "{d} vs {scale}");
    let mut cache = KvCache::default();
    let ids = Tensor::new(&[[1u32, 400]], &Device::Cpu).unwrap();
    let err = dec.next_logits(&ids, None, &mut cache).unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("vocabulary"), "{err}");
    let m = load_model_with(&fx().join("hf"), &Device::Cpu, DType::F32, true).unwrap();
    let mut bad = peft_branches();
    bad.values_mut().next().unwrap().a.pop();
    let err = LlamaDecoder::new(m.config.as_llama().unwrap(), &m.weights, &bad, DecodeFormat::AsLoaded).err().unwrap().to_string();
    assert!(err.contains("q_proj") && err.contains("LoRA"), "{err}");
    let err = dec.loss_sum(&ids, None, &[vec![1, 2]], 0.0, false).err().unwrap().to_string();
    assert!(err.contains("generates text only"), "{err}");
}

