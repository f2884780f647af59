//! Every input the fuzzers (`scripts/fuzz.sh`) found to crash a loader, kept as a regression:
//! each must now be refused with an error naming the file, never a panic.
use candle_core::{DType, Device};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fuzz-regressions").join(name)
}

/// `gguf_file`: tensor dimensions whose product overflows (a multiplication overflow in the
/// extent check).
#[test]
fn gguf_with_a_shape_product_overflow_is_refused() {
    let path = fixture("gguf-shape-product-overflow.gguf");
    let err = lowrank_models::gguf::GgufFile::open(&path).err().expect("refused").to_string();
    assert!(err.contains("gguf-shape-product-overflow.gguf") && (err.contains("overflows") || err.contains("more values than memory")), "{err}");
    assert!(lowrank_models::load_model(&path, &Device::Cpu, DType::F32).is_err());
}

/// `tokenizer_json`: malformed JSON inside the decoder made the tokenizers library panic
/// (`expect("Helper")`).
#[test]
fn tokenizer_json_that_panicked_the_tokenizers_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::copy(fixture("tokenizer-decoder-syntax-panic.json"), &path).unwrap();
    let err = lowrank_models::TextTokenizer::from_file(&path, None, &[], None).err().expect("refused").to_string();
    assert!(err.contains("tokenizer.json") && err.contains("invalid JSON"), "{err}");
}

/// `gguf_file`: a tensor with no values made candle read its (empty) data through a misaligned
/// pointer (`slice::from_raw_parts` precondition). Rebuilt small with the Python `gguf` writer.
#[test]
fn gguf_with_a_zero_size_tensor_is_refused() {
    let path = fixture("gguf-zero-size-tensor.gguf");
    let err = lowrank_models::gguf::GgufFile::open(&path).err().expect("refused").to_string();
    assert!(err.contains("blk.0.attn_norm.weight") && err.contains("has no values"), "{err}");
}
