//! Small text helpers replicating Python / Perl / Java string semantics.

/// Python's `str.isspace()` (the characters `str.split()` / `str.strip()` use).
pub fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r' | '\u{1c}'..='\u{1f}' | ' ' | '\u{85}' | '\u{a0}'
            | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}'
            | '\u{205f}' | '\u{3000}'
    )
}

/// Perl's `\s` on a Unicode string (Perl >= 5.18).
pub fn is_perl_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0b}'
            | '\u{0c}'
            | '\r'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `str.split()` (no argument).
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Line boundaries of Python's `str.splitlines()` (used by `codecs` readers).
pub fn is_py_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{0b}'
            | '\u{0c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python's `str.splitlines()` (without keepends): `\r\n` counts as one break and a
/// trailing break does not produce an empty last line.
/// `s` with every character [`py_splitlines`] breaks lines at (`\n`, `\r`, `\x0b`, `\x0c`,
/// `\x1c`–`\x1e`, `\u{85}`, `\u{2028}`, `\u{2029}`) replaced by a space, so that it stays one
/// line of a hypotheses or references file.
pub fn one_line(s: &str) -> String {
    s.chars().map(|c| if is_py_line_break(c) { ' ' } else { c }).collect()
}

pub fn py_splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if is_py_line_break(c) {
            out.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = it.peek() {
                    it.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Java's `String.hashCode()` (over UTF-16 code units, wrapping `i32`).
pub fn java_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    let mut buf = [0u16; 2];
    for c in s.chars() {
        for u in c.encode_utf16(&mut buf).iter() {
            h = h.wrapping_mul(31).wrapping_add(*u as i32);
        }
    }
    h
}

/// Java's `String.trim()`: removes leading/trailing chars `<= ' '`.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// Java's `StringTokenizer` with default delimiters `" \t\n\r\f"`.
pub fn java_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n', '\r', '\u{0c}'])
        .filter(|t| !t.is_empty())
}

/// Apply a "two-character" regex substitution `s/(A)(B)/.../g` the way Perl, Python and
/// Java do it: matches are found left to right and do not overlap (both characters are
/// consumed). `repl` receives the two characters and appends the replacement.
pub fn sub_pairs(
    s: &str,
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    repl: impl Fn(char, char, &mut String),
) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            repl(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_removes_every_line_boundary_splitlines_knows() {
        let s = "a\nb\rc\x0bd\x0ce\x1cf\u{85}g\u{2028}h\u{2029}i\tj";
        let l = one_line(s);
        assert_eq!(py_splitlines(&l).len(), 1, "{l:?}");
        assert_eq!(l, "a b c d e f g h i\tj");
    }

    #[test]
    fn splitlines_like_python() {
        assert_eq!(
            py_splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            vec!["a", "b", "c", "d", "e"]
        );
        assert_eq!(py_splitlines("a\n\nb"), vec!["a", "", "b"]);
        assert_eq!(py_splitlines(""), Vec::<&str>::new());
    }

    #[test]
    fn java_hash_matches_java() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("hello"), 99162322);
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn pair_substitution_consumes_both_chars() {
        let r = sub_pairs(
            "a,b,c",
            |c| !c.is_ascii_digit(),
            |c| c == ',',
            |a, b, o| {
                o.push(a);
                o.push(' ');
                o.push(b);
                o.push(' ');
            },
        );
        assert_eq!(r, "a , b , c");
    }
}
