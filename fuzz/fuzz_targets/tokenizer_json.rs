//! A Hugging Face `tokenizer.json` (with a `tokenizer_config.json` chat template beside it),
//! loaded and used to encode and decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowrank_models::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let (json, rest) = lowrank_fuzz::split_at_byte(data, 0xFF);
    let (config, text) = lowrank_fuzz::split_at_byte(rest, 0xFF);
    let path = lowrank_fuzz::file("tok/tokenizer.json", json);
    lowrank_fuzz::file("tok/tokenizer_config.json", config);
    let Ok(tok) = TextTokenizer::from_file(&path, Some(0), &[1], None) else { return };
    let text = String::from_utf8_lossy(text);
    if let Ok(ids) = tok.encode(&text) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.chat_prompt(&text);
});
