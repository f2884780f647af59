#!/usr/bin/env python3
"""Checks that a folder written by `lowrank merge` loads in transformers and gives the adapter's
logits. Usage (from the repository root):

    lowrank merge --model tests/fixtures/tiny-llama/hf --adapter tests/fixtures/tiny-llama/ours-adapter --output /tmp/merged
    python3 scripts/check_merged.py /tmp/merged

Compares against tests/fixtures/tiny-llama/ours-adapter/logits.safetensors (lowrank's logits with
the adapter unmerged) on the golden batch; exits non-zero above 1e-4.
"""
import sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

merged = sys.argv[1]
g = load_file("tests/fixtures/tiny-llama/golden.safetensors")
ours = load_file("tests/fixtures/tiny-llama/ours-adapter/logits.safetensors")["logits"]
mask = g["attention_mask"].bool()
model = AutoModelForCausalLM.from_pretrained(merged).eval()
AutoTokenizer.from_pretrained(merged)
with torch.no_grad():
    out = model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits
diff = (out - ours)[mask].abs().max().item()
print(f"{merged}: transformers vs lowrank (adapter unmerged): max abs diff {diff:.3e}")
sys.exit(0 if diff < 1e-4 else 1)
