#!/usr/bin/env python3
"""Regenerate the golden values used by crates/metrics/tests.

Runs the *official* E2E metric implementations on the E2E test-set references
with a spread of hypothesis sets and writes

    tests/fixtures/metrics/hyps/<set>.txt   (one hypothesis per line; the sets first_ref,
                                             other_ref and long are derived from the
                                             references by the Rust tests instead)
    tests/fixtures/metrics/golden.json      (scores per set)
    tests/fixtures/metrics/ptb_cases.tsv    (PTB tokenizer input -> output, one stream)
    tests/fixtures/metrics/tok13a_cases.tsv (sacrebleu 13a tokenizer input -> output)
    tests/fixtures/metrics/meteor_mini/     (METEOR resources cut down to what the
                                             subset20_* sets can use: same matches)

Official implementations used:
  * github.com/tuetschek/e2e-metrics (measure_scores.py): mteval-v13a-sig.pl (Perl; run
    on a copy whose final printf shows 10 decimals instead of 4), the Python port
    metrics/pymteval.py (`measure_scores.py -p`), and its bundled MS-COCO
    pycocoevalcap (PTBTokenizer + METEOR 1.5 + ROUGE-L + CIDEr-D). The jars
    (stanford-corenlp-3.4.1.jar, meteor-1.5.jar, paraphrase-en.gz) are copied from
    the PyPI package pycocoevalcap==1.2, which ships the identical files.
  * sacrebleu.corpus_bleu(..., lowercase=True)

Requirements (none of them is needed by the Rust tests):
    pip install sacrebleu pycocoevalcap==1.2 future numpy
    Java (8+), Perl with XML::Twig (apt-get install libxml-twig-perl)
    git clone https://github.com/tuetschek/e2e-metrics /tmp/e2e-metrics

Usage:
    python3 scripts/metrics_golden.py [--e2e-metrics /tmp/e2e-metrics] [--out tests/fixtures/metrics]
"""

import argparse
import csv
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def read_refs_csv(path):
    """Group references by MR in first-appearance order (as lowrank-metrics does)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:]
    assert header[0].lower() == "mr" and header[1].lower() == "ref", header
    order, groups = [], {}
    for mr, ref in rows:
        if mr not in groups:
            groups[mr] = []
            order.append(mr)
        groups[mr].append(ref.strip())
    return order, [groups[mr] for mr in order]


def parse_mr(mr):
    return dict(re.findall(r"\s*([^\[,]+)\[([^\]]*)\]", mr))


# --------------------------------------------------------------------------------------
# hypothesis sets
# --------------------------------------------------------------------------------------

def hyp_template(mr):
    f = parse_mr(mr)
    out = [f.get("name", "It")]
    out.append(" is a %s" % f.get("eatType", "place"))
    if "food" in f:
        out.append(" that serves %s food" % f["food"])
    out.append(".")
    if "priceRange" in f:
        out.append(" Prices are %s." % f["priceRange"])
    if "customer rating" in f:
        out.append(" It has a %s customer rating." % f["customer rating"])
    if "area" in f:
        out.append(" It is located in the %s" % f["area"])
        if "near" in f:
            out.append(", near %s" % f["near"])
        out.append(".")
    elif "near" in f:
        out.append(" It is near %s." % f["near"])
    if "familyFriendly" in f:
        out.append(" It is family-friendly." if f["familyFriendly"] == "yes"
                   else " It isn't kid friendly.")
    return "".join(out)


def hyp_noisy(refs, rng, vocab, i):
    if i % 20 == 7:
        return ""
    words = rng.choice(refs).split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.18:
            continue  # drop
        if r < 0.23:
            out.append(rng.choice(vocab))  # substitute
            continue
        if r < 0.26:
            w = w.upper()
        out.append(w)
        if rng.random() < 0.04:
            out.append(w)  # repeat
    for j in range(len(out) - 1):
        if rng.random() < 0.1:
            out[j], out[j + 1] = out[j + 1], out[j]
    return " ".join(out)


MIXED_EXTRAS = [
    "\u201cGreat\u201d food \u2014 honestly\u2026 it\u2019s a na\u00efve caf\u00e9!",
    "\u00c9COLE \u00dcNICODE test \u00fcber stra\u00dfe 3.5 stars (5/5) \U0001F600 \u9910\u5385 ok",
    "e.g. U.S. style, it's great; isn't it? can't say... cannot -- wow!! R&B & jazz",
    "Prices: \u00a320-25, $30, \u20ac15, 20% off, #1 @home * x = y / z, 1,000 seats",
    "The Eagle's [riverside] {cheap} 'quoted' \"double\" o'clock rock 'n' roll Mr. Smith etc.",
    "family-friendly,kid-friendly.It is near the Caf\u00e9 Rouge.Good",
    "   multiple    spaces\tand\u00a0nbsp   here   ",
    "3 1/2 stars, 10:30pm, 5-star, 1.5-mile, -5 degrees, +44 1223 456789 call",
    "ALL CAPS SENTENCE WITH THE EAGLE'S FOOD AND YOU'RE WELCOME",
    "It's the children's favourite: Fitzbillies' pub ||| with | bars",
]


def hyp_mixed(refs, rng, i):
    k = i % 9
    if k == 0:
        return refs[0]  # equal to a reference
    if k == 1:
        return MIXED_EXTRAS[(i // 9) % len(MIXED_EXTRAS)]
    if k == 2:
        return refs[-1].upper()
    if k == 3:
        return ""
    if k == 4:
        return " ".join(refs[0].split()[:3])
    if k == 5:
        w = refs[-1].split()
        return " ".join(w + w[: len(w) // 2])
    if k == 6:
        return refs[0].replace("'", "\u2019").replace("-", "\u2013") + " \u2026"
    if k == 7:
        return "(" + refs[min(1, len(refs) - 1)] + ")"
    return MIXED_EXTRAS[(i * 7 + 3) % len(MIXED_EXTRAS)] + " " + refs[0]


def hyp_short(refs, rng, i):
    """Truncated references (length penalties active), a few empty and one-word outputs."""
    if i % 25 == 0:
        return ""
    w = refs[i % len(refs)].split()
    if i % 25 == 1:
        return w[0]
    n = max(1, int(len(w) * (0.35 + 0.4 * rng.random())))
    return " ".join(w[:n])


def hyp_long(refs, rng, i):
    """Two references of the MR concatenated (hypotheses longer than the references)."""
    return refs[0] + " " + refs[-1]


SYNONYM_SWAPS = {
    "restaurant": "eatery", "cheap": "inexpensive", "near": "close to", "family": "household",
    "food": "nutrient", "coffee": "java", "shop": "store", "customers": "clients", "rating": "evaluation",
    "price": "cost", "serves": "dishes", "located": "situated", "area": "region", "place": "spot",
    "kids": "children", "children": "kids", "high": "eminent", "low": "depleted", "average": "mean",
    "good": "beneficial", "centre": "center", "city": "metropolis", "pub": "saloon", "offers": "provides",
    "moderate": "restrained", "rated": "ranked", "venue": "locus", "also": "besides", "river": "stream",
}


def hyp_synonyms(refs):
    """A reference with words swapped for WordNet synonyms (exercises METEOR's synonym module)."""
    return " ".join(SYNONYM_SWAPS.get(w.lower(), w) for w in refs[0].split())


def build_sets(mrs, refs):
    n = len(refs)
    rng = random.Random(20240601)
    vocab = sorted({w for g in refs for r in g for w in r.split()})
    sets = {
        "first_ref": [g[0] for g in refs],
        "other_ref": [refs[(i + 1) % n][-1] for i in range(n)],
        "template": [hyp_template(mr) for mr in mrs],
        "noisy": [hyp_noisy(g, rng, vocab, i) for i, g in enumerate(refs)],
        "mixed": [hyp_mixed(g, rng, i) for i, g in enumerate(refs)],
        "short": [hyp_short(g, rng, i) for i, g in enumerate(refs)],
        "long": [hyp_long(g, rng, i) for i, g in enumerate(refs)],
    }
    return sets


# --------------------------------------------------------------------------------------
# official implementations
# --------------------------------------------------------------------------------------

def setup_e2e_metrics(path):
    if not os.path.exists(os.path.join(path, "measure_scores.py")):
        subprocess.check_call(["git", "clone", "https://github.com/tuetschek/e2e-metrics", path])
    # jars / data from the PyPI package (identical files, and git LFS-free)
    import importlib.util
    spec = importlib.util.find_spec("pycocoevalcap")  # the PyPI package (a namespace package)
    base = list(spec.submodule_search_locations)[0]
    pm = os.path.join(base, "meteor")
    pt = os.path.join(base, "tokenizer")
    for src, dst in [
        (os.path.join(pm, "meteor-1.5.jar"), "pycocoevalcap/meteor/meteor-1.5.jar"),
        (os.path.join(pm, "data", "paraphrase-en.gz"), "pycocoevalcap/meteor/data/paraphrase-en.gz"),
        (os.path.join(pt, "stanford-corenlp-3.4.1.jar"), "pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar"),
    ]:
        dst = os.path.join(path, dst)
        if not os.path.exists(dst) or os.path.getsize(dst) != os.path.getsize(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(src, dst)
    # pycocotools/coco.py imports plotting libraries it never uses here
    for mod in ["matplotlib", "matplotlib.collections", "matplotlib.patches", "skimage", "skimage.draw"]:
        try:
            __import__(mod)
        except ImportError:
            m = types.ModuleType(mod)
            m.PatchCollection = m.Polygon = m.polygon = None
            sys.modules[mod] = m
    # a copy of mteval printing more decimals (only the report printf changes)
    perl = open(os.path.join(path, "mteval", "mteval-v13a-sig.pl"), encoding="utf-8").read()
    hp = perl.replace('printf "NIST score = %2.4f  BLEU score = %.4f',
                      'printf "NIST score = %2.10f  BLEU score = %.10f')
    assert hp != perl
    hp_path = os.path.join(tempfile.gettempdir(), "mteval-v13a-sig-hp.pl")
    with open(hp_path, "w", encoding="utf-8") as fh:
        fh.write(hp)
    sys.path.insert(0, path)
    os.chdir(path)
    import measure_scores
    return measure_scores, os.path.join(path, "mteval", "mteval-v13a-sig.pl"), hp_path


def run_perl(ms, script, refs, hyps):
    tmp = tempfile.mkdtemp(prefix="e2e-golden-")
    try:
        ms.create_mteval_file(refs, os.path.join(tmp, "ref.sgm"), "ref")
        ms.create_mteval_file(hyps, os.path.join(tmp, "sys.sgm"), "tst")
        ms.create_mteval_file([""] * len(hyps), os.path.join(tmp, "src.sgm"), "src")
        out = subprocess.check_output(
            ["perl", script, "-r", os.path.join(tmp, "ref.sgm"), "-s", os.path.join(tmp, "src.sgm"),
             "-t", os.path.join(tmp, "sys.sgm"), "-f", os.path.join(tmp, "log.txt")],
            stderr=subprocess.STDOUT).decode("utf-8")
    finally:
        shutil.rmtree(tmp)
    nist = re.search(r"NIST score = ([0-9.]+)", out).group(1)
    bleu = re.search(r"BLEU score = ([0-9.]+)", out).group(1)
    return bleu, nist


def score_set(ms, perl_official, perl_hp, refs, hyps):
    import sacrebleu
    res = {}
    maxr = max(len(g) for g in refs)
    refs_t = [[g[k] if k < len(g) else None for g in refs] for k in range(maxr)]
    res["bleu_sacrebleu"] = sacrebleu.corpus_bleu(hyps, refs_t, lowercase=True).score / 100.0
    b4, n4 = run_perl(ms, perl_official, refs, hyps)
    res["bleu_perl_4dp"], res["nist_perl_4dp"] = b4, n4
    b, n = run_perl(ms, perl_hp, refs, hyps)
    res["bleu_perl"], res["nist_perl"] = float(b), float(n)
    py = ms.run_pymteval(refs, hyps)
    res["bleu_python"], res["nist_python"] = py["BLEU"], py["NIST"]
    coco = ms.run_coco_eval(refs, hyps)
    res["meteor"] = coco.eval["METEOR"]
    res["rouge_l"] = coco.eval["ROUGE_L"]
    res["cider"] = coco.eval["CIDEr"]
    return res


# --------------------------------------------------------------------------------------
# tokenizer cases
# --------------------------------------------------------------------------------------

PTB_EXTRA = [
    "Hello World.", "", "The Colour centre, \u00a320-25 isn't (great) \"quoted\" 3.5 U.S. caf\u00e9",
    "\u201ccurly\u201d it\u2019s ... -- & $5 a/b e-mail 5-star", "it's they're we'll I'm you've he'd",
    "don't can't won't isn't cannot gonna wanna", "e.g. i.e. etc. Mr. Dr. St. Ave. Co. The",
    "centre.It is near.The end", "kid-friendly,family-friendly.Yes", "R&B AT&T r&b", "5 out of 5.",
    "\u00a320-\u00a325 \u00a320 - 25 less than \u00a320.", "(5/5) [x] {y} <b> a < b > c",
    "!!! ?? ?! ... .... ..... ...... . . .", "- -- --- ---- ----- \u2013 \u2014",
    "3 1/2 stars 10:30pm 1,000 -5 +44 1.5-mile .5", "www.example.com http://x.org/a?b=c foo@bar.com",
    "#hashtag @user c++ c# f#", ":) ;-) :( :D", "O'Brien o'clock rock 'n' roll 'em '90s 'til",
    "Fitzbillies' pub, the Eagle's", "caf\u00e9-bar bar-caf\u00e9 na\u00efve \u00c9COLE \u00fcber",
    "\U0001F600 emoji \u9910\u5385 cjk", "a\u00a0b\tc  d", "ALL CAPS YOU'RE THE EAGLE'S",
    "Plan B. The end", "It is in the U.S. The end", "etc. the end", "Inc. The", "No. 5 fig. 3",
]


def ptb_tokenize(ms_dir, lines):
    jar = os.path.join(ms_dir, "pycocoevalcap", "tokenizer", "stanford-corenlp-3.4.1.jar")
    with tempfile.NamedTemporaryFile("wb", delete=False) as fh:
        fh.write("\n".join(lines).encode("utf-8"))
        name = fh.name
    out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
                          "-preserveLines", "-lowerCase", name], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=True).stdout.decode("utf-8")
    os.remove(name)
    return out.split("\n")


def meteor_vocab(ms_dir, lines):
    """For each line, a superset of the words METEOR sees (after pycocoevalcap's PTB
    tokenization and METEOR's normalization), to cut the resources down."""
    toks = ptb_tokenize(ms_dir, lines)
    out = []
    for line in toks[:len(lines)]:
        vocab = set()
        for t in line.split(" "):
            t = t.lower()
            if not t:
                continue
            vocab.add(t)
            vocab.add(t.replace(".", ""))
            for piece in re.split(r"[^0-9a-z\u00c0-\u024f\u0400-\u052f]+", t):
                if piece:
                    vocab.add(piece)
            for k, ch in enumerate(t):
                if ch in "'`\u2018\u2019":
                    vocab.add("'" + t[k + 1:])
                    vocab.add(t[:k])
        out.append(vocab)
    return out


def write_meteor_mini(ms_dir, out, hyps, refs):
    """METEOR resources restricted to what the given lines can use (exactly the same
    matches as with the full data)."""
    import gzip
    import zipfile
    lines = list(hyps) + [r for g in refs for r in g]
    line_vocab = meteor_vocab(ms_dir, lines)
    vocab = set().union(*line_vocab)
    # words of each aligned (hypothesis, references) segment; hyps may repeat MRs
    seg_vocab = []
    k = len(hyps)
    ref_vocab = []
    for g in refs:
        ref_vocab.append(set().union(*line_vocab[k:k + len(g)]))
        k += len(g)
    for i in range(len(hyps)):
        seg_vocab.append(line_vocab[i] | ref_vocab[i % len(refs)])
    jar = zipfile.ZipFile(os.path.join(ms_dir, "pycocoevalcap", "meteor", "meteor-1.5.jar"))
    os.makedirs(os.path.join(out, "function"), exist_ok=True)
    os.makedirs(os.path.join(out, "nonbreaking"), exist_ok=True)
    os.makedirs(os.path.join(out, "synonym"), exist_ok=True)  # (before copying the license)
    for rel in ["function/english.words", "nonbreaking/english.prefixes", "synonym/COPYING.WORDNET"]:
        with open(os.path.join(out, rel), "wb") as fh:
            fh.write(jar.read(rel))
    # synonyms: entries of the words, of their irregular base forms, of every WordNet
    # detachment candidate (so METEOR's first-existing-candidate choice is unchanged)
    sufx = ["s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed", "ing", "ing",
            "er", "est", "er", "est"]
    addr = ["", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e", "e"]
    exc = jar.read("synonym/english.exceptions").decode("utf-8").split("\n")
    exc_out, keys = [], set(vocab)
    for k in range(0, len(exc) - 1, 2):
        forms = [f for f in exc[k + 1].split() if f in vocab]
        if forms:
            exc_out += [exc[k], " ".join(forms)]
            keys.add(exc[k])
    for w in vocab:
        for s_, a_ in zip(sufx, addr):
            if w.endswith(s_):
                keys.add(w[: len(w) - len(s_)] + a_)
    syn = jar.read("synonym/english.synsets").decode("utf-8").split("\n")
    syn_out = []
    for k in range(0, len(syn) - 1, 2):
        if syn[k] in keys:
            syn_out += [syn[k], syn[k + 1]]
    with open(os.path.join(out, "synonym", "english.exceptions"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(exc_out) + "\n")
    with open(os.path.join(out, "synonym", "english.synsets"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(syn_out) + "\n")
    # paraphrases whose both sides consist of words of the lines
    kept = []
    with gzip.open(os.path.join(ms_dir, "pycocoevalcap", "meteor", "data", "paraphrase-en.gz"), "rt",
                   encoding="utf-8") as fh:
        while True:
            p = fh.readline()
            if not p:
                break
            a = fh.readline().rstrip("\n")
            b = fh.readline().rstrip("\n")
            wa, wb = a.split(), b.split()
            if all(w in vocab for w in wa) and all(w in vocab for w in wb):
                # a match needs both phrases within one (hypothesis, references) segment
                if any(all(w in sv for w in wa) and all(w in sv for w in wb) for sv in seg_vocab):
                    kept.append("%s%s\n%s\n" % (p, a, b))
    with gzip.GzipFile(os.path.join(out, "paraphrase-en.gz"), "wb", mtime=0) as fh:
        fh.write("".join(kept).encode("utf-8"))
    print("meteor mini data: %d words, %d synset entries, %d paraphrases" % (len(vocab), len(syn_out) // 2, len(kept)),
          file=sys.stderr)


def tsv_escape(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


# --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--e2e-metrics", default="/tmp/e2e-metrics")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "metrics"))
    ap.add_argument("--refs", default=os.path.join(ROOT, "data", "e2e", "testset_w_refs.csv"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    refs_path = os.path.abspath(args.refs)
    ms, perl_official, perl_hp = setup_e2e_metrics(os.path.abspath(args.e2e_metrics))

    mrs, refs = read_refs_csv(refs_path)
    sets = build_sets(mrs, refs)
    os.makedirs(os.path.join(out_dir, "hyps"), exist_ok=True)
    golden = {"refs": os.path.relpath(refs_path, ROOT), "sets": {}}

    jobs = [(name, hyps, refs, None) for name, hyps in sets.items()]
    # a small corpus: CIDEr's idf comes from the evaluated corpus; METEOR subset data test
    jobs.append(("subset20_noisy", sets["noisy"][:20], refs[:20], 20))
    jobs.append(("subset20_mixed", sets["mixed"][:20], refs[:20], 20))
    jobs.append(("subset20_synonyms", [hyp_synonyms(g) for g in refs[:20]], refs[:20], 20))
    derived = {"first_ref", "other_ref", "long"}  # re-derived from the references by the tests
    for name, hyps, rr, n_mrs in jobs:
        hyps = [h.replace("\n", " ") for h in hyps]
        if name not in derived:
            with open(os.path.join(out_dir, "hyps", name + ".txt"), "w", encoding="utf-8", newline="\n") as fh:
                fh.write("\n".join(hyps) + "\n")
        print("scoring", name, file=sys.stderr)
        res = score_set(ms, perl_official, perl_hp, rr, hyps)
        if name in derived:
            res["derive"] = name
        else:
            res["hyps"] = "hyps/%s.txt" % name
        res["n_mrs"] = n_mrs if n_mrs else len(rr)
        golden["sets"][name] = res
        print(name, json.dumps(res), file=sys.stderr)

    with open(os.path.join(out_dir, "golden.json"), "w", encoding="utf-8") as fh:
        json.dump(golden, fh, indent=1, ensure_ascii=False, sort_keys=True)
        fh.write("\n")

    # tokenizer cases: hand-written edge cases, the special hypotheses, random combinations
    frng = random.Random(7)
    atoms = [a for line in PTB_EXTRA + MIXED_EXTRAS for a in line.split(" ") if a]
    fuzz = ["".join(frng.choice(atoms) + frng.choice([" ", " ", ""]) for _ in range(frng.randint(1, 8))).strip()
            for _ in range(300)]
    ptb_in = PTB_EXTRA + MIXED_EXTRAS + sorted(set(sets["mixed"][:60])) + fuzz
    ptb_in = [s for s in ptb_in if "\n" not in s]
    ptb_out = ptb_tokenize(os.path.abspath(args.e2e_metrics), ptb_in)
    with open(os.path.join(out_dir, "ptb_cases.tsv"), "w", encoding="utf-8", newline="\n") as fh:
        for s, t in zip(ptb_in, ptb_out):
            fh.write(tsv_escape(s) + "\t" + tsv_escape(t) + "\n")
    import sacrebleu.tokenizers.tokenizer_13a as t13
    sb = t13.Tokenizer13a()
    write_meteor_mini(os.path.abspath(args.e2e_metrics), os.path.join(out_dir, "meteor_mini"),
                      sets["noisy"][:20] + sets["mixed"][:20] + [hyp_synonyms(g) for g in refs[:20]], refs[:20])
    with open(os.path.join(out_dir, "tok13a_cases.tsv"), "w", encoding="utf-8", newline="\n") as fh:
        for s in ptb_in:
            b = sb(s)
            fh.write(tsv_escape(s) + "\t" + tsv_escape(b) + "\n")


if __name__ == "__main__":
    main()
