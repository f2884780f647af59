#!/usr/bin/env python3
"""Regenerate the golden values of crates/metrics/tests/sacrebleu_golden.rs.

Scores a spread of hypothesis sets with

    sacrebleu.BLEU(tokenize="13a", lowercase=<False|True>).corpus_score(hyps, ref_streams)

(what `sacrebleu.corpus_bleu(hyps, ref_streams, tokenize="13a", lowercase=...)` runs)
against the German references of Multi30k test_2016_flickr and writes, into
crates/metrics/tests/fixtures/sacrebleu/:

    test_2016_flickr.de.gz  byte copy of the references (1000 lines)
    test_2016_flickr.en.gz  byte copy of the English sources (used as a hypothesis set)
    texts.json.gz           the derived hypothesis sets and reference streams ({name: [line]})
    golden.json             per case: hypotheses and reference streams (a text's name, an
                            inline list, or {"text": name, "reverse_words": true} /
                            {"text": name, "gaps_every": k}: the words of each line in
                            reverse order / None (no reference) at every line i with
                            i % k == 0), lowercase flag and
                            sacrebleu's score, precisions, bp, sys_len, ref_len, counts,
                            totals, signature and printed form (floats also as repr()
                            strings, for exact parsing); plus tokenizer cases
                            (sacrebleu's Tokenizer13a output and BLEU's full segment
                            preprocessing, cased and lowercased)

The files are deterministic (fixed seeds, gzip mtime 0).

Requirements (not needed by the Rust tests): pip install sacrebleu==2.6.0

Usage:
    python3 scripts/sacrebleu_golden.py [--data ../shared/data/multi30k]
        [--out crates/metrics/tests/fixtures/sacrebleu]
        [--fuzz N --fuzz-out FILE]   # also write N random tokenizer cases to FILE
                                     # (for LOWRANK_SACREBLEU_EXTRA_CASES=FILE)
"""

import argparse
import gzip
import json
import os
import random
import shutil
import sys

import sacrebleu
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DE = "test_2016_flickr.de.gz"
EN = "test_2016_flickr.en.gz"


def read_gz_lines(path):
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
        text = fh.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# --------------------------------------------------------------------------------------
# derived hypothesis sets / reference streams (stored verbatim in texts.json.gz)
# --------------------------------------------------------------------------------------

def noisy(lines, seed):
    """Drop, swap, duplicate and replace words; some short and some empty lines."""
    rng = random.Random(seed)
    vocab = [w for l in lines for w in l.split()]
    out = []
    for i, line in enumerate(lines):
        if i % 97 == 13:
            out.append("")
            continue
        toks = line.split()
        if i % 53 == 7:
            out.append(" ".join(toks[:2]))
            continue
        res = []
        for t in toks:
            r = rng.random()
            if r < 0.12:
                continue  # drop
            if r < 0.17:
                res.append(rng.choice(vocab))  # replace
                continue
            res.append(t)
            if r > 0.96:
                res.append(t)  # duplicate (exercises clipping)
        for k in range(len(res) - 1):
            if rng.random() < 0.08:
                res[k], res[k + 1] = res[k + 1], res[k]
        if res and rng.random() < 0.1:
            res[0] = res[0].lower()
        if rng.random() < 0.05:
            res.append(res[-1] if res else "und")
        out.append(" ".join(res))
    return out


def drop_words(lines, k, seed, replace=0):
    """Drop k random words (keep at least one) and replace `replace` others."""
    rng = random.Random(seed)
    vocab = [w for l in lines for w in l.split()]
    out = []
    for line in lines:
        toks = line.split()
        for _ in range(k):
            if len(toks) > 1:
                del toks[rng.randrange(len(toks))]
        for _ in range(replace):
            toks[rng.randrange(len(toks))] = rng.choice(vocab)
        out.append(" ".join(toks))
    return out


# --------------------------------------------------------------------------------------
# small inline sets
# --------------------------------------------------------------------------------------

PUNCT_REFS = [
    "„Ein Mann“ – sagt er – „kostet 1,000.5 Euro…“",
    "Die Straße ist 5-spurig; der Preis: 3.50 € (ca. 20%).",
    "Ein 10-jähriges Mädchen spielt im Schnee.",
    "Er sagte: \"Hallo!\" & ging weg...",
    "Zwei Männer (einer mit Hut) stehen an der Bus-Haltestelle.",
    "ÄRGER über GROẞE Straßen – ÖL und ÜBEL.",
    "It's the U.S.A.'s best e-mail, isn't it?",
    "1.000 Leute, 2,5 Hunde und 3-4 Katzen.",
    "Ein Kind springt ins Wasser ... und lacht.",
    "Das „Café“ heißt »Zum Löwen« – sehr schön!",
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Preis: $5.00/Stück, 50% Rabatt & mehr @ www.example.com",
    "Um 12:30 Uhr – genau – fährt der Zug ab.",
    "ΣΟΦΟΣ und İSTANBUL sind Wörter; ΟΔΟΣ auch.",
    "\"Zitat\" &quot;Zitat&quot; &amp; &lt;tag&gt; <skipped> Ende.",
    "Mehrere    Leerzeichen\tund\u00a0geschützte\u2009Leerzeichen.",
    "Zeile mit Tren-\nnung und\nUmbruch.",
    "Ende mit Bindestrich",  # the hypothesis' "Bindestrich-\n" keeps its "-" (rstrip first)
    "{Klammern} [eckig] <spitz> |Pipe| ~Tilde~ ^Caret^ `Backtick` _unter_",
    "Zahlen: 1,000,000.00 und -5 und 5- und .5 und 5. Ende",
    "Ein Hund, ein Ball, ein Garten.",
    "Leute Reparieren das Dach eines Hauses.",
]

PUNCT_HYPS = [
    "„Ein Mann“ – sagt sie – „kostet 1,000.5 Euro…“",
    "Die Straße ist 5-spurig; Preis: 3.50 € (ca. 20 %).",
    "Ein 10-jähriges Mädchen spielt im Schnee .",
    "Er sagte: &quot;Hallo!&quot; &amp; ging weg…",
    "Zwei Männer ( einer mit Hut ) stehen an der Bushaltestelle.",
    "Ärger über große Strassen – Öl und Übel.",
    "It's the U.S.A.'s best e-mail, isn't it ?",
    "1.000 Leute, 2.5 Hunde und 3 - 4 Katzen.",
    "",
    "Das \"Café\" heißt „Zum Löwen“ - sehr schön!",
    "ein mann mit einem orangefarbenen hut, der etwas anstarrt.",
    "Preis: $5.00 / Stück, 50% Rabatt &mehr@www.example.com",
    "Um 12:30 Uhr—genau—fährt der Zug ab.",
    "ΣΟΦΟΣ und İstanbul sind Wörter; ΟΔΟΣ auch.",
    "\"Zitat\" \"Zitat\" & <tag> Ende.",
    "Mehrere Leerzeichen und geschützte Leerzeichen.   \u3000",
    "Zeile mit Trennung und Umbruch.",
    "Ende mit Bindestrich-\n",
    "{Klammern} [eckig] <spitz> | Pipe | ~ Tilde ~ ^Caret^ `Backtick` _unter_",
    "Zahlen: 1,000,000.00 und - 5 und 5 - und . 5 und 5 . Ende",
    "   ",
    "Leute reparieren das Dach eines Hauses .",
]

# a 4-gram precision of zero (1- to 3-gram matches exist): exp smoothing of one order
ZERO4_REFS = [
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Ein Boston Terrier läuft über saftig-grünes Gras vor einem weißen Zaun.",
    "Leute Reparieren das Dach eines Hauses.",
]
ZERO4_HYPS = [
    "Ein Mann mit Hut starrt",
    "Ein Boston Terrier rennt auf grünem Gras",
    "Leute reparieren das Dach",
]
# only unigram matches: two orders smoothed (3-gram and 4-gram smoothed twice over)
UNI_HYPS = ["Mann Hut Ein etwas", "Gras Terrier Zaun Boston weißen", "Dach Leute Hauses"]
# no hypothesis has 4 tokens: the 4-gram total is 0 (sacrebleu stops, precision 0)
SHORT_HYPS = ["Ein Mann", "Ein Boston Terrier", "Leute"]
# nothing matches at all (early return)
NOMATCH_HYPS = ["xyz abc", "qqq", "zzz yyy xxx www"]
# only empty hypotheses (sys_len 0: bp 0)
EMPTY_HYPS = ["", "", ""]
# longer than the references (bp 1)
LONG_HYPS = [r + " und noch viel mehr Text hier am Ende" for r in ZERO4_REFS]
# one line
ONE_HYP = ["Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."]

# --------------------------------------------------------------------------------------
# tokenizer cases
# --------------------------------------------------------------------------------------

TOK_EXTRA = [
    "", " ", "\t", "\n", "-\n", "a-\n", "a-\nb", "a -\n b", "a\nb", "a-\n\n", "a-\n ",
    "a- \n", "<skipped>", "a<skipped>b", "<skip>", "&quot;&amp;&lt;&gt;", "&amp;quot;",
    "&", "&&", "a&b", "&nbsp;", "1,000.5", "1.000,5", "3.", ".5", "a.", ".a", "a.b", "a,b",
    "1,a", "a,1", "a.,b", "..", "...", ",,,", "1..2", "1.,2", "1-2", "a-b", "-1", "1-",
    "1--2", "a--b", "1-a", "5-jährige", "e.g.", "U.S.A.", "it's", "don't", "1/2", "a/b",
    "50%", "$5", "€5", "£20-25", "§3", "#1", "@home", "a@b.c", "x+y=z", "a*b", "(a)",
    "[a]", "{a}", "<a>", "|a|", "~a~", "^a^", "`a`", "_a_", "a:b", "a;b", "a?b", "a!b",
    "\"a\"", "'a'", "„a“", "»a«", "‚a‘", "a–b", "a—b", "a…", "a·b", "a•b", "a\u00a0b",
    "a\u2009b", "a\u3000b", "a\u200bb", "a\u2028b", "a\u0085b", "a\u001cb", "a\u001fb",
    "a\u000bb", "a\u000cb", "a\rb", "a\r\nb", "trailing\u00a0", "trailing\u001c",
    "Straße", "STRASSE", "GROẞ", "Äpfel Öl Übel", "ΣΟΦΟΣ", "ΟΔΟΣ.", "Σ", "ΑΣ Σ", "İstanbul",
    "ǅ ǈ ǋ", "ﬁ ﬂ", "K Å", "Ⅻ ⅻ", "Ａ１，２．３", "١٢٣", "１-２", "x²", "3½",
    "Hello World.", "Hello World. ", "Hello World .", "  leading and trailing  ",
]


def tok_atoms():
    atoms = [
        "a", "B", "ß", "Ä", "ö", "Σ", "İ", "é", "0", "1", "9", "12", "3.5", "1,000",
        ".", ",", "-", "--", "'", "\"", "&", "&quot;", "&amp;", "&lt;", "&gt;", "&#39;",
        "<skipped>", "<", ">", "(", ")", "[", "]", "{", "}", "/", "\\", ":", ";", "?",
        "!", "@", "#", "$", "%", "^", "*", "+", "=", "_", "`", "|", "~", "€", "£",
        "„", "“", "”", "‚", "‘", "’", "»", "«", "–", "—", "…", "·",
        " ", " ", " ", "  ", "\t", "\n", "-\n", "\r", "\u00a0", "\u2009", "\u3000",
        "\u0085", "\u001c", "\u001f", "\u000b", "\u200b", "\u2028",
        "Mann", "Straße", "e-mail", "U.S.", "it's", "5-jährige", "GROẞE",
    ]
    return atoms


def fuzz_strings(n, seed):
    rng = random.Random(seed)
    atoms = tok_atoms()
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def tok_case(s, tok, bleu_cs, bleu_lc):
    return {
        "input": s,
        "tok13a": tok(s),
        "cased": bleu_cs._preprocess_segment(s),
        "lower": bleu_lc._preprocess_segment(s),
    }


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------

def score(hyps, streams, lowercase):
    m = BLEU(lowercase=lowercase, tokenize="13a")
    s = m.corpus_score(hyps, streams)
    sig = m.get_signature()
    # the convenience function must agree
    s2 = sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", lowercase=lowercase)
    assert s2.score == s.score and s2.precisions == s.precisions, (s, s2)
    return {
        "score": s.score,
        "precisions": list(s.precisions),
        "bp": s.bp,
        "sys_len": s.sys_len,
        "ref_len": s.ref_len,
        "counts": list(s.counts),
        "totals": list(s.totals),
        "signature": sig.format(),
        "signature_short": sig.format(short=True),
        "str": str(s),
        "formatted": s.format(signature=sig.format()),
        # repr() of the floats: parsers that are not correctly rounding (serde_json
        # without its float_roundtrip feature) may be 1 ulp off on the numbers above
        "repr": {"score": repr(s.score), "bp": repr(s.bp),
                 "precisions": [repr(p) for p in s.precisions]},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "multi30k"))
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "metrics", "tests", "fixtures", "sacrebleu"))
    ap.add_argument("--fuzz", type=int, default=0)
    ap.add_argument("--fuzz-out")
    args = ap.parse_args()
    assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__
    os.makedirs(args.out, exist_ok=True)
    for f in (DE, EN):
        shutil.copyfile(os.path.join(args.data, f), os.path.join(args.out, f))
    de = read_gz_lines(os.path.join(args.out, DE))
    en = read_gz_lines(os.path.join(args.out, EN))
    assert len(de) == len(en) == 1000, (len(de), len(en))

    texts = {
        "noisy": noisy(de, 1),
        "lower": [l.lower() for l in de],
        "drop1": drop_words(de, 1, 3),
        "de_alt": drop_words(de, 2, 4, replace=1),
    }
    named = dict(texts, de=de, en=en)

    # (name, hyps, ref streams): strings name a text, lists are inline
    cases = [
        ("identity", "de", ["de"]),
        ("noisy", "noisy", ["de"]),
        ("reversed", {"text": "de", "reverse_words": True}, ["de"]),
        ("lowercased_refs", "lower", ["de"]),
        ("english_sources", "en", ["de"]),
        ("noisy_vs_english", "noisy", ["en"]),
        ("two_streams", "drop1", ["de", "de_alt"]),
        ("two_streams_noisy", "noisy", ["de_alt", "de"]),
        ("three_streams", "noisy", ["de", "de_alt", "en"]),
        # a stream with gaps (None): a variable number of references per segment
        ("variable_refs", "drop1", ["de", {"text": "de_alt", "gaps_every": 3}]),
        ("punct", PUNCT_HYPS, [PUNCT_REFS]),
        ("punct_two_streams", PUNCT_HYPS, [PUNCT_REFS, PUNCT_HYPS[::-1]]),
        ("zero_4gram", ZERO4_HYPS, [ZERO4_REFS]),
        ("unigrams_only", UNI_HYPS, [ZERO4_REFS]),
        ("short_hyps", SHORT_HYPS, [ZERO4_REFS]),
        ("no_match", NOMATCH_HYPS, [ZERO4_REFS]),
        ("empty_hyps", EMPTY_HYPS, [ZERO4_REFS]),
        ("long_hyps", LONG_HYPS, [ZERO4_REFS]),
        ("one_line", ONE_HYP, [ZERO4_REFS[:1]]),
        ("empty_ref", ["Ein Mann", ""], [["", ""]]),
    ]

    def resolve(x):
        if isinstance(x, str):
            return named[x]
        if isinstance(x, dict):
            # derived on the fly by the Rust test too (kept out of texts.json.gz)
            if x.get("reverse_words"):
                return [" ".join(reversed(l.split(" "))) for l in named[x["text"]]]
            if "gaps_every" in x:
                k = x["gaps_every"]
                return [None if i % k == 0 else l for i, l in enumerate(named[x["text"]])]
        return x

    out_cases = []
    for name, hyps, streams in cases:
        h = resolve(hyps)
        rs = [resolve(s) for s in streams]
        for lc in (False, True):
            exp = score(h, rs, lc)
            print("%-20s lc=%d %s" % (name, lc, exp["str"]), file=sys.stderr)
            out_cases.append({"name": name, "hyps": hyps, "refs": streams, "lowercase": lc,
                              "expected": exp})

    tok = Tokenizer13a()
    bcs, blc = BLEU(tokenize="13a"), BLEU(tokenize="13a", lowercase=True)
    tok_inputs = TOK_EXTRA + PUNCT_REFS + PUNCT_HYPS + de[:20] + fuzz_strings(400, 5)
    seen, tok_cases = set(), []
    for s in tok_inputs:
        if s not in seen:
            seen.add(s)
            tok_cases.append(tok_case(s, tok, bcs, blc))

    golden = {
        "generator": "scripts/sacrebleu_golden.py",
        "sacrebleu_version": sacrebleu.__version__,
        "python_version": sys.version.split()[0],
        "texts_files": {"de": DE, "en": EN},
        "texts": "texts.json.gz",
        "cases": out_cases,
    }
    # one tokenizer case a line
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    assert text.endswith("\n}")
    text = text[:-2] + ',\n "tokenizer_cases": [\n'
    text += ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in tok_cases)
    text += "\n ]\n}\n"
    assert json.loads(text)["tokenizer_cases"] == tok_cases
    with open(os.path.join(args.out, "golden.json"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    raw = json.dumps(texts, ensure_ascii=False, indent=0).encode("utf-8")
    with open(os.path.join(args.out, "texts.json.gz"), "wb") as fh:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
            gz.write(raw)

    if args.fuzz:
        cases = [tok_case(s, tok, bcs, blc) for s in fuzz_strings(args.fuzz, 11)]
        with open(args.fuzz_out, "w", encoding="utf-8") as fh:
            json.dump({"tokenizer_cases": cases}, fh, ensure_ascii=False)


if __name__ == "__main__":
    main()
