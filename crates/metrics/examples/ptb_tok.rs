//! Development helper: tokenize stdin like `PTBTokenizer -preserveLines -lowerCase`.
use std::io::Read;

fn main() {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).unwrap();
    let lines = lowrank_metrics::ptb_tokenize::ptb_tokenize_stream(&s);
    let out: Vec<String> = lines.into_iter().map(|l| l.join(" ")).collect();
    print!("{}", out.join("\n"));
}
