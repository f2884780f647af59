#!/usr/bin/env python3
"""Golden values of the PEFT methods beside LoRA on the tiny random Llama, GPT-2 and T5 fixtures,
computed by Python PEFT itself: for each (family, method) an adapter folder written by PEFT's
`save_pretrained` (non-trivial values: random (IA)³ vectors, perturbed norms, random biases,
random DoRA factors and magnitudes) and `golden.safetensors` with the logits and loss of the
family's golden batch, every trainable tensor's gradient of the mean loss, and the tensors
after 3 steps of `torch.optim.AdamW(lr=1e-2, weight_decay=0.01)`.

    python3 scripts/make_fixtures_methods.py      # writes tests/fixtures/methods/<family>-<method>/
    python3 scripts/make_fixtures_methods.py --check-ours DIR FAMILY
        load DIR (an adapter folder written by lowrank, with DIR/logits.safetensors) onto the
        family's fixture model with PEFT and compare the logits (exit 1 above 1e-4).

Needs the versions in scripts/requirements-fixtures.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from peft import BeftConfig, IA3Config, LNTuningConfig, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "methods"

FAMILIES = {
    "qwen2": (FIX / "tiny-llama" / "hf-qwen2", FIX / "tiny-llama" / "golden.safetensors", AutoModelForCausalLM, "CAUSAL_LM"),
    "llama": (FIX / "tiny-llama" / "hf", FIX / "tiny-llama" / "golden.safetensors", AutoModelForCausalLM, "CAUSAL_LM"),
    "gpt2": (FIX / "tiny-gpt2" / "hf", FIX / "tiny-gpt2" / "golden.safetensors", AutoModelForCausalLM, "CAUSAL_LM"),
    "t5": (FIX / "tiny-t5" / "v1_1" / "hf", FIX / "tiny-t5" / "v1_1" / "golden.safetensors", AutoModelForSeq2SeqLM, "SEQ_2_SEQ_LM"),
}

# (family, method) -> PEFT config. Defaults of the family where PEFT has them.
DORA_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "t5": ["q", "v"]}


def peft_config(family: str, method: str, task: str):
    if method == "ia3":
        return IA3Config(task_type=task)
    if method == "ln_tuning":
        return LNTuningConfig(task_type=task)
    if method == "bitfit":
        return BeftConfig(task_type=task)
    if method == "lora-bias-all":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], bias="all", fan_in_fan_out=True, task_type=task)
    if method == "lora-bias-lora_only":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias="lora_only", task_type=task)
    if method == "lora-modules_to_save":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["down_proj", "post_attention_layernorm"], task_type=task)
    if method in ("pissa", "olora"):
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task, init_lora_weights=method)
    if method == "loraplus":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task)
    if method == "dora":
        return LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=DORA_TARGETS[family], task_type=task,
                          fan_in_fan_out=(family == "gpt2"))
    raise ValueError(method)


# BEFT takes nn.Linear only: GPT-2's Conv1D layers cannot take it.
CASES = [(f, m) for f in ["llama", "gpt2", "t5"] for m in ["ia3", "ln_tuning", "bitfit", "dora"] if not (f == "gpt2" and m == "bitfit")]
CASES += [("gpt2", "lora-bias-all"), ("qwen2", "lora-bias-lora_only"), ("llama", "lora-modules_to_save")]
CASES.append(("llama", "loraplus"))  # LoRA with PEFT's LoRA+ optimizer (B's learning rate 16x A's)
# LoRA initialised from the base weight (which it changes): compared after 3 AdamW steps through
# the plain LoRA PEFT converts them to (their factors are unique only up to signs).
MUTATING = ["pissa", "olora"]
CASES += [("llama", m) for m in MUTATING]


def perturb(model, method: str, seed: int) -> None:
    """Non-trivial adapter values, so a wrong formula cannot pass as a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g)
            if method == "ia3" or "ln_tuning_layers" in name and name.endswith("weight") or "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.2 * noise)  # around their start (ones, the norm's weight, the rows' norms)
            elif "lora_A" in name:
                pass  # kaiming-uniform already
            elif "modules_to_save" in name or name.endswith("bias") and "lora" in method:
                p.add_(0.1 * noise)  # trained copies and biases move from the base's values
            else:
                p.copy_(0.1 * noise)  # biases, LayerNorm biases, DoRA's B


def forward(model, family: str, batch):
    if family == "t5":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])


def peft_key(name: str) -> str:
    """A parameter name as PEFT writes it in adapter_model.safetensors (adapter name removed)."""
    name = name.replace(".default", "")
    # PEFT writes DoRA's magnitude without the `.weight` of its module.
    name = name.replace(".modules_to_save.", ".")  # a trained copy is saved under the module's own name
    return name.replace("lora_magnitude_vector.weight", "lora_magnitude_vector")


def build(family: str, method: str) -> None:
    base, golden_path, cls, task = FAMILIES[family]
    batch = {k: v for k, v in load_file(str(golden_path)).items() if k in ("input_ids", "attention_mask", "labels")}
    torch.manual_seed(0)
    model = cls.from_pretrained(str(base.relative_to(ROOT)))
    model = get_peft_model(model, peft_config(family, method, task))
    if method in MUTATING:
        return build_mutating(family, method, model, batch)
    perturb(model, method, seed=CASES.index((family, method)) + 1)
    out = OUT / f"{family}-{method}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out / "adapter"))
    # PEFT writes its module sets in hash order: sorted, the file is the same every run.
    cfg_path = out / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("target_modules", "feedforward_modules"):
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    golden = {}
    model.eval()
    with torch.no_grad():
        o = forward(model, family, batch)
    golden["logits"] = o.logits.detach().clone()
    golden["loss"] = o.loss.reshape(1).detach().clone()
    if family in ("llama", "qwen2"):
        # Greedy text with the adapter: 8 tokens after the first 5 of the batch's first row.
        prompt = batch["input_ids"][:1, :5]
        with torch.no_grad():
            model.generation_config.eos_token_id = None
            out_ids = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        golden["greedy.prompt"] = prompt.clone()
        golden["greedy.output"] = out_ids[0, 5:].clone()
    model.train()
    params = {peft_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    if method == "loraplus":
        from peft.optimizers import create_loraplus_optimizer
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-2, loraplus_lr_ratio=16.0, loraplus_weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.AdamW(list(params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = forward(model, family, batch).loss
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            for k, p in params.items():
                golden[f"grad.{k}"] = p.grad.detach().clone()
        opt.step()
    for k, p in params.items():
        golden[f"step3.{k}"] = p.detach().clone()
    golden["step_losses"] = torch.tensor(losses, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in golden.items()}, str(out / "golden.safetensors"))
    n = sum(p.numel() for p in params.values())
    print(f"{family}-{method}: {len(params)} trainable tensors ({n} values), loss {golden['loss'].item():.6f}")


def build_mutating(family: str, method: str, model, batch) -> None:
    """PiSSA/OLoRA: the initial model saved, 3 AdamW steps, then the adapter saved converted to
    plain LoRA (rank 2r); golden: the logits after the steps and each module's ΔW = s'·B'·A'."""
    out = OUT / f"{family}-{method}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    init_dir = out / "initial"
    model.save_pretrained(str(init_dir))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = forward(model, family, batch).loss
        loss.backward()
        losses.append(loss.item())
        opt.step()
    model.eval()
    golden = {"step_losses": torch.tensor(losses, dtype=torch.float32)}
    with torch.no_grad():
        golden["logits3"] = forward(model, family, batch).logits.detach().clone()
    model.save_pretrained(str(out / "adapter"), path_initial_model_for_weight_conversion=str(init_dir))
    shutil.rmtree(init_dir)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    (out / "adapter" / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    t = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    for k in t:
        if k.endswith("lora_A.weight"):
            path = k[len("base_model.model."):-len(".lora_A.weight")]
            golden[f"delta.{path}"] = scale * t[k.replace("lora_A", "lora_B")] @ t[k]
    save_file({k: v.contiguous() for k, v in golden.items()}, str(out / "golden.safetensors"))
    print(f"{family}-{method}: converted to LoRA r={cfg['r']}, losses {[round(x, 6) for x in losses]}")


def check_ours(d: Path, family: str) -> int:
    base, golden_path, cls, _ = FAMILIES[family]
    batch = {k: v for k, v in load_file(str(golden_path)).items() if k in ("input_ids", "attention_mask", "labels")}
    model = PeftModel.from_pretrained(cls.from_pretrained(str(base)), str(d)).eval()
    with torch.no_grad():
        logits = forward(model, family, batch).logits
    ours = load_file(str(d / "logits.safetensors"))["logits"]
    mask = batch["attention_mask"].bool() if family != "t5" else torch.ones(logits.shape[:2], dtype=torch.bool)
    diff = (logits - ours).abs()[mask].max().item()
    print(f"{d}: PEFT's logits vs lowrank's: max |diff| = {diff:.3e}")
    return 0 if diff <= 1e-4 else 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-ours", nargs=2, metavar=("DIR", "FAMILY"))
    a = ap.parse_args()
    os.chdir(ROOT)  # the adapters record the base model's path relative to the checkout
    if a.check_ours:
        sys.exit(check_ours(Path(a.check_ours[0]), a.check_ours[1]))
    for family, method in CASES:
        build(family, method)
    versions = {m: __import__(m).__version__ for m in ["torch", "transformers", "peft"]}
    (OUT / "README.md").write_text(
        "# PEFT methods beside LoRA: golden values from Python PEFT\n\n"
        "Written by `python3 scripts/make_fixtures_methods.py` with "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ". One folder per family and method (`llama-ia3`, `t5-dora`, ...): `adapter/` as PEFT's "
        "`save_pretrained` writes it, and `golden.safetensors` with `logits`, `loss` (eval mode), "
        "`grad.<key>` (each trainable tensor's gradient of the mean loss, train mode), `step3.<key>` "
        "(after 3 AdamW steps, lr 1e-2, weight decay 0.01) and `step_losses`, for the family's golden "
        "batch (`../tiny-llama/golden.safetensors`, `../tiny-gpt2/...`, `../tiny-t5/v1_1/...`). "
        "GPT-2 has no bias-tuning case: PEFT's BEFT takes `nn.Linear` layers only.\n"
    )


if __name__ == "__main__":
    main()
