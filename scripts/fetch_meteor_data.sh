#!/usr/bin/env bash
# Install the METEOR 1.5 resources lowrank-metrics needs (English) from the PyPI package
# pycocoevalcap==1.2 (the files the official E2E/COCO evaluation uses):
#   paraphrase-en.gz                 (pycocoevalcap/meteor/data/)
#   function/english.words           (inside meteor-1.5.jar)
#   nonbreaking/english.prefixes     (inside meteor-1.5.jar)
#   synonym/english.synsets          (inside meteor-1.5.jar)
#   synonym/english.exceptions       (inside meteor-1.5.jar)
#
# Usage: scripts/fetch_meteor_data.sh [DEST]
#   DEST defaults to $LOWRANK_METEOR_DATA, else ${XDG_CACHE_HOME:-~/.cache}/lowrank/meteor.
# Needs: python3 with pip (only `pip download` is used; nothing is installed).
set -euo pipefail

DEST="${1:-${LOWRANK_METEOR_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/lowrank/meteor}}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "downloading pycocoevalcap==1.2 from PyPI ..." >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK" "pycocoevalcap==1.2" \
  || "$PY" -m pip download --quiet --no-deps -d "$WORK" "pycocoevalcap==1.2"

mkdir -p "$DEST"
"$PY" - "$WORK" "$DEST" <<'PYEOF'
import glob, io, os, shutil, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
pkgs = glob.glob(os.path.join(work, "pycocoevalcap-1.2*"))
if not pkgs:
    sys.exit("pycocoevalcap download not found in %s" % work)
pkg = pkgs[0]

def members(path):
    """Yield (name, reader) for files of a wheel/zip or sdist tarball."""
    if path.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(path)
        for n in z.namelist():
            yield n, (lambda n=n: z.read(n))
    else:
        t = tarfile.open(path)
        for m in t.getmembers():
            if m.isfile():
                yield m.name, (lambda m=m: t.extractfile(m).read())

para = jar = None
for name, read in members(pkg):
    if name.endswith("meteor/data/paraphrase-en.gz"):
        para = read()
    elif name.endswith("meteor/meteor-1.5.jar"):
        jar = read()
if para is None or jar is None:
    sys.exit("meteor-1.5.jar / paraphrase-en.gz not found in %s" % pkg)

def write(rel, data):
    p = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = p + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, p)

write("paraphrase-en.gz", para)
z = zipfile.ZipFile(io.BytesIO(jar))
for rel in ["function/english.words", "nonbreaking/english.prefixes",
            "synonym/english.synsets", "synonym/english.exceptions", "synonym/COPYING.WORDNET"]:
    write(rel, z.read(rel))
# a stale index would be rebuilt anyway (it records the source size); drop it to be safe
idx = os.path.join(dest, "paraphrase-en.lrpi")
if os.path.exists(idx):
    os.remove(idx)
print(dest)
PYEOF
echo "METEOR data installed in $DEST (the paraphrase index is built on first use)" >&2
