#!/usr/bin/env python3
"""Checks lowrank's GPT-2 and T5 outputs against Python PEFT and transformers (run from the
repository root; needs scripts/requirements-fixtures.txt):

    python3 scripts/check_ours_gpt2_t5.py
        PEFT loads tests/fixtures/tiny-gpt2/ours-qv-adapter (the LoRA paper's separate q/v factors,
        exported by lowrank as one c_attn LoRA of rank 2r) and tests/fixtures/tiny-t5/v1_1/ours-adapter
        (SEQ_2_SEQ_LM, all linear layers) and reproduces the logits lowrank recorded with them.

    python3 scripts/check_ours_gpt2_t5.py --merged DIR --fixture tiny-gpt2|tiny-t5/v1_1
        transformers loads a folder written by `lowrank merge --model tests/fixtures/<fixture>/hf
        --adapter tests/fixtures/<fixture>/<ours adapter>` and gives the same logits.

Exits non-zero when a difference exceeds 1e-4.
"""
import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TOL = 1e-4
CASES = {"tiny-gpt2": "ours-qv-adapter", "tiny-t5/v1_1": "ours-adapter"}


def model_and_inputs(fixture: str, model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    g = load_file(f"tests/fixtures/{fixture}/golden.safetensors")
    if "t5" in fixture:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
        inputs = dict(input_ids=g["input_ids"], attention_mask=g["attention_mask"], labels=g["labels"])
        keep = g["labels"] != -100
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        inputs = dict(input_ids=g["input_ids"], attention_mask=g["attention_mask"])
        keep = g["attention_mask"].bool()
    return model, inputs, keep


def compare(name: str, logits, fixture: str, keep) -> bool:
    ours = load_file(f"tests/fixtures/{fixture}/{CASES[fixture]}/logits.safetensors")["logits"]
    diff = (logits - ours)[keep].abs().max().item()
    ok = diff <= TOL
    print(f"{name}: max abs diff {diff:.3e} {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merged", type=Path)
    ap.add_argument("--fixture", choices=sorted(CASES))
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.merged:
        if not a.fixture:
            ap.error("--merged needs --fixture")
        model, inputs, keep = model_and_inputs(a.fixture, a.merged)
        with torch.no_grad():
            logits = model(**inputs).logits
        return 0 if compare(f"transformers on {a.merged}", logits, a.fixture, keep) else 1
    from peft import PeftModel

    all_ok = True
    for fixture, adapter in CASES.items():
        model, inputs, keep = model_and_inputs(fixture, Path(f"tests/fixtures/{fixture}/hf"))
        pm = PeftModel.from_pretrained(model, f"tests/fixtures/{fixture}/{adapter}").eval()
        with torch.no_grad():
            logits = pm(**inputs).logits
        all_ok &= compare(f"PEFT with tests/fixtures/{fixture}/{adapter}", logits, fixture, keep)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
