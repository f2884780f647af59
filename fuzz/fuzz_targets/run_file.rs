//! A run file (TOML) with `--set` overrides: parsed, validated, written back, hashed.
//! Input: the file, then lines of `section.key=value` overrides after a 0xFF byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowrank_train::RunConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (text, sets) = lowrank_fuzz::split_at_byte(data, 0xFF);
    let Ok(text) = std::str::from_utf8(text) else { return };
    let overrides: Vec<String> = String::from_utf8_lossy(sets).lines().map(String::from).collect();
    if let Ok(cfg) = RunConfig::from_toml_str(text, &overrides, Path::new("run.toml")) {
        let back = cfg.to_toml();
        let _ = cfg.identity_hash();
        // What was accepted and written back reads back to the same settings.
        let again = RunConfig::from_toml_str(&back, &[], Path::new("config.toml")).expect("a written run file reads back");
        assert_eq!(again.identity(), cfg.identity());
    }
});
