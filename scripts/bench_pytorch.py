#!/usr/bin/env python3
"""The PyTorch + PEFT baseline for `lowrank bench train`: the same LoRA step (random tokens,
labels = inputs, AdamW) on the same model, printed as one JSON line with the same fields.

    python3 scripts/bench_pytorch.py --model ~/.cache/lowrank/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 8 --seq 128 --rank 8 --targets q_proj,v_proj --steps 5 --threads 2

Needs: pip install -r scripts/requirements-fixtures.txt (torch, transformers, peft, gguf).
"""
import argparse, json, os, resource, statistics, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF folder or .gguf file")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", action="store_true", help="time greedy generation (batch 1) instead of training")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--merged", action="store_true", help="with --generate: merge the adapter first")
    ap.add_argument("--gen-batch", type=int, default=1, help="with --generate: prompts decoded together")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="the base model's dtype (LoRA weights stay f32)")
    ap.add_argument("--tf32", action="store_true", help="on the GPU: f32 matrix products in TF32 (torch.backends.cuda.matmul.allow_tf32)")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    path = os.path.expanduser(a.model)
    if path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    # PEFT keeps the LoRA weights in f32 on a bf16 model (autocast_adapter_dtype, its default), as lowrank does.
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"))
    model = model.to(a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    if a.generate:
        return bench_generate(model, a, torch)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq)).to(a.device)
    times, first_loss = [], None
    for i in range(a.steps + 1):
        t = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if first_loss is None:
            first_loss = out.loss.item()
        if i > 0:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps({
        "bench": "train", "impl": f"pytorch {torch.__version__} + peft", "model": a.model,
        "device": a.device, "batch": a.batch, "seq": a.seq, "rank": a.rank, "targets": a.targets, "dtype": a.dtype, "tf32": a.tf32,
        "threads": a.threads, "steps": a.steps,
        "tokens_per_s": a.batch * a.seq / med, "step_ms": med * 1000,
        "step_ms_min": min(times) * 1000, "step_ms_max": max(times) * 1000,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable, "first_loss": first_loss, **gpu_memory(a, torch),
    }))


def gpu_memory(a, torch):
    """PyTorch's own peak GPU figures (tensors, and what its caching allocator held)."""
    if not a.device.startswith("cuda"):
        return {}
    return {"gpu_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "gpu_peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


def bench_generate(model, a, torch):
    import statistics, time
    model.eval()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.constant_(p, 0.01)
    if a.merged:
        model = model.merge_and_unload()
    ids = torch.randint(0, model.config.vocab_size, (a.gen_batch, a.prompt_tokens)).to(a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(a.steps + 1):
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, do_sample=False)
            assert out.shape[1] == a.prompt_tokens + a.new_tokens
            sync()
            if i > 0:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({
        "bench": "generate", "impl": f"pytorch {torch.__version__} + peft", "model": a.model,
        "device": a.device, "dtype": a.dtype, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "batch": a.gen_batch, "adapter": "merged" if a.merged else "unmerged",
        "threads": a.threads, "repeats": a.steps, "tokens_per_s": a.gen_batch * a.new_tokens / med, "seconds": med,
        "seconds_min": min(times), "seconds_max": max(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
