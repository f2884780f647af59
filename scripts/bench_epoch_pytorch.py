#!/usr/bin/env python3
"""The PyTorch + PEFT baseline for an epoch of real work: LoRA fine-tuning of SmolLM2 on the E2E
dev set exactly as configs/e2e-smollm2.toml describes it (ChatML prompt template, prompt tokens
masked, EOS appended, max_length 128, r = 8 / alpha 16 / dropout 0.05 on q_proj, v_proj, AdamW
lr 1e-3, batch 8), the way a plain PyTorch loop does it: batches in data order, each padded to its
longest member. Prints one JSON line (examples, tokens, seconds, tokens/s, peak RSS).

    python3 scripts/bench_epoch_pytorch.py --model ~/.cache/lowrank/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data data/e2e/devset.csv --limit 0 --threads 2

Compare with `lowrank train --config configs/e2e-smollm2.toml --set train.steps=0 --set train.epochs=1
--set data.train_limit=N` (scripts/bench_epoch_compare.sh runs both).
"""
import argparse, csv, json, os, resource, time

PROMPT = "<|im_start|>user\nDescribe this restaurant in one sentence: {prompt}<|im_end|>\n<|im_start|>assistant\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/e2e/devset.csv")
    ap.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    path = os.path.expanduser(a.model)
    kw = dict(gguf_file=os.path.basename(path)) if path.endswith(".gguf") else {}
    root = os.path.dirname(path) if path.endswith(".gguf") else path
    tok = AutoTokenizer.from_pretrained(root, **kw)
    model = AutoModelForCausalLM.from_pretrained(root, torch_dtype=torch.float32, **kw)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    eos = tok.eos_token_id
    examples = []
    with open(a.data, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            p = tok(PROMPT.format(prompt=row["mr"]), add_special_tokens=False).input_ids
            c = tok(row["ref"], add_special_tokens=False).input_ids + [eos]
            ids = (p + c)[: a.max_length]
            labels = ([-100] * len(p) + c)[: a.max_length]
            if any(l != -100 for l in labels[1:]):
                examples.append((ids, labels))
            if a.limit and len(examples) >= a.limit:
                break
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    tokens = padded = 0
    t0 = time.perf_counter()
    for i in range(0, len(examples), a.batch):
        chunk = examples[i : i + a.batch]
        L = max(len(x) for x, _ in chunk)
        ids = torch.tensor([x + [pad] * (L - len(x)) for x, _ in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (L - len(y)) for _, y in chunk])
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        padded += ids.numel()
    secs = time.perf_counter() - t0
    print(json.dumps({
        "bench": "epoch", "impl": f"pytorch {torch.__version__} + peft", "examples": len(examples),
        "batch": a.batch, "tokens": tokens, "padded_tokens": padded, "seconds": secs,
        "tokens_per_s": tokens / secs, "last_loss": out.loss.item(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
