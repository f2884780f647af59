//! Score a system output file against E2E references:
//! `cargo run --release -p lowrank-metrics --example e2e_score -- HYPS REFS [--python] [--meteor-data DIR] [--json]`
use std::time::Instant;

use lowrank_metrics::{
    format_table, read_hypotheses, read_references, score_all, BleuNistMode, MeteorSource,
    ScoreOptions,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: e2e_score HYPS REFS [--python] [--meteor-data DIR] [--no-meteor] [--json]"
        );
        std::process::exit(2);
    }
    let mut opts = ScoreOptions::default();
    let mut json = false;
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--python" => opts.bleu_nist_mode = BleuNistMode::PythonPort,
            "--no-meteor" => opts.meteor = MeteorSource::Disabled,
            "--json" => json = true,
            "--meteor-data" => {
                i += 1;
                opts.meteor = MeteorSource::Dir(args[i].clone().into());
            }
            a => panic!("unknown argument {a}"),
        }
        i += 1;
    }
    if matches!(opts.meteor, MeteorSource::Auto | MeteorSource::Dir(_)) {
        let t = Instant::now();
        let m = match &opts.meteor {
            MeteorSource::Dir(d) => lowrank_metrics::Meteor::load(d),
            _ => lowrank_metrics::Meteor::load_default(),
        };
        match m {
            Ok(m) => {
                opts.meteor = MeteorSource::Loaded(std::sync::Arc::new(m));
                eprintln!("METEOR data loaded in {:.3}s", t.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("METEOR unavailable: {e}"),
        }
    }
    let t0 = Instant::now();
    let hyps = read_hypotheses(&args[0]).unwrap_or_else(|e| panic!("{e}"));
    let refs = read_references(&args[1]).unwrap_or_else(|e| panic!("{e}"));
    let s = score_all(&hyps, &refs, &opts).unwrap_or_else(|e| panic!("{e}"));
    let dt = t0.elapsed();
    if json {
        println!("{}", s.to_json());
    } else {
        print!("{}", format_table(&s));
    }
    eprintln!("scored {} outputs in {:.3}s", hyps.len(), dt.as_secs_f64());
}
