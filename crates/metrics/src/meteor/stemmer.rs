//! The Snowball English ("Porter2") stemmer, as used by METEOR's stem module.

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

struct Word {
    w: Vec<char>,
    p1: usize,
    p2: usize,
}

impl Word {
    // (all suffixes are ASCII: byte length == char count)
    fn ends_with(&self, s: &str) -> bool {
        let n = s.len();
        n <= self.w.len()
            && self.w[self.w.len() - n..]
                .iter()
                .zip(s.bytes())
                .all(|(&c, b)| c == b as char)
    }
    /// Longest suffix of `list` the word ends with.
    fn longest_suffix<'a>(&self, list: &[&'a str]) -> Option<&'a str> {
        list.iter()
            .copied()
            .filter(|s| self.ends_with(s))
            .max_by_key(|s| s.len())
    }
    fn suffix_start(&self, s: &str) -> usize {
        self.w.len() - s.len()
    }
    fn replace_suffix(&mut self, s: &str, r: &str) {
        let st = self.suffix_start(s);
        self.w.truncate(st);
        self.w.extend(r.chars());
    }
    fn has_vowel_before(&self, end: usize) -> bool {
        self.w[..end].iter().any(|&c| is_vowel(c))
    }
    /// Does `w[..end]` end with a short syllable?
    fn short_syllable_at(&self, end: usize) -> bool {
        let w = &self.w;
        if end >= 3 {
            let (a, b, c) = (w[end - 3], w[end - 2], w[end - 1]);
            if !is_vowel(a) && is_vowel(b) && !is_vowel(c) && !matches!(c, 'w' | 'x' | 'Y') {
                return true;
            }
        }
        end == 2 && is_vowel(w[0]) && !is_vowel(w[1])
    }
}

/// Position after the first non-vowel that follows a vowel, searching from `start`.
fn region_after(w: &[char], start: usize) -> usize {
    let mut i = start;
    while i < w.len() && !is_vowel(w[i]) {
        i += 1;
    }
    while i < w.len() && is_vowel(w[i]) {
        i += 1;
    }
    if i < w.len() {
        i + 1
    } else {
        w.len()
    }
}

fn exception1(w: &str) -> Option<&'static str> {
    Some(match w {
        "skis" => "ski",
        "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "idly" => "idl",
        "gently" => "gentl",
        "ugly" => "ugli",
        "early" => "earli",
        "only" => "onli",
        "singly" => "singl",
        "sky" => "sky",
        "news" => "news",
        "howe" => "howe",
        "atlas" => "atlas",
        "cosmos" => "cosmos",
        "bias" => "bias",
        "andes" => "andes",
        _ => return None,
    })
}

/// Stem one (lowercase) word.
pub fn stem(word: &str) -> String {
    if let Some(e) = exception1(word) {
        return e.to_owned();
    }
    let mut chars: Vec<char> = word.chars().collect();
    if chars.len() < 3 {
        return word.to_owned();
    }
    // prelude
    if chars[0] == '\'' {
        chars.remove(0);
    }
    if chars.first() == Some(&'y') {
        chars[0] = 'Y';
    }
    for i in 1..chars.len() {
        if chars[i] == 'y' && is_vowel(chars[i - 1]) {
            chars[i] = 'Y';
        }
    }
    // regions
    let p1 = if ["gener", "commun", "arsen"]
        .iter()
        .any(|p| chars.iter().copied().take(p.len()).eq(p.chars()))
    {
        ["gener", "commun", "arsen"]
            .iter()
            .find(|p| chars.iter().copied().take(p.len()).eq(p.chars()))
            .unwrap()
            .len()
    } else {
        region_after(&chars, 0)
    };
    let p2 = region_after(&chars, p1);
    let mut w = Word { w: chars, p1, p2 };

    step_1a(&mut w);
    let s: String = w.w.iter().collect();
    if !matches!(
        s.as_str(),
        "inning" | "outing" | "canning" | "herring" | "earring" | "proceed" | "exceed" | "succeed"
    ) {
        step_1b(&mut w);
        step_1c(&mut w);
        step_2(&mut w);
        step_3(&mut w);
        step_4(&mut w);
        step_5(&mut w);
    }
    w.w.iter()
        .map(|&c| if c == 'Y' { 'y' } else { c })
        .collect()
}

fn step_1a(w: &mut Word) {
    if let Some(s) = w.longest_suffix(&["'", "'s'", "'s"]) {
        let st = w.suffix_start(s);
        w.w.truncate(st);
    }
    match w.longest_suffix(&["sses", "ied", "ies", "s", "us", "ss"]) {
        Some("sses") => w.replace_suffix("sses", "ss"),
        Some(s @ ("ied" | "ies")) => {
            if w.suffix_start(s) > 1 {
                w.replace_suffix(s, "i")
            } else {
                w.replace_suffix(s, "ie")
            }
        }
        Some("s") => {
            let st = w.suffix_start("s");
            // skip the letter before the s, then require a vowel further left
            if st >= 1 && w.has_vowel_before(st - 1) {
                w.w.truncate(st);
            }
        }
        _ => {}
    }
}

fn step_1b(w: &mut Word) {
    let suf = match w.longest_suffix(&["eed", "eedly", "ed", "edly", "ing", "ingly"]) {
        Some(s) => s,
        None => return,
    };
    let st = w.suffix_start(suf);
    if suf == "eed" || suf == "eedly" {
        if st >= w.p1 {
            w.replace_suffix(suf, "ee");
        }
        return;
    }
    if !w.has_vowel_before(st) {
        return;
    }
    w.w.truncate(st);
    match w.longest_suffix(&[
        "at", "bl", "iz", "bb", "dd", "ff", "gg", "mm", "nn", "pp", "rr", "tt",
    ]) {
        Some("at" | "bl" | "iz") => w.w.push('e'),
        Some(_) => {
            w.w.pop();
        }
        None => {
            if w.w.len() == w.p1 && w.short_syllable_at(w.w.len()) {
                w.w.push('e');
            }
        }
    }
}

fn step_1c(w: &mut Word) {
    let n = w.w.len();
    if n >= 3 && matches!(w.w[n - 1], 'y' | 'Y') && !is_vowel(w.w[n - 2]) {
        w.w[n - 1] = 'i';
    }
}

fn step_2(w: &mut Word) {
    const L: [&str; 24] = [
        "tional", "enci", "anci", "abli", "entli", "izer", "ization", "ational", "ation", "ator",
        "alism", "aliti", "alli", "fulness", "ousli", "ousness", "iveness", "iviti", "biliti",
        "bli", "ogi", "fulli", "lessli", "li",
    ];
    let suf = match w.longest_suffix(&L) {
        Some(s) => s,
        None => return,
    };
    let st = w.suffix_start(suf);
    if st < w.p1 {
        return;
    }
    let rep = match suf {
        "tional" => "tion",
        "enci" => "ence",
        "anci" => "ance",
        "abli" => "able",
        "entli" => "ent",
        "izer" | "ization" => "ize",
        "ational" | "ation" | "ator" => "ate",
        "alism" | "aliti" | "alli" => "al",
        "fulness" => "ful",
        "ousli" | "ousness" => "ous",
        "iveness" | "iviti" => "ive",
        "biliti" | "bli" => "ble",
        "ogi" if st >= 1 && w.w[st - 1] == 'l' => "og",
        "fulli" => "ful",
        "lessli" => "less",
        "li" if st >= 1
            && matches!(
                w.w[st - 1],
                'c' | 'd' | 'e' | 'g' | 'h' | 'k' | 'm' | 'n' | 'r' | 't'
            ) =>
        {
            ""
        }
        _ => return,
    };
    w.replace_suffix(suf, rep);
}

fn step_3(w: &mut Word) {
    const L: [&str; 9] = [
        "tional", "ational", "alize", "icate", "iciti", "ical", "ful", "ness", "ative",
    ];
    let suf = match w.longest_suffix(&L) {
        Some(s) => s,
        None => return,
    };
    let st = w.suffix_start(suf);
    if st < w.p1 {
        return;
    }
    let rep = match suf {
        "tional" => "tion",
        "ational" => "ate",
        "alize" => "al",
        "icate" | "iciti" | "ical" => "ic",
        "ful" | "ness" => "",
        "ative" if st >= w.p2 => "",
        _ => return,
    };
    w.replace_suffix(suf, rep);
}

fn step_4(w: &mut Word) {
    const L: [&str; 18] = [
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ism",
        "ate", "iti", "ous", "ive", "ize", "ion",
    ];
    let suf = match w.longest_suffix(&L) {
        Some(s) => s,
        None => return,
    };
    let st = w.suffix_start(suf);
    if st < w.p2 {
        return;
    }
    if suf == "ion" {
        if st >= 1 && matches!(w.w[st - 1], 's' | 't') {
            w.w.truncate(st);
        }
        return;
    }
    w.w.truncate(st);
}

fn step_5(w: &mut Word) {
    let n = w.w.len();
    if n == 0 {
        return;
    }
    match w.w[n - 1] {
        'e' => {
            let st = n - 1;
            if st >= w.p2 || (st >= w.p1 && !w.short_syllable_at(st)) {
                w.w.pop();
            }
        }
        'l' => {
            let st = n - 1;
            if st >= w.p2 && st >= 1 && w.w[st - 1] == 'l' {
                w.w.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn porter2_examples() {
        for (w, s) in [
            ("consign", "consign"),
            ("consigned", "consign"),
            ("consigning", "consign"),
            ("consignment", "consign"),
            ("consist", "consist"),
            ("consisted", "consist"),
            ("consistency", "consist"),
            ("knack", "knack"),
            ("knackeries", "knackeri"),
            ("restaurants", "restaur"),
            ("friendly", "friend"),
            ("families", "famili"),
            ("centre", "centr"),
            ("located", "locat"),
            ("generously", "generous"),
            ("skies", "sky"),
            ("a", "a"),
            ("cried", "cri"),
            ("ties", "tie"),
            ("gas", "gas"),
            ("gaps", "gap"),
            ("hopping", "hop"),
            ("hoping", "hope"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
