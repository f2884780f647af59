//! The GGUF tokenizer metadata (`tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.pre`, the
//! special ids, the chat template) rebuilt into a byte-level BPE, then used.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowrank_models::TextTokenizer;
use std::path::Path;

type Metadata = (Vec<String>, Vec<String>, Vec<i32>, String, Option<u32>, Option<u32>, Option<u32>, Option<String>, String);

fuzz_target!(|m: Metadata| {
    let (tokens, merges, types, pre, bos, eos, pad, chat, text) = m;
    let Ok(tok) = TextTokenizer::from_bpe_parts(Path::new("fuzz.gguf"), &tokens, &merges, &types, &pre, bos, eos, pad, chat) else { return };
    if let Ok(ids) = tok.encode(&text) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.chat_prompt(&text);
});
