//! The same tiny model written as GGUF (by the Python `gguf` package, Q/K permuted as llama.cpp
//! does) and as a Hugging Face folder gives the same logits and the same tokens.
use candle_core::{DType, Device, Tensor};
use lowrank_models::weights::read_safetensors;
use lowrank_models::{load_model, Llama, PlainHook};
use std::path::PathBuf;

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

fn logits_of(path: PathBuf) -> (Tensor, Vec<Vec<i64>>) {
    let g = read_safetensors(&fx().join("golden.safetensors"), &Device::Cpu, None).unwrap();
    let m = load_model(&path, &Device::Cpu, DType::F32).unwrap();
    let model = Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap();
    let mask = g["attention_mask"].clone();
    (model.forward(&g["input_ids"], Some(&mask), false).unwrap(), mask.to_vec2::<i64>().unwrap())
}

fn max_masked_diff(a: &Tensor, b: &Tensor, mask: &[Vec<i64>]) -> f32 {
    let a = a.to_vec3::<f32>().unwrap();
    let b = b.to_vec3::<f32>().unwrap();
    let mut d = 0f32;
    for (bi, row) in mask.iter().enumerate() {
        for (ti, &k) in row.iter().enumerate() {
            if k == 1 {
                for (x, y) in a[bi][ti].iter().zip(&b[bi][ti]) {
                    d = d.max((x - y).abs());
                }
            }
        }
    }
    d
}

#[test]
fn f32_gguf_gives_the_hf_logits() {
    let (hf, mask) = logits_of(fx().join("hf"));
    let (gg, _) = logits_of(fx().join("model-f32.gguf"));
    let d = max_masked_diff(&hf, &gg, &mask);
    println!("GGUF f32 vs HF: max |diff| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

#[test]
fn quantized_gguf_matches_dequantized_reference() {
    let refs = read_safetensors(&fx().join("gguf_dequant_logits.safetensors"), &Device::Cpu, None).unwrap();
    for (file, key) in [("model-f16.gguf", "f16.logits"), ("model-q8_0.gguf", "q8_0.logits"), ("model-q4_1.gguf", "q4_1.logits")] {
        let (ours, mask) = logits_of(fx().join(file));
        let d = max_masked_diff(&ours, &refs[key], &mask);
        println!("{file}: max |diff| vs PyTorch on gguf-dequantized weights = {d:e}");
        assert!(d < 1e-3, "{file}: {d}");
    }
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json() {
    let hf = load_model(&fx().join("hf"), &Device::Cpu, DType::F32).unwrap().tokenizer;
    let gg = load_model(&fx().join("model-q8_0.gguf"), &Device::Cpu, DType::F32).unwrap().tokenizer;
    for text in ["name[The Eagle], eatType[coffee shop], food[French]", "<|im_start|>user\nHi there 42<|im_end|>\n", "Ünïcödé  spaces\ttab"] {
        let a = hf.encode(text).unwrap();
        let b = gg.encode(text).unwrap();
        assert_eq!(a, b, "token ids differ for {text:?}");
        assert_eq!(hf.decode(&a).unwrap(), gg.decode(&b).unwrap());
    }
    assert_eq!(gg.eos_ids, vec![2]);
    assert_eq!(gg.bos_id, Some(1));
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fx().join("model-q8_0.gguf")).unwrap();
    let p = dir.path().join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let err = match load_model(&p, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("a truncated GGUF loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cut.gguf"), "{err}");
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fx().join("hf").join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(fx().join("hf/model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let err = match load_model(dir.path(), &Device::Cpu, DType::F32) {
        Ok(_) => panic!("a truncated safetensors loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn config_without_a_needed_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fx().join("hf/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let err = lowrank_models::load_config(dir.path()).unwrap_err().to_string();
    assert!(err.contains("num_hidden_layers") && err.contains("config.json"), "{err}");
}
