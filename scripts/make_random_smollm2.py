#!/usr/bin/env python3
"""Writes a Hugging Face folder with SmolLM2-135M's architecture and deterministic pseudo-random
weights, bit for bit the same on every machine (a counter-based hash, not numpy's generators):
for benchmarks and CPU-against-GPU checks where the pretrained file cannot travel.

    python3 scripts/make_random_smollm2.py OUT_DIR [--tokenizer tokenizer.json]

Weights are uniform with standard deviation 0.02 (norm weights 1), f32 safetensors; the tokenizer
file (SmolLM2's, e.g. from `lowrank merge` of the GGUF) is copied in when given. Needs numpy and
safetensors.
"""
import argparse, json, os, shutil

import numpy as np
from safetensors.numpy import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536, "initializer_range": 0.02,
    "max_position_embeddings": 8192, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "torch_dtype": "float32", "vocab_size": 49152, "use_cache": True,
}


def uniform(seed, shape, std=0.02):
    """Counter-based splitmix64 stream: element i is hash(seed, i); uniform with the given std."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # [0, 1), 24 bits
    half = std * np.sqrt(3.0)
    return ((u * 2.0 - 1.0) * half).astype(np.float32).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer", help="a tokenizer.json to copy in")
    a = ap.parse_args()
    c = CONFIG
    d, ff, hd, v = c["hidden_size"], c["intermediate_size"], c["head_dim"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (d,), f"{p}.post_attention_layernorm.weight": (d,),
            f"{p}.self_attn.q_proj.weight": (q, d), f"{p}.self_attn.k_proj.weight": (kv, d),
            f"{p}.self_attn.v_proj.weight": (kv, d), f"{p}.self_attn.o_proj.weight": (d, q),
            f"{p}.mlp.gate_proj.weight": (ff, d), f"{p}.mlp.up_proj.weight": (ff, d),
            f"{p}.mlp.down_proj.weight": (d, ff),
        })
    tensors = {}
    for seed, name in enumerate(sorted(shapes), start=1):
        shape = shapes[name]
        tensors[name] = np.ones(shape, np.float32) if name.endswith("norm.weight") else uniform(seed, shape)
    os.makedirs(a.out, exist_ok=True)
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    if a.tokenizer:
        shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    print(f"wrote {a.out}: {sum(t.size for t in tensors.values()):,} parameters")


if __name__ == "__main__":
    main()
