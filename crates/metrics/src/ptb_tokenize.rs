//! PTB tokenisation as the MS-COCO caption evaluation code runs it.
//!
//! pycocoevalcap's `PTBTokenizer` pipes all captions (joined by `\n`) through Stanford
//! CoreNLP 3.4.1's `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`, splits
//! the output on `\n`, and drops the tokens of a fixed punctuation list. This module
//! re-implements that behaviour: a longest-match lexer (ties go to the earlier token class,
//! trailing context counts towards the match length, as in JFlex) over token classes that
//! mimic CoreNLP's English tokenizer with its default "PTB3 escaping" options, then the same
//! lowercasing, line handling and punctuation filtering.
//!
//! Known simplifications: Unicode letter/digit classes use Rust's tables (CoreNLP used Java
//! 7's), characters outside the BMP are treated as untokenizable unless they sit inside a
//! URL/e-mail-like token.

use std::sync::OnceLock;

use crate::text::py_split;

/// Tokens pycocoevalcap removes after tokenization (compared after lowercasing, so the
/// bracket tokens never match: CoreNLP's `-LRB-` becomes `-lrb-`, which is kept).
pub const COCO_PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

// ------------------------------------------------------------------------------------------
// character classes
// ------------------------------------------------------------------------------------------

fn bmp(c: char) -> bool {
    (c as u32) <= 0xFFFF
}

/// Approximates Java's `Character.isLetter` (general category L*), BMP only.
fn jletter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    if !bmp(c) || !c.is_alphabetic() {
        return false;
    }
    // Alphabetic but not a letter: letter numbers, circled letters, a combining mark
    !matches!(c,
        '\u{0345}' | '\u{16EE}'..='\u{16F0}' | '\u{2160}'..='\u{2188}' | '\u{24B6}'..='\u{24E9}'
        | '\u{3007}' | '\u{3021}'..='\u{3029}' | '\u{3038}'..='\u{303A}' | '\u{A6E6}'..='\u{A6EF}')
}

/// Approximates Java's `Character.isDigit` (general category Nd), BMP only.
fn jdigit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    if !bmp(c) || !c.is_numeric() {
        return false;
    }
    !matches!(c,
        '\u{00B2}' | '\u{00B3}' | '\u{00B9}' | '\u{00BC}'..='\u{00BE}' | '\u{09F4}'..='\u{09F9}'
        | '\u{0BF0}'..='\u{0BF2}' | '\u{0F2A}'..='\u{0F33}' | '\u{1369}'..='\u{137C}'
        | '\u{16EE}'..='\u{16F0}' | '\u{17F0}'..='\u{17F9}' | '\u{19DA}' | '\u{2070}'..='\u{2079}'
        | '\u{2080}'..='\u{2089}' | '\u{2150}'..='\u{2189}' | '\u{2460}'..='\u{249B}'
        | '\u{24EA}'..='\u{24FF}' | '\u{2776}'..='\u{2793}' | '\u{2CFD}' | '\u{3007}'
        | '\u{3021}'..='\u{3029}' | '\u{3038}'..='\u{303A}' | '\u{3192}'..='\u{3195}'
        | '\u{3220}'..='\u{3229}' | '\u{3248}'..='\u{324F}' | '\u{3251}'..='\u{325F}'
        | '\u{3280}'..='\u{3289}' | '\u{32B1}'..='\u{32BF}' | '\u{A6E6}'..='\u{A6EF}'
        | '\u{A830}'..='\u{A835}')
}

fn jupper(c: char) -> bool {
    bmp(c) && c.is_uppercase()
}

/// Letters of word tokens: letters plus soft hyphen and some marks CoreNLP accepts inside words.
fn word_letter(c: char) -> bool {
    jletter(c)
        || matches!(c,
            '\u{00AD}' | '\u{0237}'..='\u{024F}' | '\u{02C2}'..='\u{02C5}' | '\u{02D2}'..='\u{02DF}'
            | '\u{02E5}'..='\u{02FF}' | '\u{0300}'..='\u{036F}' | '\u{0370}'..='\u{037D}' | '\u{0384}'
            | '\u{0385}' | '\u{03CF}' | '\u{03F6}' | '\u{03FC}'..='\u{03FF}' | '\u{0483}'..='\u{0487}'
            | '\u{04CF}' | '\u{04F6}'..='\u{04FF}' | '\u{0510}'..='\u{0525}' | '\u{055A}'..='\u{055F}'
            | '\u{0591}'..='\u{05BD}' | '\u{05BF}' | '\u{05C1}' | '\u{05C2}' | '\u{05C4}' | '\u{05C5}'
            | '\u{05C7}' | '\u{0615}'..='\u{061A}' | '\u{063B}'..='\u{063F}' | '\u{064B}'..='\u{065E}'
            | '\u{0670}' | '\u{06D6}'..='\u{06EF}' | '\u{06FA}'..='\u{06FF}' | '\u{070F}' | '\u{0711}'
            | '\u{0730}'..='\u{074F}' | '\u{0750}'..='\u{077F}' | '\u{07A6}'..='\u{07B1}'
            | '\u{07CA}'..='\u{07F5}' | '\u{07FA}' | '\u{0900}'..='\u{0903}' | '\u{093C}'
            | '\u{093E}'..='\u{094E}' | '\u{0951}'..='\u{0955}' | '\u{0962}'..='\u{0963}'
            | '\u{0981}'..='\u{0983}' | '\u{09BC}'..='\u{09C4}' | '\u{09C7}' | '\u{09C8}'
            | '\u{09CB}'..='\u{09CD}' | '\u{09D7}' | '\u{09E2}' | '\u{09E3}' | '\u{0A01}'..='\u{0A03}'
            | '\u{0A3C}' | '\u{0A3E}'..='\u{0A4F}' | '\u{0A81}'..='\u{0A83}' | '\u{0ABC}'..='\u{0ACF}'
            | '\u{0B82}' | '\u{0BBE}'..='\u{0BC2}' | '\u{0BC6}'..='\u{0BC8}' | '\u{0BCA}'..='\u{0BCD}'
            | '\u{0C01}'..='\u{0C03}' | '\u{0C3E}'..='\u{0C56}' | '\u{0D3E}'..='\u{0D44}'
            | '\u{0D46}'..='\u{0D48}' | '\u{0E30}'..='\u{0E3A}' | '\u{0E47}'..='\u{0E4E}'
            | '\u{0EB1}'..='\u{0EBC}' | '\u{0EC8}'..='\u{0ECD}')
}

fn word_digit(c: char) -> bool {
    jdigit(c) || matches!(c, '\u{07C0}'..='\u{07C9}')
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{3000}'
    )
}

fn is_newline_char(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{2028}' | '\u{2029}' | '\u{000B}' | '\u{000C}' | '\u{0085}'
    )
}

fn misc_symbol(c: char) -> bool {
    matches!(c,
        '+' | '%' | '&' | '~' | '^' | '|' | '\\' | '\u{00A6}' | '\u{00A7}' | '\u{00A8}' | '\u{00A9}'
        | '\u{00AC}' | '\u{00AE}' | '\u{00AF}' | '\u{00B0}'..='\u{00BA}' | '\u{00D7}' | '\u{00F7}'
        | '\u{0387}' | '\u{05BE}' | '\u{05C0}' | '\u{05C3}' | '\u{05C6}' | '\u{05F3}' | '\u{05F4}'
        | '\u{0600}'..='\u{0603}' | '\u{0606}'..='\u{060A}' | '\u{060C}' | '\u{0614}' | '\u{061B}'
        | '\u{061E}' | '\u{066A}' | '\u{066D}' | '\u{0703}'..='\u{070D}' | '\u{07F6}'..='\u{07F8}'
        | '\u{0964}' | '\u{0965}' | '\u{0E4F}' | '\u{1FBD}' | '\u{2016}' | '\u{2017}'
        | '\u{2020}'..='\u{2023}' | '\u{2030}'..='\u{2038}' | '\u{203B}' | '\u{203E}'..='\u{2042}'
        | '\u{2044}' | '\u{207A}'..='\u{207F}' | '\u{208A}'..='\u{208E}' | '\u{2100}'..='\u{214F}'
        | '\u{2190}'..='\u{21FF}' | '\u{2200}'..='\u{2BFF}' | '\u{3012}' | '\u{30FB}'
        | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' | '\u{FF3B}'..='\u{FF40}'
        | '\u{FF5B}'..='\u{FF65}')
}

// ------------------------------------------------------------------------------------------
// a tiny set-of-end-positions pattern matcher (gives every possible match length)
// ------------------------------------------------------------------------------------------

enum Pat {
    /// one character satisfying a predicate
    Class(Box<dyn Fn(char) -> bool + Send + Sync>),
    /// literal, ASCII-case-insensitive (CoreNLP's lexer is caseless outside classes)
    Lit(Vec<char>),
    /// literal, case-sensitive
    LitCs(Vec<char>),
    Seq(Vec<Pat>),
    Alt(Vec<Pat>),
    Rep(Box<Pat>, usize, usize),
}

fn cls(f: impl Fn(char) -> bool + Send + Sync + 'static) -> Pat {
    Pat::Class(Box::new(f))
}
fn any_of(s: &'static str) -> Pat {
    cls(move |c| s.contains(c))
}
fn none_of(s: &'static str) -> Pat {
    cls(move |c| !s.contains(c))
}
fn lit(s: &str) -> Pat {
    Pat::Lit(s.chars().collect())
}
fn lit_cs(s: &str) -> Pat {
    Pat::LitCs(s.chars().collect())
}
fn lits(ws: &[&str]) -> Pat {
    Pat::Alt(ws.iter().map(|w| lit(w)).collect())
}
fn seq(v: Vec<Pat>) -> Pat {
    Pat::Seq(v)
}
fn alt(v: Vec<Pat>) -> Pat {
    Pat::Alt(v)
}
fn rep(p: Pat, lo: usize, hi: usize) -> Pat {
    Pat::Rep(Box::new(p), lo, hi)
}
fn star(p: Pat) -> Pat {
    rep(p, 0, usize::MAX)
}
fn plus(p: Pat) -> Pat {
    rep(p, 1, usize::MAX)
}
fn opt(p: Pat) -> Pat {
    rep(p, 0, 1)
}

fn caseless_eq(a: char, b: char) -> bool {
    a == b
        || (a.is_ascii() && b.is_ascii() && a.eq_ignore_ascii_case(&b))
        || (!a.is_ascii() && a.to_lowercase().eq(b.to_lowercase()))
}

/// A set of match end positions relative to a base position (0..256).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Bits([u64; 4]);

const BITS_CAP: usize = 256;

impl Bits {
    #[inline]
    fn set(&mut self, i: usize, overflow: &mut bool) {
        if i >= BITS_CAP {
            *overflow = true;
        } else {
            self.0[i >> 6] |= 1u64 << (i & 63);
        }
    }
    #[inline]
    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
    #[inline]
    fn or(&mut self, o: &Bits) {
        for k in 0..4 {
            self.0[k] |= o.0[k];
        }
    }
    /// Clear positions `<= i`.
    fn clear_upto(&mut self, i: usize) {
        for k in 0..4 {
            let lo = k * 64;
            if i >= lo + 63 {
                self.0[k] = 0;
            } else if i >= lo {
                let keep = !((1u64 << (i - lo + 1)) - 1);
                self.0[k] &= keep;
            }
        }
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..4).flat_map(move |k| {
            let mut w = self.0[k];
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(k * 64 + b)
            })
        })
    }
    fn max(&self) -> Option<usize> {
        (0..4)
            .rev()
            .find(|&k| self.0[k] != 0)
            .map(|k| k * 64 + 63 - self.0[k].leading_zeros() as usize)
    }
}

impl Pat {
    /// End positions (relative to `base`) of matches starting at `p`; positions beyond the
    /// bitset capacity set `overflow`.
    fn ends_bits(&self, t: &[char], base: usize, p: usize, overflow: &mut bool) -> Bits {
        let mut out = Bits::default();
        match self {
            Pat::Class(f) => {
                if p < t.len() && f(t[p]) {
                    out.set(p + 1 - base, overflow);
                }
            }
            Pat::Lit(s) | Pat::LitCs(s) => {
                let cs = matches!(self, Pat::LitCs(_));
                if p + s.len() <= t.len()
                    && s.iter()
                        .zip(&t[p..])
                        .all(|(&a, &b)| if cs { a == b } else { caseless_eq(a, b) })
                {
                    out.set(p + s.len() - base, overflow);
                }
            }
            Pat::Seq(v) => {
                let mut cur = Bits::default();
                cur.set(p - base, overflow);
                for x in v {
                    let mut nxt = Bits::default();
                    for q in cur.ones() {
                        nxt.or(&x.ends_bits(t, base, base + q, overflow));
                    }
                    if nxt.is_empty() {
                        return out;
                    }
                    cur = nxt;
                }
                out = cur;
            }
            Pat::Alt(v) => {
                for x in v {
                    out.or(&x.ends_bits(t, base, p, overflow));
                }
            }
            Pat::Rep(x, lo, hi) => {
                if *lo == 0 {
                    out.set(p - base, overflow);
                }
                // fast path: repeated single-character class
                if let Pat::Class(f) = &**x {
                    let mut k = 0;
                    while k < *hi && p + k < t.len() && f(t[p + k]) {
                        k += 1;
                        if k >= *lo {
                            out.set(p + k - base, overflow);
                        }
                        if p + k - base >= BITS_CAP {
                            break;
                        }
                    }
                    return out;
                }
                let mut cur = Bits::default();
                cur.set(p - base, overflow);
                let mut k = 0;
                while k < *hi && !cur.is_empty() {
                    k += 1;
                    let mut nxt = Bits::default();
                    for q in cur.ones() {
                        nxt.or(&x.ends_bits(t, base, base + q, overflow));
                    }
                    nxt.clear_upto(p - base); // no empty iterations
                    if k >= *lo {
                        out.or(&nxt);
                    }
                    if nxt == cur {
                        break;
                    }
                    cur = nxt;
                }
            }
        }
        out
    }

    /// All end positions of matches starting at `p` (unsorted, may contain duplicates).
    fn ends(&self, t: &[char], p: usize, out: &mut Vec<usize>) {
        match self {
            Pat::Class(f) => {
                if p < t.len() && f(t[p]) {
                    out.push(p + 1);
                }
            }
            Pat::Lit(s) | Pat::LitCs(s) => {
                let cs = matches!(self, Pat::LitCs(_));
                if p + s.len() <= t.len()
                    && s.iter()
                        .zip(&t[p..])
                        .all(|(&a, &b)| if cs { a == b } else { caseless_eq(a, b) })
                {
                    out.push(p + s.len());
                }
            }
            Pat::Seq(v) => {
                let mut cur = vec![p];
                for x in v {
                    let mut nxt = Vec::new();
                    for &q in &cur {
                        x.ends(t, q, &mut nxt);
                    }
                    if nxt.is_empty() {
                        return;
                    }
                    nxt.sort_unstable();
                    nxt.dedup();
                    cur = nxt;
                }
                out.extend(cur);
            }
            Pat::Alt(v) => {
                for x in v {
                    x.ends(t, p, out);
                }
            }
            Pat::Rep(x, lo, hi) => {
                if *lo == 0 {
                    out.push(p);
                }
                let mut cur = vec![p];
                let mut k = 0;
                while k < *hi && !cur.is_empty() {
                    k += 1;
                    let mut nxt = Vec::new();
                    for &q in &cur {
                        x.ends(t, q, &mut nxt);
                    }
                    nxt.sort_unstable();
                    nxt.dedup();
                    nxt.retain(|&e| e > p); // no empty iterations
                    if k >= *lo {
                        out.extend_from_slice(&nxt);
                    }
                    cur = nxt;
                }
            }
        }
    }

    fn nullable(&self) -> bool {
        match self {
            Pat::Class(_) => false,
            Pat::Lit(s) | Pat::LitCs(s) => s.is_empty(),
            Pat::Seq(v) => v.iter().all(Pat::nullable),
            Pat::Alt(v) => v.iter().any(Pat::nullable),
            Pat::Rep(x, lo, _) => *lo == 0 || x.nullable(),
        }
    }

    /// Can a match start with character `c`?
    fn can_start(&self, c: char) -> bool {
        match self {
            Pat::Class(f) => f(c),
            Pat::Lit(s) => s.first().is_some_and(|&a| caseless_eq(a, c)),
            Pat::LitCs(s) => s.first() == Some(&c),
            Pat::Seq(v) => {
                for x in v {
                    if x.can_start(c) {
                        return true;
                    }
                    if !x.nullable() {
                        return false;
                    }
                }
                false
            }
            Pat::Alt(v) => v.iter().any(|x| x.can_start(c)),
            Pat::Rep(x, _, _) => x.can_start(c),
        }
    }
}

// ------------------------------------------------------------------------------------------
// token classes
// ------------------------------------------------------------------------------------------

fn letter() -> Pat {
    // a letter, or an SGML entity for an accented vowel (e.g. "&eacute;" style "&aacute;")
    alt(vec![
        cls(word_letter),
        seq(vec![
            lit("&"),
            any_of("aeiouAEIOU"),
            lits(&["acute", "grave", "uml"]),
            lit(";"),
        ]),
    ])
}
fn letter_or_digit() -> Pat {
    alt(vec![letter(), cls(word_digit)])
}
fn word() -> Pat {
    seq(vec![
        letter(),
        star(letter_or_digit()),
        star(seq(vec![any_of(".!?"), letter(), star(letter_or_digit())])),
    ])
}
fn apos() -> Pat {
    alt(vec![any_of("'\u{0092}\u{2019}"), lit("&apos;")])
}
fn apos_etc() -> Pat {
    alt(vec![apos(), any_of("`\u{0091}\u{2018}\u{201B}")])
}
fn hyphen() -> Pat {
    any_of("-_\u{058A}\u{2010}\u{2011}")
}
fn redaux() -> Pat {
    seq(vec![
        apos(),
        alt(vec![any_of("msdMSD"), lits(&["re", "ve", "ll"])]),
    ])
}
fn sword() -> Pat {
    seq(vec![
        star(cls(|c| c.is_ascii_alphabetic() || c == '\u{00AD}')),
        cls(|c| c.is_ascii_alphabetic() && c != 'n' && c != 'N'),
        star(lit_cs("\u{00AD}")),
    ])
}
fn sredaux() -> Pat {
    seq(vec![lit("n"), apos_etc(), lit("t")])
}
fn jlod() -> Pat {
    cls(|c| jletter(c) || jdigit(c))
}
fn apoword() -> Pat {
    let jl = || cls(jletter);
    alt(vec![
        seq(vec![apos(), lit("n"), opt(apos())]),
        seq(vec![any_of("lLdDjJ"), apos()]),
        seq(vec![lits(&["dunkin", "somethin", "ol"]), apos()]),
        seq(vec![apos(), lit("em")]),
        seq(vec![
            cls(|c| matches!(c, 'A'..='H' | 'J'..='X' | 'Z' | 'n')),
            apos_etc(),
            jl(),
            jl(),
            star(jl()),
        ]),
        seq(vec![apos(), cls(|c| ('2'..='9').contains(&c)), lit("0s")]),
        seq(vec![apos(), lit("til"), opt(lit("l"))]),
        seq(vec![
            jl(),
            star(jl()),
            any_of("aeiouyAEIOUY"),
            apos_etc(),
            cls(|c| "aeiou".contains(c) || c.is_ascii_uppercase()),
            star(jl()),
        ]),
        seq(vec![apos(), lit("cause")]),
        seq(vec![lit("cont'd"), opt(lit("."))]),
        lits(&[
            "'twas",
            "nor'easter",
            "c'mon",
            "e'er",
            "s'mores",
            "ev'ry",
            "li'l",
            "nat'l",
        ]),
        seq(vec![lit("o"), apos_etc(), lit("o")]),
    ])
}
fn num() -> Pat {
    let d = || cls(word_digit);
    alt(vec![
        plus(d()),
        seq(vec![
            star(d()),
            plus(seq(vec![any_of(".:,\u{00AD}\u{066B}\u{066C}"), plus(d())])),
        ]),
    ])
}
fn number() -> Pat {
    seq(vec![opt(any_of("-+")), num()])
}
fn acro(min_rep: usize) -> Pat {
    alt(vec![
        seq(vec![
            cls(|c| c.is_ascii_alphabetic()),
            rep(
                seq(vec![lit("."), cls(|c| c.is_ascii_alphabetic())]),
                min_rep,
                usize::MAX,
            ),
        ]),
        seq(vec![
            lits(&["canada", "sino", "korean", "eu", "japan", "non"]),
            lit("-U.S"),
        ]),
        seq(vec![lit("U.S.-"), lits(&["U.K", "U.S.S.R"])]),
    ])
}
/// A literal whose first letter is case-sensitive (upper case) and the rest caseless.
fn cap(s: &str) -> Pat {
    let mut it = s.chars();
    let first = it.next().unwrap();
    seq(vec![lit_cs(&first.to_string()), lit(it.as_str())])
}
fn abbrev4() -> Pat {
    let titles = alt(vec![
        lits(&[
            "mr", "mrs", "ms", "lt", "col", "gen", "messrs", "adm", "rev", "maj", "sgt", "cpl",
            "pvt", "capt", "ave", "pres", "lieut", "hon", "brig", "pfc", "spc", "det", "mt", "ft",
            "adj", "adv", "asst", "assoc", "ens", "insp", "mlle", "mme", "msgr", "sfc",
        ]),
        cap("Miss"),
        seq(vec![
            lits(&["dr", "prof", "sen", "rep", "atty", "gov", "supt"]),
            opt(lit("s")),
        ]),
        seq(vec![lit("st"), opt(lit("e"))]),
        seq(vec![lit("c"), opt(lit("o")), lit("mdr")]),
    ]);
    alt(vec![
        titles,
        lits(&[
            "vs", "alex", "wm", "jos", "cie", "a.k.a", "cf", "treas", "ph",
        ]),
        acro(0),
        lits(&["invt", "elec", "natl", "dept"]),
        seq(vec![lit("m"), any_of("ft"), lit("g")]),
    ])
}
fn abbrev1() -> Pat {
    let words = alt(vec![
        lits(&[
            "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        ]),
        lits(&["mon", "tue", "tues", "wed", "thu", "thurs", "fri"]),
        lits(&[
            "ala", "ariz", "calif", "colo", "conn", "ct", "dak", "fla", "ga", "ind", "ky", "md",
            "mich", "minn", "mo", "mont", "neb", "nev", "okla", "penn", "tenn", "va", "vt", "wyo",
        ]),
        cap("Az"),
        cap("Ark"),
        cap("Del"),
        cap("Ill"),
        cap("La"),
        cap("Mass"),
        cap("Miss"),
        cap("Ore"),
        cap("Pa"),
        cap("Tex"),
        cap("Wash"),
        seq(vec![lit("kan"), opt(lit("s"))]),
        seq(vec![lit("wis"), opt(lit("c"))]),
        lits(&[
            "inc", "corp", "ltd", "plc", "rt", "bancorp", "bhd", "assn", "univ", "intl", "sys",
        ]),
        seq(vec![lit("co"), opt(lit("s"))]),
        seq(vec![
            lit("p"),
            opt(lit("p")),
            lit("t"),
            any_of("ye"),
            opt(lit("s")),
        ]),
        lits(&["tel", "est", "ext", "sq"]),
        lits(&["jr", "sr", "bros", "ed.d", "ph.d", "blvd", "rd", "esq"]),
        lits(&["etc", "al", "seq", "bldg"]),
    ]);
    seq(vec![words, lit(".")])
}
fn abbrev3() -> Pat {
    seq(vec![
        alt(vec![
            lit("ca"),
            seq(vec![lit("fig"), opt(lit("s"))]),
            lit("prop"),
            seq(vec![lit("no"), opt(lit("s"))]),
            lit("art"),
            lit("bldg"),
            lit("pp"),
            lit("op"),
        ]),
        lit("."),
    ])
}
fn spacenl() -> Pat {
    alt(vec![cls(is_space), lit("\r\n"), cls(is_newline_char)])
}
fn sgml() -> Pat {
    let name_char = || cls(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
    let name = || seq(vec![cls(|c| c.is_ascii_alphabetic()), star(name_char())]);
    let sp = || lit(" ");
    let attr = alt(vec![
        name(),
        seq(vec![
            name(),
            star(sp()),
            lit("="),
            star(sp()),
            alt(vec![
                seq(vec![lit("'"), star(none_of("'")), lit("'")]),
                seq(vec![lit("\""), star(none_of("\"")), lit("\"")]),
            ]),
        ]),
    ]);
    seq(vec![
        lit("<"),
        alt(vec![
            seq(vec![
                any_of("!?"),
                cls(|c| c.is_ascii_alphabetic() || c == '-'),
                star(none_of(">\r\n")),
            ]),
            seq(vec![
                name(),
                star(seq(vec![plus(sp()), attr])),
                star(sp()),
                opt(lit("/")),
            ]),
            seq(vec![lit("/"), name()]),
        ]),
        star(sp()),
        lit(">"),
    ])
}
fn thing() -> Pat {
    let pre = || opt(seq(vec![any_of("dDoOlL"), apos_etc(), jlod()]));
    seq(vec![
        pre(),
        plus(jlod()),
        star(seq(vec![hyphen(), pre(), plus(jlod())])),
    ])
}
fn thinga() -> Pat {
    let up = || plus(cls(|c| c.is_ascii_uppercase()));
    seq(vec![
        up(),
        plus(seq(vec![alt(vec![any_of("+&"), lit("&amp;")]), up()])),
    ])
}
fn hthing() -> Pat {
    seq(vec![
        cls(|c| c.is_ascii_alphanumeric()),
        star(cls(|c| {
            c.is_ascii_alphanumeric() || c == '.' || c == ',' || c == '\u{00AD}'
        })),
        plus(seq(vec![
            lit("-"),
            alt(vec![
                plus(cls(|c| c.is_ascii_alphanumeric() || c == '\u{00AD}')),
                seq(vec![acro(1), lit(".")]),
            ]),
        ])),
    ])
}
fn thing3() -> Pat {
    let an = || plus(cls(|c| c.is_ascii_alphanumeric()));
    let suffix = || {
        rep(
            seq(vec![lit("-"), plus(cls(|c| c.is_ascii_alphabetic()))]),
            0,
            2,
        )
    };
    seq(vec![
        an(),
        suffix(),
        rep(seq(vec![opt(lit("\\")), lit("/"), an(), suffix()]), 1, 2),
    ])
}
fn phone() -> Pat {
    let d = |lo, hi| rep(cls(|c| c.is_ascii_digit()), lo, hi);
    let sep = || any_of("- \u{00A0}");
    let plusses = || opt(seq(vec![lit("+"), opt(lit("+"))]));
    alt(vec![
        seq(vec![
            alt(vec![
                seq(vec![lit("("), d(2, 3), lit(")"), opt(any_of(" \u{00A0}"))]),
                seq(vec![
                    plusses(),
                    opt(seq(vec![d(2, 4), sep()])),
                    d(2, 4),
                    sep(),
                ]),
            ]),
            d(3, 4),
            opt(sep()),
            d(3, 5),
        ]),
        seq(vec![
            opt(seq(vec![plusses(), d(2, 4), lit(".")])),
            d(2, 4),
            lit("."),
            d(3, 4),
            lit("."),
            d(3, 5),
        ]),
    ])
}
fn filename() -> Pat {
    seq(vec![
        plus(letter_or_digit()),
        star(seq(vec![lit("."), plus(letter_or_digit())])),
        lit("."),
        lits(&[
            "bat", "bmp", "c", "class", "cgi", "cpp", "dll", "doc", "docx", "exe", "gif", "gz",
            "h", "htm", "html", "jar", "java", "jpeg", "jpg", "mov", "mp3", "pdf", "php", "pl",
            "png", "ppt", "ps", "py", "sql", "tar", "txt", "wav", "x", "xml", "zip",
        ]),
    ])
}
fn full_url() -> Pat {
    seq(vec![
        lit("http"),
        opt(lit("s")),
        lit("://"),
        plus(none_of(" \t\n\u{0C}\r\"<>|(){}")),
        none_of(" \t\n\u{0C}\r\"<>|.!?(){},-"),
    ])
}
fn likely_url() -> Pat {
    let www = seq(vec![
        lit("www."),
        plus(seq(vec![
            plus(none_of(" \t\n\u{0C}\r\"<>|.!?(){},")),
            lit("."),
        ])),
        rep(cls(|c| c.is_ascii_alphabetic()), 2, 4),
    ]);
    // note the class range ",-_" (',' .. '_') of the original expression
    let dom_char =
        || cls(|c| !(" \t\n\u{0C}\r\"`'<>|.!?(){}$".contains(c) || (','..='_').contains(&c)));
    let tld = seq(vec![
        plus(seq(vec![plus(dom_char()), lit(".")])),
        lits(&["com", "net", "org", "edu"]),
    ]);
    seq(vec![
        alt(vec![www, tld]),
        opt(seq(vec![
            lit("/"),
            plus(none_of(" \t\n\u{0C}\r\"<>|()")),
            none_of(" \t\n\u{0C}\r\"<>|.!?(){},-"),
        ])),
    ])
}
fn email() -> Pat {
    let part = || plus(none_of(" \t\n\u{0C}\r\"<>|(){}.\u{00A0}"));
    seq(vec![
        opt(alt(vec![lit("&lt;"), lit("<")])),
        cls(|c| c.is_ascii_alphanumeric()),
        star(none_of(" \t\n\u{0C}\r\"<>|()\u{00A0}{}")),
        lit("@"),
        star(seq(vec![part(), lit(".")])),
        part(),
        opt(alt(vec![lit("&gt;"), lit(">")])),
    ])
}
fn quotes() -> Pat {
    alt(vec![
        apos(),
        lit("''"),
        rep(any_of("`\u{2018}\u{2019}\u{201A}\u{201B}\u{201C}\u{201D}\u{0091}\u{0092}\u{0093}\u{0094}\u{201E}\u{201F}\u{2039}\u{203A}\u{00AB}\u{00BB}"), 1, 2),
    ])
}
fn smiley() -> Pat {
    seq(vec![
        opt(any_of("<>")),
        any_of(":;="),
        opt(any_of("-o*'")),
        any_of("()DPdpO\\{@|[]"),
    ])
}
fn asian_smiley() -> Pat {
    let a = || any_of("^x=~<>");
    let b = || any_of("-^x=~<>'");
    alt(vec![
        seq(vec![a(), lit("."), lit_cs("[^x=~<>]")]),
        seq(vec![b(), lit("_"), b()]),
        seq(vec![lit("("), b(), opt(any_of("_.")), b(), lit(")")]),
        seq(vec![
            lit("("),
            any_of("^x=~<>'"),
            lit("-"),
            any_of("^x=~<>'`"),
            lit(")"),
        ]),
    ])
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Act {
    /// emit the matched text
    Plain,
    /// emit the matched text without soft hyphens
    NoSoftHyphen,
    /// emit the first `len - k` characters, re-scan the rest
    KeepFirst(usize),
    /// emit and re-scan the final period (CoreNLP duplicates it as a sentence end)
    DupPeriod,
    /// quote normalisation (`true`: probably an opening quote)
    Quote(bool),
    Amp,
    MDash,
    Currency,
    Frac2,
    SpaceToNbsp,
    Phone,
    Smiley,
    Fixed(&'static str),
    Hyphens,
    Ellipsis,
    Acronym,
    TrimTrailingSpace,
    Newline,
    Skip,
    Delete,
}

struct Rule {
    main: Pat,
    trail: Option<Pat>,
    act: Act,
    /// can the rule start with this ASCII character (precomputed `main.can_start`)
    ascii_start: [bool; 128],
}

impl Rule {
    fn can_start(&self, c: char) -> bool {
        if (c as u32) < 128 {
            self.ascii_start[c as usize]
        } else {
            self.main.can_start(c)
        }
    }
}

fn rule(main: Pat, act: Act) -> Rule {
    Rule {
        main,
        trail: None,
        act,
        ascii_start: [false; 128],
    }
}
fn rule_t(main: Pat, trail: Pat, act: Act) -> Rule {
    Rule {
        main,
        trail: Some(trail),
        act,
        ascii_start: [false; 128],
    }
}

fn rules() -> &'static Vec<Rule> {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut v = build_rules();
        for r in v.iter_mut() {
            for c in 0..128u8 {
                r.ascii_start[c as usize] = r.main.can_start(c as char);
            }
        }
        v
    })
}

fn build_rules() -> Vec<Rule> {
    use Act::*;
    let insentp = || any_of(",;:\u{3001}");
    let dblquot = || alt(vec![lit("\""), lit("&quot;")]);
    let acronym_follow = alt(vec![
        cap("About"),
        cap("According"),
        cap("Additionally"),
        cap("After"),
        cap("An"),
        cap("A"),
        cap("As"),
        cap("At"),
        cap("But"),
        cap("Earlier"),
        cap("He"),
        cap("Her"),
        cap("Here"),
        cap("However"),
        cap("If"),
        cap("In"),
        cap("It"),
        cap("Last"),
        cap("Many"),
        cap("More"),
        cap("Mr."),
        cap("Ms."),
        cap("Now"),
        cap("Once"),
        cap("One"),
        cap("Other"),
        cap("Our"),
        cap("She"),
        cap("Since"),
        cap("So"),
        cap("Some"),
        cap("Such"),
        cap("That"),
        cap("The"),
        cap("Their"),
        cap("Then"),
        cap("There"),
        cap("These"),
        cap("They"),
        cap("This"),
        cap("We"),
        cap("When"),
        cap("While"),
        cap("What"),
        cap("Yet"),
        cap("You"),
        sgml(),
    ]);
    vec![
        rule(seq(vec![lit("c"), lit_cs("++")]), Plain),
        rule(seq(vec![any_of("cCfF"), lit("#")]), Plain),
        rule(lit("cannot"), KeepFirst(3)),
        rule(lit("'twas"), KeepFirst(3)),
        rule(lit("'tis"), KeepFirst(2)),
        rule(lits(&["gonna", "gotta", "lemme", "gimme", "wanna"]), KeepFirst(2)),
        rule(sgml(), SpaceToNbsp),
        rule(alt(vec![lits(&["&md;", "&mdash;", "&ndash;"]), any_of("\u{0096}\u{0097}\u{2013}\u{2014}\u{2015}")]), MDash),
        rule(lit("&amp;"), Amp),
        rule(seq(vec![lit("&"), alt(vec![lits(&["ht", "tl", "ur", "lr", "qc", "ql", "qr", "odq", "cdq"]),
            seq(vec![lit("#"), plus(cls(|c| c.is_ascii_digit()))])]), lit(";")]), Plain),
        rule_t(word(), redaux(), NoSoftHyphen),
        rule_t(sword(), sredaux(), NoSoftHyphen),
        rule(word(), NoSoftHyphen),
        rule(apoword(), Plain),
        rule_t(seq(vec![lit("y"), apos()]), cls(jletter), Plain),
        rule(full_url(), Plain),
        rule(likely_url(), Plain),
        rule(email(), Plain),
        rule(alt(vec![seq(vec![lit("@"), cls(|c| c.is_ascii_alphabetic() || c == '_'), star(cls(|c| c.is_ascii_alphanumeric() || c == '_'))]),
            seq(vec![lit("#"), plus(letter())])]), Plain),
        rule_t(redaux(), cls(|c| !c.is_ascii_alphabetic()), Quote(false)),
        rule_t(sredaux(), cls(|c| !c.is_ascii_alphabetic()), Quote(false)),
        rule(seq(vec![rep(cls(word_digit), 1, 2), any_of("-/"), rep(cls(word_digit), 1, 2), any_of("-/"), rep(cls(word_digit), 2, 4)]), Plain),
        rule(number(), NoSoftHyphen),
        rule(seq(vec![opt(any_of("\u{207A}\u{207B}\u{208A}\u{208B}")), alt(vec![plus(any_of("\u{2070}\u{00B9}\u{00B2}\u{00B3}\u{2074}\u{2075}\u{2076}\u{2077}\u{2078}\u{2079}")),
            plus(cls(|c| ('\u{2080}'..='\u{2089}').contains(&c)))])]), Plain),
        rule(seq(vec![opt(seq(vec![rep(cls(word_digit), 1, 4), any_of("- \u{00A0}")])), rep(cls(word_digit), 1, 4),
            alt(vec![seq(vec![opt(lit("\\")), lit("/")]), lit("\u{2044}")]), rep(cls(word_digit), 1, 4)]), SpaceToNbsp),
        rule(cls(|c| matches!(c, '\u{00BC}' | '\u{00BD}' | '\u{00BE}' | '\u{2153}'..='\u{215E}')), Frac2),
        rule(alt(vec![
            seq(vec![lit("-"), lits(&["rrb", "lrb", "rcb", "lcb", "rsb", "lsb"]), lit("-")]),
            lit("c.d.s"), lit("pro-"), lit("anti-"),
            seq(vec![lit("s"), alt(vec![lit("&"), lit("&amp;")]), alt(vec![lit("p-500"), lit("ls")])]),
            seq(vec![lit("cap"), apos(), lit("n")]),
            seq(vec![lit("c"), apos(), lit("est")]),
        ]), Amp),
        rule(thing3(), Plain),
        rule(alt(vec![seq(vec![star(cls(|c| c.is_ascii_uppercase())), lit("$")]), lit("#")]), Plain),
        rule(any_of("\u{00A2}\u{00A3}\u{00A4}\u{00A5}\u{0080}\u{20A0}\u{20AC}\u{060B}\u{0E3F}\u{20A4}\u{FFE0}\u{FFE1}\u{FFE5}\u{FFE6}"), Currency),
        rule_t(seq(vec![acro(0), lit(".")]), seq(vec![plus(spacenl()), acronym_follow, spacenl()]), Acronym),
        rule_t(abbrev3(), seq(vec![opt(spacenl()), cls(jdigit)]), TrimTrailingSpace),
        rule_t(seq(vec![alt(vec![seq(vec![lit("pt"), any_of("eyEY")]), lit("co")]), lit(".")]),
            seq(vec![cls(is_space), lits(&["ltd", "lim"])]), Plain),
        rule_t(abbrev1(), seq(vec![spacenl(), alt(vec![spacenl(), cls(jupper), sgml()])]), DupPeriod),
        rule_t(abbrev1(), seq(vec![cls(|_| true), cls(|_| true)]), Plain),
        rule(abbrev1(), DupPeriod),
        rule(seq(vec![abbrev4(), lit(".")]), Plain),
        rule_t(abbrev4(), cls(is_space), Plain),
        rule_t(acro(0), spacenl(), Plain),
        rule_t(seq(vec![apos(), cls(|c| c.is_ascii_digit()), cls(|c| c.is_ascii_digit())]), spacenl(), Plain),
        rule_t(filename(), alt(vec![spacenl(), any_of(".?!,")]), Plain),
        rule_t(seq(vec![word(), lit(".")]), insentp(), NoSoftHyphen),
        rule(phone(), Phone),
        rule_t(dblquot(), cls(|c| c.is_ascii_alphanumeric() || c == '$'), Quote(true)),
        rule(dblquot(), Quote(false)),
        rule(lit("\u{7f}"), Skip),
        rule(alt(vec![lit("<"), lit("&lt;")]), Fixed("<")),
        rule(alt(vec![lit(">"), lit("&gt;")]), Fixed(">")),
        rule_t(smiley(), cls(|c| !c.is_ascii_alphanumeric()), Smiley),
        rule(asian_smiley(), Smiley),
        rule(lit("{"), Fixed("-LCB-")),
        rule(lit("}"), Fixed("-RCB-")),
        rule(lit("["), Fixed("-LSB-")),
        rule(lit("]"), Fixed("-RSB-")),
        rule(lit("("), Fixed("-LRB-")),
        rule(lit(")"), Fixed("-RRB-")),
        rule(plus(lit("-")), Hyphens),
        rule(alt(vec![rep(lit("."), 3, 5), seq(vec![rep(seq(vec![lit("."), any_of(" \u{00A0}")]), 2, 4), lit(".")]),
            any_of("\u{0085}\u{2026}")]), Ellipsis),
        rule(alt(vec![plus(lit("@")), plus(lit("#")), plus(lit("_"))]), Plain),
        rule(alt(vec![plus(lit("*")), rep(lit("\\*"), 1, 3)]), Plain),
        rule(insentp(), Plain),
        rule(plus(any_of("?!")), Plain),
        rule(any_of(".\u{00A1}\u{00BF}\u{037E}\u{0589}\u{061F}\u{06D4}\u{0700}\u{0701}\u{0702}\u{07FA}\u{3002}"), Plain),
        rule(lit("="), Plain),
        rule(lit("/"), Plain),
        rule_t(seq(vec![hthing(), lit(".")]), insentp(), NoSoftHyphen),
        rule(hthing(), NoSoftHyphen),
        rule_t(seq(vec![thing(), lit(".")]), insentp(), Plain),
        rule(thing(), Plain),
        rule_t(seq(vec![thinga(), lit(".")]), insentp(), Amp),
        rule(thinga(), Amp),
        rule_t(lit_cs("'"), seq(vec![cls(|c| c.is_ascii_alphabetic()), none_of(" \t\n\r\u{00A0}")]), Quote(true)),
        rule(redaux(), Quote(false)),
        rule(sredaux(), Quote(false)),
        rule(quotes(), Quote(false)),
        rule(alt(vec![lit("<<"), lit(">>")]), Plain),
        rule(cls(misc_symbol), Plain),
        rule(alt(vec![lit("\u{0}"), plus(cls(is_space)), any_of("\u{200B}\u{200E}\u{200F}\u{FEFF}")]), Skip),
        rule(alt(vec![lit("\r\n"), cls(is_newline_char)]), Newline),
        rule(lit("&nbsp;"), Skip),
        rule(cls(|c| c != '\n'), Delete),
    ]
}

// ------------------------------------------------------------------------------------------
// token text normalisation
// ------------------------------------------------------------------------------------------

fn remove_soft_hyphens(s: &str) -> String {
    if !s.contains('\u{00AD}') {
        return s.to_owned();
    }
    let out: String = s.chars().filter(|&c| c != '\u{00AD}').collect();
    if out.is_empty() {
        "-".to_owned()
    } else {
        out
    }
}

fn latex_quotes(s: &str, probably_left: bool) -> String {
    let mut t = if probably_left {
        s.replace("&apos;", "`")
            .replace('\'', "`")
            .replace("&quot;", "``")
            .replace('"', "``")
    } else {
        s.replace("&apos;", "'")
            .replace("&quot;", "''")
            .replace('"', "''")
    };
    t = t
        .chars()
        .map(|c| match c {
            '\u{0091}' | '\u{2018}' | '\u{201B}' | '\u{2039}' => "`".to_owned(),
            '\u{0092}' | '\u{2019}' | '\u{203A}' => "'".to_owned(),
            '\u{0093}' | '\u{201C}' | '\u{00AB}' => "``".to_owned(),
            '\u{0094}' | '\u{201D}' | '\u{00BB}' => "''".to_owned(),
            c => c.to_string(),
        })
        .collect();
    t
}

fn normalize_amp(s: &str) -> String {
    // (?i:&amp;) -> &
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("&amp;") {
        out.push_str(&rest[..i]);
        out.push('&');
        rest = &rest[i + 5..];
    }
    out.push_str(rest);
    out
}

fn paren_escape(s: &str) -> String {
    s.replace('(', "-LRB-").replace(')', "-RRB-")
}

// ------------------------------------------------------------------------------------------
// the lexer
// ------------------------------------------------------------------------------------------

/// Longest match of one rule at `p`: (total length incl. trailing context, text length).
fn match_rule(r: &Rule, t: &[char], p: usize) -> Option<(usize, usize)> {
    let mut overflow = false;
    let main = r.main.ends_bits(t, p, p, &mut overflow);
    let mut rb: Option<(usize, usize)> = None;
    fn consider(rb: &mut Option<(usize, usize)>, total: usize, len: usize) {
        let better = match *rb {
            None => true,
            Some((bt, bl)) => total > bt || (total == bt && len > bl),
        };
        if better {
            *rb = Some((total, len));
        }
    }
    if !overflow {
        for len in main.ones() {
            if len == 0 {
                continue;
            }
            match &r.trail {
                None => consider(&mut rb, len, len),
                Some(tr) => {
                    let mut of2 = false;
                    let te = tr.ends_bits(t, p + len, p + len, &mut of2);
                    if of2 {
                        overflow = true;
                        break;
                    }
                    if let Some(m) = te.max() {
                        if m > 0 {
                            consider(&mut rb, len + m, len);
                        }
                    }
                }
            }
        }
        if !overflow {
            return rb;
        }
    }
    // very long candidate: exact but slower evaluation
    rb = None;
    let mut ends = Vec::new();
    r.main.ends(t, p, &mut ends);
    for &e in ends.iter() {
        if e == p {
            continue;
        }
        match &r.trail {
            None => consider(&mut rb, e - p, e - p),
            Some(tr) => {
                let mut tends = Vec::new();
                tr.ends(t, e, &mut tends);
                if let Some(&f) = tends.iter().filter(|&&f| f > e).max() {
                    consider(&mut rb, f - p, e - p);
                }
            }
        }
    }
    rb
}

const SPLIT_WORDS: [&str; 6] = ["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"];

/// Lowercased letter runs that some abbreviation-like token class may extend with a
/// following period (the fast path leaves those to the general matcher).
const ABBREV_WORDS: &[&str] = &[
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon",
    "tue", "tues", "wed", "thu", "thurs", "fri", "ala", "ariz", "az", "ark", "calif", "colo",
    "conn", "ct", "dak", "del", "fla", "ga", "ill", "ind", "kan", "kans", "ky", "la", "mass", "md",
    "mich", "minn", "miss", "mo", "mont", "neb", "nev", "okla", "ore", "pa", "penn", "tenn", "tex",
    "va", "vt", "wash", "wis", "wisc", "wyo", "inc", "co", "cos", "corp", "pte", "pty", "ptes",
    "ptys", "ppte", "ppty", "pptes", "pptys", "pt", "ltd", "plc", "rt", "bancorp", "bhd", "assn",
    "univ", "intl", "sys", "tel", "est", "ext", "sq", "jr", "sr", "bros", "ed", "ph", "blvd", "rd",
    "esq", "etc", "al", "seq", "bldg", "mr", "mrs", "ms", "dr", "drs", "prof", "profs", "sen",
    "sens", "rep", "reps", "atty", "attys", "lt", "col", "gen", "messrs", "gov", "govs", "adm",
    "rev", "maj", "sgt", "cpl", "pvt", "capt", "st", "ste", "ave", "pres", "lieut", "hon", "brig",
    "cmdr", "comdr", "pfc", "spc", "supt", "supts", "det", "mt", "ft", "adj", "adv", "asst",
    "assoc", "ens", "insp", "mlle", "mme", "msgr", "sfc", "vs", "alex", "wm", "jos", "cie", "cf",
    "treas", "invt", "elec", "natl", "mfg", "mtg", "dept", "ca", "fig", "figs", "prop", "no",
    "nos", "art", "pp", "op", "www",
];

/// Tokenize a text with CoreNLP's `PTBTokenizer -preserveLines -lowerCase` behaviour.
/// Returns the output lines (tokens, lowercased), one per line of the output stream.
pub fn ptb_tokenize_stream(text: &str) -> Vec<Vec<String>> {
    let t: Vec<char> = text.chars().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads > 1 && t.len() > 50_000 {
        // lex chunks split at '\n' in parallel; a chunk must end exactly at its boundary
        // (no token spans it), otherwise fall back to one sequential pass
        let mut bounds = vec![0usize];
        for k in 1..threads {
            let mut b = t.len() * k / threads;
            while b < t.len() && t[b] != '\n' {
                b += 1;
            }
            if b < t.len() && b > *bounds.last().unwrap() {
                bounds.push(b);
            }
        }
        bounds.push(t.len());
        let parts: Vec<Option<Vec<Vec<String>>>> = std::thread::scope(|sc| {
            let hs: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let (a, b) = (w[0], w[1]);
                    let t = &t;
                    sc.spawn(move || lex_range(t, a, b))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("tokenizer thread panicked"))
                .collect()
        });
        if parts.iter().all(Option::is_some) {
            let mut lines: Vec<Vec<String>> = Vec::new();
            for part in parts.into_iter().flatten() {
                let mut it = part.into_iter();
                match lines.last_mut() {
                    // the chunk continues the current output line
                    Some(last) => last.extend(it.next().unwrap_or_default()),
                    None => lines.extend(it.next()),
                }
                lines.extend(it);
            }
            return lines;
        }
    }
    lex_range(&t, 0, t.len()).expect("full range")
}

/// Lex `t[from..to]` (looking ahead beyond `to` as needed). `None` if a token crosses `to`.
fn lex_range(t: &[char], from: usize, to: usize) -> Option<Vec<Vec<String>>> {
    let rules = rules();
    let mut lines: Vec<Vec<String>> = vec![Vec::new()];
    let mut p = from;
    while p < to {
        let c = t[p];
        // fast paths (provably the same result as the general matcher):
        // runs of blanks are skipped,
        if c == ' ' || c == '\t' {
            while p < t.len() && is_space(t[p]) {
                p += 1;
            }
            continue;
        }
        if c == '\n' {
            lines.push(Vec::new());
            p += 1;
            continue;
        }
        // an ASCII-letter run followed by a blank or newline is a word on its own
        if c.is_ascii_alphabetic() {
            let mut q = p;
            while q < t.len() && t[q].is_ascii_alphabetic() {
                q += 1;
            }
            // (also when followed by a comma or a period and a blank, unless the letters
            // could start an abbreviation: no token class can then extend past them)
            let punct_end = q < t.len()
                && (t[q] == ',' || t[q] == '.')
                && (q + 1 == t.len() || matches!(t[q + 1], ' ' | '\n'));
            let plain = !punct_end
                || t[q] == ','
                || (q - p >= 2 && {
                    let w: String = t[p..q].iter().collect::<String>().to_ascii_lowercase();
                    !ABBREV_WORDS.contains(&w.as_str())
                });
            if q == t.len() || t[q] == ' ' || t[q] == '\n' || (punct_end && plain) {
                let w: String = t[p..q].iter().collect::<String>().to_ascii_lowercase();
                if !SPLIT_WORDS.contains(&w.as_str()) {
                    lines.last_mut().unwrap().push(w);
                    p = q;
                    continue;
                }
            }
        }
        // a comma not followed by a digit, a period followed by a blank (not ". ."), are
        // plain punctuation tokens
        if (c == ',' && !(p + 1 < t.len() && word_digit(t[p + 1])))
            || (c == '.'
                && (p + 1 == t.len()
                    || t[p + 1] == '\n'
                    || (t[p + 1] == ' ' && !(p + 2 < t.len() && t[p + 2] == '.'))))
        {
            lines.last_mut().unwrap().push(c.to_string());
            p += 1;
            continue;
        }
        // longest match; ties resolved by rule order
        let mut best: Option<(usize, usize, usize)> = None; // (total, rule, text_len)
        for (ri, r) in rules.iter().enumerate() {
            if !r.can_start(c) {
                continue;
            }
            if let Some((total, len)) = match_rule(r, t, p) {
                if best.is_none_or(|(bt, _, _)| total > bt) {
                    best = Some((total, ri, len));
                }
            }
        }
        let (_, ri, len) = match best {
            Some(b) => b,
            None => {
                p += 1;
                continue;
            }
        };
        let matched: String = t[p..p + len].iter().collect();
        let (emit, consumed): (Option<String>, usize) = match rules[ri].act {
            Act::Plain => (Some(matched), len),
            Act::NoSoftHyphen => (Some(remove_soft_hyphens(&matched)), len),
            Act::KeepFirst(k) => (Some(t[p..p + len - k].iter().collect()), len - k),
            Act::DupPeriod => (Some(matched), len - 1),
            Act::Quote(left) => (Some(latex_quotes(&matched, left)), len),
            Act::Amp => (Some(normalize_amp(&matched)), len),
            Act::MDash => (Some("--".to_owned()), len),
            Act::Currency => (
                Some(match c {
                    '\u{00A2}' => "cents".to_owned(),
                    '\u{00A3}' => "#".to_owned(),
                    '\u{0080}' | '\u{00A4}' | '\u{20A0}' | '\u{20AC}' => "$".to_owned(),
                    _ => matched,
                }),
                len,
            ),
            Act::Frac2 => (
                Some(match c {
                    '\u{00BC}' => "1/4".to_owned(),
                    '\u{00BD}' => "1/2".to_owned(),
                    '\u{00BE}' => "3/4".to_owned(),
                    '\u{2153}' => "1/3".to_owned(),
                    '\u{2154}' => "2/3".to_owned(),
                    _ => matched,
                }),
                len,
            ),
            Act::SpaceToNbsp => (Some(matched.replace(' ', "\u{00A0}")), len),
            Act::Phone => (Some(paren_escape(&matched.replace(' ', "\u{00A0}"))), len),
            Act::Smiley => (Some(paren_escape(&matched)), len),
            Act::Fixed(s) => (Some(s.to_owned()), len),
            Act::Hyphens => (
                Some(if (3..=4).contains(&len) {
                    "--".to_owned()
                } else {
                    matched
                }),
                len,
            ),
            Act::Ellipsis => (Some("...".to_owned()), len),
            Act::Acronym => {
                let mut l = len;
                while l > 0 && matches!(t[p + l - 1], ' ' | '\t' | '\n'..='\r' | '\u{0085}') {
                    l -= 1;
                }
                if l == 2 {
                    (Some(t[p..p + 1].iter().collect()), 1)
                } else {
                    (Some(t[p..p + l].iter().collect()), l.saturating_sub(1))
                }
            }
            Act::TrimTrailingSpace => {
                let mut l = len;
                while l > 0 && matches!(t[p + l - 1], ' ' | '\t' | '\n'..='\r' | '\u{0085}') {
                    l -= 1;
                }
                (Some(t[p..p + l].iter().collect()), l)
            }
            Act::Newline => {
                lines.push(Vec::new());
                (None, len)
            }
            Act::Skip | Act::Delete => (None, len),
        };
        if let Some(tok) = emit {
            lines.last_mut().unwrap().push(java_lowercase(&tok));
        }
        p += consumed.max(1);
    }
    if p != to {
        return None;
    }
    Some(lines)
}

/// Java's `String.toLowerCase(Locale.ENGLISH)`.
fn java_lowercase(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    if !s.contains('\u{03A3}') {
        return s.to_lowercase();
    }
    // Java decides "final sigma" within a word (BreakIterator): a cased letter before it
    // and none after it in the same word. Approximate words as runs of alphanumerics,
    // '_' and apostrophes.
    let chars: Vec<char> = s.chars().collect();
    let in_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '\'' | '\u{2019}' | '.');
    let cased = |c: char| c.is_lowercase() || c.is_uppercase();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '\u{03A3}' {
            let before = chars[..i]
                .iter()
                .rev()
                .take_while(|&&x| in_word(x))
                .any(|&x| cased(x));
            let after = chars[i + 1..]
                .iter()
                .take_while(|&&x| in_word(x))
                .any(|&x| cased(x));
            out.push(if before && !after {
                '\u{03C2}'
            } else {
                '\u{03C3}'
            });
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Tokenize captions exactly as pycocoevalcap's `PTBTokenizer.tokenize` does: one output
/// string per input caption, tokens joined by single spaces, punctuation tokens removed.
///
/// Captions are joined with `\n` (newlines inside a caption are replaced by spaces first);
/// other line separators inside a caption shift the following captions, as in the original.
pub fn coco_tokenize(captions: &[String]) -> Vec<String> {
    let joined = captions
        .iter()
        .map(|c| c.replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let lines = ptb_tokenize_stream(&joined);
    let mut out: Vec<String> = lines
        .iter()
        .take(captions.len())
        .map(|toks| {
            // Python: ' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)
            let line = toks.join(" ");
            let line = line.trim_end_matches(crate::text::is_py_space);
            line.split(' ')
                .filter(|w| !COCO_PUNCTUATIONS.contains(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // (Python would fail on missing lines; keep the corpus aligned instead)
    while out.len() < captions.len() {
        out.push(String::new());
    }
    out
}

/// Words of a tokenized caption as CIDEr sees them (Python `str.split()`).
pub fn split_words(s: &str) -> Vec<&str> {
    py_split(s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> String {
        ptb_tokenize_stream(s)
            .into_iter()
            .map(|l| l.join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn basic_ptb() {
        assert_eq!(tok("Hello World."), "hello world .");
        assert_eq!(
            tok("It's near the Eagle's, isn't it?"),
            "it 's near the eagle 's , is n't it ?"
        );
        assert_eq!(tok("£20-25 (great)"), "# 20-25 -lrb- great -rrb-");
        assert_eq!(tok("\"quoted\" cannot"), "`` quoted '' can not");
        assert_eq!(
            tok("U.S. caf\u{e9}... 3.5 y..."),
            "u.s. caf\u{e9} ... 3.5 y. . ."
        );
        assert_eq!(
            tok("caf\u{e9}2014\u{3a3} txt\u{3a3}_x"),
            "caf\u{e9}2014\u{3c2} txt\u{3c3}_x"
        );
        assert_eq!(tok("a\n\nb"), "a\n\nb");
    }

    #[test]
    fn coco_punctuation_removed() {
        let out = coco_tokenize(&[
            "Hello, World!".to_owned(),
            "(x) -- yes...".to_owned(),
            String::new(),
        ]);
        assert_eq!(out, vec!["hello world", "-lrb- x -rrb- yes", ""]);
    }
}
