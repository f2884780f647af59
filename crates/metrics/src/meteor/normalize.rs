//! METEOR's English text normalisation (`-norm`, punctuation kept), followed by
//! lowercasing, as METEOR 1.5 applies it to every hypothesis and reference.

use std::collections::HashMap;

use crate::text::{java_tokens, java_trim};

/// Non-breaking prefix kinds (`nonbreaking/english.prefixes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nbp {
    /// never ends a sentence
    Any,
    /// does not end a sentence when followed by a number
    NumericOnly,
}

/// Parse a non-breaking prefix list.
pub fn parse_nbp(text: &str) -> HashMap<String, Nbp> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut it = java_tokens(line);
        let pre = match it.next() {
            Some(p) => p,
            None => continue,
        };
        if pre.starts_with('#') {
            continue;
        }
        let kind = if it.next() == Some("#NUMERIC_ONLY#") {
            Nbp::NumericOnly
        } else {
            Nbp::Any
        };
        m.insert(pre.to_owned(), kind);
    }
    m
}

/// METEOR's "alpha" class: Latin letters incl. Latin-1/Extended-A, Cyrillic, and a few more.
fn alpha(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '\u{0160}' | '\u{017D}' | '\u{0161}' | '\u{017E}' | '\u{0178}'
        | '\u{00C0}'..='\u{00D6}' | '\u{00D8}'..='\u{00F6}' | '\u{00F8}'..='\u{017E}'
        | '\u{0400}'..='\u{04FF}' | '\u{0500}'..='\u{0527}' | '\u{A640}'..='\u{A66E}'
        | '\u{A67E}'..='\u{A697}' | '\u{1D00}'..='\u{1D7F}')
}

fn alnum(c: char) -> bool {
    c.is_ascii_digit() || alpha(c)
}

fn digit(c: char) -> bool {
    c.is_ascii_digit()
}

/// Java regex `\s`.
fn jspace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r')
}

/// Global, non-overlapping, left-to-right replacement of a three-character pattern
/// `(A)x(B)` (the middle character `x` is fixed).
fn sub3(
    s: &[char],
    mid: char,
    a: impl Fn(char) -> bool,
    b: impl Fn(char) -> bool,
    repl: &str,
) -> Vec<char> {
    // repl uses "$1" for A and "$2" for B
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if i + 2 < s.len() && s[i + 1] == mid && a(s[i]) && b(s[i + 2]) {
            let mut k = 0;
            let r: Vec<char> = repl.chars().collect();
            while k < r.len() {
                if r[k] == '$' && k + 1 < r.len() {
                    out.push(if r[k + 1] == '1' { s[i] } else { s[i + 2] });
                    k += 2;
                } else {
                    out.push(r[k]);
                    k += 1;
                }
            }
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn replace_all(s: &str, from: &str, to: &str) -> String {
    s.replace(from, to)
}

/// `Normalizer.normalizeLine(line, English, keepPunctuation = true)` followed by
/// `toLowerCase()`.
pub fn normalize_en(line: &str, nbp: &HashMap<String, Nbp>) -> String {
    let mut w: Vec<char> = Vec::with_capacity(line.len() + 2);
    w.push(' ');
    w.extend(line.chars());
    w.push(' ');

    // separate "other" characters
    let mut t: Vec<char> = Vec::with_capacity(w.len() * 2);
    for &c in &w {
        if alnum(c)
            || jspace(c)
            || matches!(c, '.' | '\'' | '`' | ',' | '-' | '\u{2018}' | '\u{2019}')
        {
            t.push(c);
        } else {
            t.push(' ');
            t.push(c);
            t.push(' ');
        }
    }

    // multiple dots: "\.([\.]+)" -> " DOTMULTI$1"
    let mut s = String::with_capacity(t.len() + 16);
    let mut i = 0;
    while i < t.len() {
        if t[i] == '.' && i + 1 < t.len() && t[i + 1] == '.' {
            s.push_str(" DOTMULTI");
            i += 1;
            while i < t.len() && t[i] == '.' {
                s.push('.');
                i += 1;
            }
        } else {
            s.push(t[i]);
            i += 1;
        }
    }
    while s.contains("DOTMULTI.") {
        // "DOTMULTI\.([^\.])" -> "DOTDOTMULTI $1"
        let mut out = String::with_capacity(s.len() + 8);
        let mut rest = s.as_str();
        while let Some(pos) = rest.find("DOTMULTI.") {
            let after = &rest[pos + 9..];
            match after.chars().next() {
                Some(c) if c != '.' => {
                    out.push_str(&rest[..pos]);
                    out.push_str("DOTDOTMULTI ");
                    out.push(c);
                    rest = &after[c.len_utf8()..];
                }
                _ => {
                    out.push_str(&rest[..pos + 9]);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        s = replace_all(&out, "DOTMULTI.", "DOTDOTMULTI");
    }

    // commas unless between digits
    let c: Vec<char> = s.chars().collect();
    let c = sub3(&c, ',', |a| !digit(a), |b| !digit(b), "$1 , $2");
    let c = sub3(&c, ',', digit, |b| !digit(b), "$1 , $2");
    let c = sub3(&c, ',', |a| !digit(a), digit, "$1 , $2");

    // quotes
    let mut s = String::with_capacity(c.len() + 8);
    for ch in c {
        match ch {
            '`' | '\u{2018}' | '\u{2019}' => s.push('\''),
            _ => s.push(ch),
        }
    }
    // "([“”]|'')" -> " \" "
    let mut q = String::with_capacity(s.len() + 8);
    let mut it = s.chars().peekable();
    while let Some(ch) = it.next() {
        if ch == '\u{201C}' || ch == '\u{201D}' {
            q.push_str(" \" ");
        } else if ch == '\'' && it.peek() == Some(&'\'') {
            it.next();
            q.push_str(" \" ");
        } else {
            q.push(ch);
        }
    }
    // dashes
    let s = q.replace('\u{2013}', "-").replace("--", "-");
    let c: Vec<char> = s.chars().collect();
    let c = sub3(&c, '-', |a| alnum(a) || a == '.', alnum, "$1 $2");

    // English contractions
    let c = sub3(&c, '\'', |a| !alpha(a), |b| !alpha(b), "$1 ' $2");
    let c = sub3(&c, '\'', |a| !alpha(a) && !digit(a), alpha, "$1 ' $2");
    let c = sub3(&c, '\'', alpha, |b| !alpha(b), "$1 ' $2");
    let c = sub3(&c, '\'', alpha, alpha, "$1 '$2");
    let c = sub3(&c, '\'', digit, |b| b == 's', "$1 '$2");
    let s: String = c.into_iter().collect();

    // non-breaking prefixes
    let words: Vec<&str> = java_tokens(&s).collect();
    let mut sb = String::with_capacity(s.len() + 8);
    for (i, word) in words.iter().enumerate() {
        if word.encode_utf16().count() > 1 && word.ends_with('.') {
            let pre = &word[..word.len() - 1];
            let kind = nbp.get(pre).copied();
            let next = words.get(i + 1);
            if pre.contains('.') && pre.chars().any(alpha) {
                sb.push_str(&word.replace('.', ""));
            } else if kind == Some(Nbp::Any)
                || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                || (kind == Some(Nbp::NumericOnly)
                    && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
            {
                // always non-breaking, or followed by lowercase, or numeric-only before a number
                sb.push_str(word);
            } else {
                sb.push_str(pre);
                sb.push_str(" .");
            }
        } else {
            sb.push_str(word);
        }
        sb.push(' ');
    }
    let mut s = sb;
    while s.contains("DOTDOTMULTI") {
        s = s.replace("DOTDOTMULTI", "DOTMULTI.");
    }
    let s = s.replace("DOTMULTI", ".");

    // collapse blanks, trim
    let mut out = String::with_capacity(s.len());
    let mut in_white = false;
    for ch in s.chars() {
        if matches!(
            ch,
            ' ' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' | '\u{00A0}'
        ) {
            if !in_white {
                out.push(' ');
            }
            in_white = true;
        } else {
            out.push(ch);
            in_white = false;
        }
    }
    java_trim(&out).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbp() -> HashMap<String, Nbp> {
        parse_nbp("Mr\nNo #NUMERIC_ONLY#\ne.g\n")
    }

    #[test]
    fn normalization_examples() {
        let n = nbp();
        assert_eq!(
            normalize_en("it 's near the eagle , is n't it", &n),
            "it ' s near the eagle , is n 't it"
        );
        assert_eq!(normalize_en("# 20-25 a-b-c", &n), "# 20 25 a b-c");
        assert_eq!(normalize_en("Wait... U.S. end.", &n), "wait ... us end .");
        assert_eq!(normalize_en("1,000 a,b", &n), "1,000 a , b");
    }
}
