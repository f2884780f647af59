//! Text ⇄ token ids: a Hugging Face `tokenizer.json`, or a byte-level BPE rebuilt from GGUF.
use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use std::str::FromStr;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// A tokenizer with the special ids generation needs.
#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: u32,
    pub chat_template: Option<String>,
    pub source: PathBuf,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer { path: path.to_path_buf(), reason: e.to_string() }
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; special ids come from the model config (passed in) or from the
    /// tokenizer's own special tokens.
    pub fn from_file(path: &Path, bos: Option<u32>, eos: &[u32], pad: Option<u32>) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        // Well-formed JSON first: the tokenizers library panics on some malformed files (found by
        // fuzzing), and a panic there is caught as a last resort.
        serde_json::from_str::<serde_json::Value>(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        let inner = std::panic::catch_unwind(|| Tokenizer::from_str(&text))
            .map_err(|_| tok_err(path, "the tokenizers library could not read this file"))?
            .map_err(|e| tok_err(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template").and_then(|c| c.as_str().map(String::from)));
        let mut eos_ids = eos.to_vec();
        if eos_ids.is_empty() {
            eos_ids.extend(["<|endoftext|>", "</s>", "<|im_end|>"].iter().filter_map(|t| inner.token_to_id(t)));
        }
        let pad_id = pad.or_else(|| eos_ids.first().copied()).unwrap_or(0);
        Ok(Self { inner, bos_id: bos, eos_ids, pad_id, chat_template, source: path.to_path_buf() })
    }

    /// Builds a GPT-2 style byte-level BPE from its vocabulary and merges (GGUF metadata).
    /// `token_types`: 1 normal, 3 control, 4 user-defined (control/user tokens are special).
    #[allow(clippy::too_many_arguments)]
    pub fn from_bpe_parts(
        source: &Path,
        tokens: &[String],
        merges: &[String],
        token_types: &[i32],
        pre: &str,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| tok_err(source, format!("malformed merge `{m}`"))))
            .collect::<Result<_>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tok_err(source, e))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = match pre {
            // SmolLM2 and Llama-3 style: digits split one by one before the byte-level split.
            "smollm" | "llama-bpe" | "llama3" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            _ => byte_level.into(),
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(token_types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(|e| tok_err(source, e))?;
        let eos_ids: Vec<u32> = eos.into_iter().collect();
        let pad_id = pad.or(eos).unwrap_or(0);
        Ok(Self { inner, bos_id: bos, eos_ids, pad_id, chat_template, source: source.to_path_buf() })
    }

    /// Token ids of `text`, without special tokens added (templates carry their own).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(|e| tok_err(&self.source, e))?.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| tok_err(&self.source, e))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Saves as `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(|e| tok_err(path, e))?;
        crate::weights::write_atomic(path, json.as_bytes())
    }

    /// Wraps `user` in the model's chat template when it is ChatML-like (SmolLM2, Qwen2);
    /// otherwise returns it unchanged.
    pub fn chat_prompt(&self, user: &str) -> String {
        match &self.chat_template {
            Some(t) if t.contains("<|im_start|>") => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
            _ => user.to_string(),
        }
    }
}
