//! The metrics' readers: references in the e2e-metrics text format or as CSV/TSV, and
//! hypotheses, from files as `score` reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowrank_metrics::refs_io::{read_hypotheses, read_references};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let name = match pick % 3 {
        0 => "refs.txt",
        1 => "refs.csv",
        _ => "refs.tsv",
    };
    let path = lowrank_fuzz::file(name, rest);
    let _ = read_references(&path);
    let _ = read_hypotheses(&path);
});
