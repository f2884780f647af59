//! The mteval-v13a tokenisation used for BLEU and NIST.
//!
//! Two flavours are provided because the official E2E scripts can run either:
//! * [`tokenize_13a_perl`]: `mteval-v13a.pl` (the official numbers): ASCII-only lowercasing
//!   (`tr/[A-Z]/[a-z]/`), Perl's Unicode `\s`, an empty segment has no tokens.
//! * [`tokenize_13a_python`]: `metrics/pymteval.py` (`measure_scores.py -p`): no case change
//!   here (the caller lowercases tokens with full Unicode rules), Python's `\s`, and an empty
//!   segment yields one empty token (Python's `''.split(' ') == ['']`).

use crate::text::{is_perl_space, is_py_space, sub_pairs};

/// The characters mteval splits off as separate tokens:
/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Steps shared by both flavours, up to (not including) whitespace normalisation.
fn tokenize_core(s: &str, ascii_lower: bool) -> String {
    // language-independent part
    let mut t = s.to_owned();
    if t.contains('<') {
        t = t.replace("<skipped>", "");
    }
    if t.contains('\n') {
        t = t.replace("-\n", "");
        t = t.replace('\n', " ");
    }
    if t.contains('&') {
        t = t.replace("&quot;", "\"");
        t = t.replace("&amp;", "&");
        t = t.replace("&lt;", "<");
        t = t.replace("&gt;", ">");
    }
    // language-dependent part (Western languages)
    let mut padded = String::with_capacity(t.len() + 2);
    padded.push(' ');
    padded.push_str(&t);
    padded.push(' ');
    if ascii_lower {
        padded.make_ascii_lowercase();
    }
    let mut spaced = String::with_capacity(padded.len() * 2);
    for c in padded.chars() {
        if is_13a_punct(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    if !spaced.contains(['.', ',', '-']) {
        return spaced;
    }
    // period and comma unless preceded by a digit
    let t = sub_pairs(
        &spaced,
        |a| !a.is_ascii_digit(),
        |b| b == '.' || b == ',',
        |a, b, o| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    );
    // period and comma unless followed by a digit
    let t = sub_pairs(
        &t,
        |a| a == '.' || a == ',',
        |b| !b.is_ascii_digit(),
        |a, b, o| {
            o.push(' ');
            o.push(a);
            o.push(' ');
            o.push(b);
        },
    );
    // dash when preceded by a digit
    sub_pairs(
        &t,
        |a| a.is_ascii_digit(),
        |b| b == '-',
        |a, b, o| {
            o.push(a);
            o.push(' ');
            o.push(b);
            o.push(' ');
        },
    )
}

/// Tokenise like `mteval-v13a.pl` (default, non-international tokenisation, lowercased).
pub fn tokenize_13a_perl(s: &str) -> Vec<String> {
    let t = tokenize_core(s, true);
    t.split(is_perl_space)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Tokenise like `pymteval.NGramScore.tokenize` (no lowercasing).
pub fn tokenize_13a_python(s: &str) -> Vec<String> {
    let t = tokenize_core(s, false);
    // re.sub(r'\s+', ' ', sent).strip().split(' ')
    let toks: Vec<String> = t
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if toks.is_empty() {
        vec![String::new()]
    } else {
        toks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_13a() {
        assert_eq!(
            tokenize_13a_perl("The Eagle's price is £20-25, e.g. 3.5 stars."),
            vec![
                "the", "eagle's", "price", "is", "£20", "-", "25", ",", "e", ".", "g", ".", "3.5",
                "stars", "."
            ]
        );
        assert_eq!(
            tokenize_13a_perl("a&amp;b \"q\" (x)"),
            vec!["a", "&", "b", "\"", "q", "\"", "(", "x", ")"]
        );
        assert!(tokenize_13a_perl("").is_empty());
        assert_eq!(tokenize_13a_python(""), vec![String::new()]);
        assert_eq!(tokenize_13a_python("ÉCOLE x"), vec!["ÉCOLE", "x"]);
        assert_eq!(tokenize_13a_perl("ÉCOLE X"), vec!["École", "x"]);
    }
}
