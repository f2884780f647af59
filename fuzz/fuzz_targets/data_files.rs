//! The training data readers: CSV, JSONL and parallel text (plain or gzip), as `data.train`
//! names them. The first byte picks the format; parallel text splits the rest at a 0xFF byte
//! into the source and target files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowrank_train::data::{read_pairs, DataFormat, ReadSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let spec = |format, target| ReadSpec { format, prompt_column: "mr".into(), completion_column: "ref".into(), target_file: target };
    let _ = match pick % 4 {
        0 => read_pairs(&lowrank_fuzz::file("d.csv", rest), &spec(DataFormat::Auto, None)),
        1 => read_pairs(&lowrank_fuzz::file("d.jsonl", rest), &spec(DataFormat::Auto, None)),
        2 => {
            let (src, tgt) = lowrank_fuzz::split_at_byte(rest, 0xFF);
            let t = lowrank_fuzz::file("d.de", tgt);
            read_pairs(&lowrank_fuzz::file("d.en", src), &spec(DataFormat::Parallel, Some(t)))
        }
        _ => read_pairs(&lowrank_fuzz::file("d.csv.gz", rest), &spec(DataFormat::Auto, None)),
    };
});
