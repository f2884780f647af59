#!/usr/bin/env python3
"""Generate the tiny offline GPT-2 and T5 test fixtures under tests/fixtures/tiny-gpt2/ and
tests/fixtures/tiny-t5/ (companion of scripts/make_fixtures.py, whose helpers it reuses).

Everything is built from configs (no model hub access) and is deterministic: rerunning the
script rewrites byte-identical files for the same package versions
(see scripts/requirements-fixtures.txt).

    python3 scripts/make_fixtures_gpt2_t5.py

Inputs: data/e2e/devset.csv (both tokenizers) and a few hundred lines of the Multi30k
validation split (val.en.gz / val.de.gz, T5 tokenizer and batch), looked up in $MULTI30K_DIR,
data/multi30k/ and ../shared/data/multi30k/ (in that order).

See tests/fixtures/tiny-gpt2/README.md and tests/fixtures/tiny-t5/README.md (written by this
script) for the meaning of every file and key.
"""

from __future__ import annotations

import gzip
import json
import shutil
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the offline / quiet environment variables)
from make_fixtures import (  # noqa: E402
    check,
    e2e_texts,
    info,
    log,
    manual_causal_lm_loss,
    maxdiff,
    peft_key,
    reset_dir,
    write_json,
)

import torch  # noqa: E402

ROOT = mf.ROOT
GPT2_FIX = ROOT / "tests" / "fixtures" / "tiny-gpt2"
T5_FIX = ROOT / "tests" / "fixtures" / "tiny-t5"
T5_VERSIONS = ("v1_0", "v1_1")

# ----- GPT-2
GPT2_SPECIAL = ["<|endoftext|>"]  # id 0 = bos = eos = pad
EOT_ID = 0
GPT2_VOCAB_TARGET = 400
GPT2_EMBD, GPT2_LAYER, GPT2_HEAD, GPT2_CTX = 32, 2, 4, 64
GPT2_INIT_STD = 0.2

# ----- T5
T5_SPECIAL = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 (the T5 convention)
T5_PAD, T5_EOS, T5_UNK = 0, 1, 2
T5_VOCAB_TARGET = 400
T5_D_MODEL, T5_D_KV, T5_HEADS, T5_D_FF, T5_LAYERS = 32, 8, 4, 64, 2
T5_BUCKETS, T5_MAX_DIST = 8, 20
T5_QK_STD, T5_LINEAR_STD, T5_LM_HEAD_STD, T5_EMBED_STD, T5_RELBIAS_STD = 0.2, 0.6, 0.2, 1.0, 0.5
MULTI30K_LINES = 300  # per language, from the start of val.{en,de}.gz
T5_ENC_LEN, T5_ENC_LEN2, T5_DEC_LEN, T5_DEC_LEN2 = 24, 16, 12, 8

# ----- shared training / generation knobs
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
LABEL_SMOOTHING = 0.1
GPT2_NEW_TOKENS, T5_NEW_TOKENS = 12, 10
BEAM = dict(num_beams=3, length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=True)
BEAM_NR = dict(num_beams=3, length_penalty=0.9, no_repeat_ngram_size=2, early_stopping=True)


# =========================================================================== shared helpers


def multi30k_dir() -> Path:
    cands = [os.environ.get("MULTI30K_DIR"), ROOT / "data" / "multi30k", ROOT.parent / "shared" / "data" / "multi30k"]
    for c in cands:
        if c and (Path(c) / "val.en.gz").exists() and (Path(c) / "val.de.gz").exists():
            return Path(c)
    raise SystemExit(f"multi30k val.en.gz / val.de.gz not found in any of {[str(c) for c in cands if c]}")


def multi30k_lines(lang: str, n: int = MULTI30K_LINES) -> list[str]:
    with gzip.open(multi30k_dir() / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [x for x in lines if x][:n]


def finalize_adapter_dir(out_dir: Path, rel_base: str) -> None:
    """Deterministic, machine-independent adapter_config.json; no PEFT model card."""
    readme = out_dir / "README.md"
    if readme.exists():
        readme.unlink()
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = rel_base
    write_json(cfg_path, cfg)


def make_adapter(model_cls, base_dir: Path, out_dir: Path, rel_base: str, lora_kwargs: dict,
                 task_type: str, seed: int) -> None:
    """Like make_fixtures.make_adapter, for any model class: lora_A = PEFT's seeded kaiming init,
    lora_B ~ N(0, 0.1) so that the adapter is not a no-op and grad(A) != 0."""
    from peft import LoraConfig, get_peft_model

    base = mf.load_hf(model_cls, base_dir)
    torch.manual_seed(seed)
    pm = get_peft_model(base, LoraConfig(lora_dropout=0.0, task_type=task_type, **lora_kwargs))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    reset_dir(out_dir)
    pm.save_pretrained(str(out_dir), safe_serialization=True)
    finalize_adapter_dir(out_dir, rel_base)


def load_peft(model_cls, base_dir: Path, adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel

    base = mf.load_hf(model_cls, base_dir)
    pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    pm.eval()
    return pm


def hand_merged_model(model_cls, base_dir: Path, adapter_dir: Path):
    """Plain HF model with W += scale * B @ A merged by hand (transposed for Conv1D: GPT-2 stores
    its weights as (in, out) and PEFT then uses fan_in_fan_out=True)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    ad = load_file(str(adapter_dir / "adapter_model.safetensors"))
    model = mf.load_hf(model_cls, base_dir)
    sd = model.state_dict()
    n = 0
    with torch.no_grad():
        for k, a in ad.items():
            if ".lora_A." not in k:
                continue
            b = ad[k.replace(".lora_A.", ".lora_B.")]
            target = k.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            delta = scale * (b @ a)  # (out, in)
            if cfg["fan_in_fan_out"]:
                delta = delta.T  # Conv1D weight is (in, out)
            assert sd[target].shape == delta.shape, (target, sd[target].shape, delta.shape)
            sd[target] += delta
            n += 1
    assert n > 0
    return model


def label_smoothed_loss(logits, labels, shift: bool) -> torch.Tensor:
    """mean over non-ignored targets of torch's cross_entropy(label_smoothing=0.1)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    lg = logits.reshape(-1, logits.shape[-1]).double()
    lb = labels.reshape(-1)
    keep = lb != -100
    return torch.nn.functional.cross_entropy(lg[keep], lb[keep], label_smoothing=LABEL_SMOOTHING)


def hf_label_smoother(logits, labels, shift: bool) -> torch.Tensor:
    from transformers.trainer_pt_utils import LabelSmoother

    return LabelSmoother(epsilon=LABEL_SMOOTHING)({"logits": logits.double()}, labels, shift_labels=shift)


def train_three_steps(pm, fwd: dict, adapter_dir: Path, golden: dict) -> None:
    """grad.<key> after one backward, step3.<key> after 3 AdamW steps, step_losses."""
    from safetensors.torch import load_file

    adapter_keys = set(load_file(str(adapter_dir / "adapter_model.safetensors")))
    pm.train()
    params = {peft_key(n): p for n, p in pm.named_parameters() if p.requires_grad}
    assert set(params) == adapter_keys, (sorted(params), sorted(adapter_keys))
    opt = torch.optim.AdamW(list(params.values()), **ADAMW)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = pm(**fwd).loss
        losses.append(loss.item())
        loss.backward()
        if step == 0:
            check("train-mode loss == peft.loss", abs(loss.item() - golden["peft.loss"].item()), 1e-6)
            for k in sorted(params):
                golden[f"grad.{k}"] = params[k].grad.detach().clone()
            gmin = min(params[k].grad.abs().max().item() for k in params)
            assert gmin > 0, "some LoRA tensor has an all-zero gradient"
        opt.step()
    for k in sorted(params):
        golden[f"step3.{k}"] = params[k].detach().clone()
    golden["step_losses"] = torch.tensor(losses, dtype=torch.float32)
    log(f"  step_losses = {losses}")


def finish_golden(golden: dict) -> dict:
    return {k: (v.detach().to(torch.int64) if v.dtype in (torch.int64, torch.int32, torch.bool) else v.detach().float()).contiguous().clone()
            for k, v in golden.items()}


def chmod_and_list(fix: Path) -> int:
    total = 0
    for p in sorted(fix.rglob("*")):
        if p.is_file():
            p.chmod(0o644)
            total += p.stat().st_size
            log(f"  {p.stat().st_size:>9}  {p.relative_to(fix)}")
    log(f"  {total:>9}  TOTAL {fix.relative_to(ROOT)}")
    return total


def versions() -> dict:
    import peft
    import safetensors
    import tokenizers
    import transformers

    return dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                tokenizers=tokenizers.__version__, safetensors=safetensors.__version__,
                python=sys.version.split()[0])


def shapes_table(golden: dict) -> str:
    return "\n".join(f"| `{k}` | {str(v.dtype).replace('torch.', '')} | {tuple(v.shape)} |" for k, v in golden.items())


# =========================================================================== GPT-2


def train_gpt2_tokenizer():
    """Byte-level BPE like make_fixtures.train_tokenizer, with the single GPT-2 special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=GPT2_VOCAB_TARGET,
        special_tokens=GPT2_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(e2e_texts(), trainer)
    assert tok.token_to_id("<|endoftext|>") == EOT_ID
    return tok


def save_gpt2_tokenizer(tok, out_dir: Path) -> int:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", model_max_length=GPT2_CTX,
    )
    fast.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=False, add_eos_token=False,
               clean_up_tokenization_spaces=False, unk_token=None)
    write_json(cfg_path, cfg)
    re = AutoTokenizer.from_pretrained(str(out_dir))
    sample = "name[Alimentum], area[city centre] 5 out of 5, £20-25."
    assert re(sample).input_ids == tok.encode(sample).ids  # nothing added
    assert (re.bos_token_id, re.eos_token_id, re.pad_token_id) == (EOT_ID, EOT_ID, EOT_ID)
    assert re.decode(tok.encode(sample).ids) == sample
    return tok.get_vocab_size()


def gpt2_config(vocab_size: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=GPT2_CTX, n_embd=GPT2_EMBD, n_layer=GPT2_LAYER, n_head=GPT2_HEAD,
        n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, initializer_range=GPT2_INIT_STD, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, tie_word_embeddings=True,
        bos_token_id=EOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID,
    )


def build_gpt2(config, seed: int):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).float()  # Conv1D/Embedding ~ N(0, 0.2), c_proj ~ N(0, 0.2/sqrt(2*n_layer))
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):  # LayerNorm and Conv1D biases
                p.copy_(GPT2_INIT_STD * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def save_pretrained(model, out_dir: Path, generation: dict, config_overrides: dict) -> None:
    """save_pretrained with a fixed generation config, the legacy `torch_dtype` key and overrides."""
    from transformers import GenerationConfig

    model.config._name_or_path = out_dir.name
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "float32"
    cfg.setdefault("dtype", "float32")
    cfg.update(config_overrides)
    write_json(cfg_path, cfg)


def save_gpt2(model, out_dir: Path) -> None:
    save_pretrained(model, out_dir, dict(bos_token_id=EOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID), {})


def gpt2_manual_forward(model, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
    """GPT-2 written out by hand from the state dict (eager attention, HF's additive finfo.min mask)."""
    sd = model.state_dict()
    cfg = model.config
    B, T = input_ids.shape
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    if position_ids is None:
        position_ids = torch.arange(T)[None].expand(B, T)
    x = sd["transformer.wte.weight"][input_ids] + sd["transformer.wpe.weight"][position_ids]
    neg = torch.finfo(torch.float32).min
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & attention_mask.bool()[:, None, :]
    mask = torch.where(allowed, 0.0, neg)[:, None]  # (B, 1, T, T)

    def ln(h, p):
        return torch.nn.functional.layer_norm(h, (cfg.n_embd,), sd[p + ".weight"], sd[p + ".bias"], cfg.layer_norm_epsilon)

    def conv1d(h, p):  # weight (in, out)
        return h @ sd[p + ".weight"] + sd[p + ".bias"]

    def gelu_new(h):
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))

    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        q, k, v = conv1d(ln(x, p + ".ln_1"), p + ".attn.c_attn").split(cfg.n_embd, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5 + mask, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + conv1d(a, p + ".attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + ".ln_2"), p + ".mlp.c_fc")), p + ".mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ sd["transformer.wte.weight"].T


def build_gpt2_fixtures() -> dict:
    from safetensors.torch import load_file, save_file
    from transformers import GPT2LMHeadModel

    fix, hf_dir = GPT2_FIX, GPT2_FIX / "hf"
    ad_dir, ad_all_dir = fix / "peft-adapter", fix / "peft-adapter-all"
    rel = "tests/fixtures/tiny-gpt2/hf"
    reset_keeping_ours(fix)

    log("== tiny-gpt2: tokenizer + hf/")
    tok = train_gpt2_tokenizer()
    hf_dir.mkdir(parents=True)
    vocab_size = save_gpt2_tokenizer(tok, hf_dir)
    log(f"  vocab_size = {vocab_size}, merges = {vocab_size - 256 - len(GPT2_SPECIAL)}")
    model = build_gpt2(gpt2_config(vocab_size), seed=100)
    input_ids, attention_mask, labels = mf.golden_batch(tok)  # pad id 0 = <|endoftext|>
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    save_gpt2(model, hf_dir)
    sd_file = load_file(str(hf_dir / "model.safetensors"))
    assert "lm_head.weight" not in sd_file and "transformer.wte.weight" in sd_file, sorted(sd_file)
    model = mf.load_hf(GPT2LMHeadModel, hf_dir)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        base_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        sdpa = GPT2LMHeadModel.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
        sdpa_logits = sdpa(input_ids=input_ids, attention_mask=attention_mask).logits
        manual = gpt2_manual_forward(model, input_ids, attention_mask)
    valid = attention_mask.bool()
    check("gpt2 logits before save (sdpa) vs reloaded (eager), valid positions", maxdiff(before[valid], base_logits[valid]), 1e-5)
    check("gpt2 eager vs sdpa logits (valid positions)", maxdiff(base_logits[valid], sdpa_logits[valid]), 1e-5)
    check("gpt2 HF logits vs hand-written forward (Conv1D x@W+b, gelu_new, tied wte)", maxdiff(base_logits, manual), 1e-4)
    log(f"  base logits std {base_logits.std():.3f}")

    log("== tiny-gpt2: PEFT adapters")
    make_adapter(GPT2LMHeadModel, hf_dir, ad_dir, rel,
                 dict(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True), "CAUSAL_LM", seed=110)
    make_adapter(GPT2LMHeadModel, hf_dir, ad_all_dir, rel,
                 dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
                 "CAUSAL_LM", seed=120)
    ad = load_file(str(ad_dir / "adapter_model.safetensors"))
    a0, b0 = ad["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"], ad["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert a0.shape == (4, GPT2_EMBD) and b0.shape == (3 * GPT2_EMBD, 4), (a0.shape, b0.shape)
    ad_all = load_file(str(ad_all_dir / "adapter_model.safetensors"))
    assert len(ad_all) == 2 * 4 * GPT2_LAYER, sorted(ad_all)  # c_attn, attn.c_proj, c_fc, mlp.c_proj

    log("== tiny-gpt2: golden.safetensors")
    golden = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "base.logits": base_logits}
    with torch.no_grad():
        base_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    check("base: HF loss vs manual shifted CE", maxdiff(base_loss.reshape(1), manual_causal_lm_loss(base_logits, labels).reshape(1)), 1e-6)
    golden["base.loss"] = base_loss.reshape(1)
    for prefix, adir in [("peft", ad_dir), ("peft_all", ad_all_dir)]:
        pm = load_peft(GPT2LMHeadModel, hf_dir, adir)
        with torch.no_grad():
            out = pm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            merged = hand_merged_model(GPT2LMHeadModel, hf_dir, adir)
            man = merged(input_ids=input_ids, attention_mask=attention_mask).logits
            man2 = gpt2_manual_forward(merged, input_ids, attention_mask)
        check(f"{prefix}: PEFT logits vs base with Conv1D W += scale*(B@A).T", maxdiff(out.logits, man), 1e-4)
        check(f"{prefix}: PEFT logits vs hand-written forward on merged weights", maxdiff(out.logits, man2), 1e-4)
        info(f"{prefix}: logits vs base.logits", maxdiff(out.logits, base_logits))
        golden[f"{prefix}.logits"] = out.logits
        if prefix == "peft":
            check("peft: HF loss vs manual shifted CE", maxdiff(out.loss.reshape(1), manual_causal_lm_loss(out.logits, labels).reshape(1)), 1e-6)
            golden["peft.loss"] = out.loss.reshape(1)
            ls = label_smoothed_loss(out.logits, labels, shift=True)
            check("peft.loss_ls: torch CE(label_smoothing) vs transformers LabelSmoother", maxdiff(ls.reshape(1), hf_label_smoother(out.logits, labels, True).reshape(1)), 1e-6)
            golden["peft.loss_ls"] = ls.reshape(1)
            log(f"  peft.loss {out.loss.item():.6f}  peft.loss_ls {ls.item():.6f}")

    pm = load_peft(GPT2LMHeadModel, hf_dir, ad_dir, trainable=True)
    train_three_steps(pm, dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels), ad_dir, golden)

    # generation ----------------------------------------------------------------------
    pm = load_peft(GPT2LMHeadModel, hf_dir, ad_dir)
    n_new = GPT2_NEW_TOKENS
    ids = dict(pad_token_id=EOT_ID, eos_token_id=EOT_ID, bos_token_id=EOT_ID)

    def gen(m, prompt, mask=None, **kw):
        with torch.no_grad():
            return m.generate(input_ids=prompt.clone(), attention_mask=torch.ones_like(prompt) if mask is None else mask,
                              max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, **ids, **kw)

    candidates = [input_ids[:1, :5]] + [torch.tensor([tok.encode(t).ids[:5]]) for t in e2e_texts()[1:200:2]]
    prompt, greedy, beam, beam_nr = choose_prompt("gpt2", candidates, lambda p, kw: gen(pm, p, **kw), 5)
    base_greedy = gen(model, prompt, num_beams=1)
    with torch.no_grad():  # greedy by hand: argmax of a full forward, EOS masked (min_new_tokens)
        seq = prompt.clone()
        for _ in range(n_new):
            lg = pm(input_ids=seq).logits[:, -1]
            lg[:, EOT_ID] = -float("inf")
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    assert greedy.shape == beam.shape == beam_nr.shape == (1, 5 + n_new), (greedy.shape, beam.shape, beam_nr.shape)
    check("gpt2 greedy generate vs manual argmax loop", float((seq != greedy).sum()), 0)
    check("gpt2 beam_nr has no repeated bigram in the generated part", float(has_repeated_bigram(beam_nr[0, 5:].tolist())), 0)
    info("gpt2 beam_nr differs from beam (no_repeat_ngram_size mattered)", float(not torch.equal(beam_nr, beam)))
    golden["greedy.prompt_ids"] = prompt
    golden["greedy.output_ids"] = greedy
    golden["beam.output_ids"] = beam
    golden["beam_nr.output_ids"] = beam_nr
    golden["greedy.base_output_ids"] = base_greedy
    log(f"  prompt {prompt.tolist()}\n  greedy {greedy.tolist()}\n  beam   {beam.tolist()}\n"
        f"  beam_nr {beam_nr.tolist()}\n  base greedy {base_greedy.tolist()}")

    # left padding: generate() derives position_ids = cumsum(attention_mask) - 1 (0 on pads) --------
    short = torch.tensor([tok.encode("Alimentum is").ids[:3]])
    assert short.shape == (1, 3)
    lp_ids = torch.cat([prompt, torch.cat([torch.full((1, 2), EOT_ID), short], 1)], 0)
    lp_mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    lp_out = gen(pm, lp_ids, lp_mask, num_beams=1)
    short_out = gen(pm, short, num_beams=1)
    check("left-padded batch greedy row 0 == unpadded greedy", float((lp_out[0] != greedy[0]).sum()), 0)
    check("left-padded batch greedy row 1 == unpadded greedy (pads stripped)", float((lp_out[1, 2:] != short_out[0]).sum()), 0)
    pos = (lp_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        lg_pos = pm(input_ids=lp_ids, attention_mask=lp_mask, position_ids=pos).logits[1, 2:]
        lg_nopos = pm(input_ids=lp_ids, attention_mask=lp_mask).logits[1, 2:]
        lg_ref = pm(input_ids=short).logits[0]
    check("left-padded forward with position_ids=cumsum(mask)-1 == unpadded forward", maxdiff(lg_pos, lg_ref), 1e-5)
    info("left-padded forward WITHOUT position_ids (arange) vs unpadded forward", maxdiff(lg_nopos, lg_ref))
    golden["greedy_leftpad.input_ids"] = lp_ids
    golden["greedy_leftpad.attention_mask"] = lp_mask
    golden["greedy_leftpad.output_ids"] = lp_out

    golden = finish_golden(golden)
    save_file(golden, str(fix / "golden.safetensors"))
    write_gpt2_readme(vocab_size, golden, sorted(ad), sorted(ad_all))
    return golden


def choose_prompt(what: str, candidates, gen, skip: int):
    """First candidate prompt, in order, for which beam != greedy, beam_nr != beam and the greedy and beam
    continuations are not degenerate (>= half of the new tokens distinct); failing that the first with
    beam != greedy and beam_nr != beam; failing that the first with beam != greedy.
    gen(prompt, kwargs) -> output ids; the first `skip` output positions are not new tokens."""
    tiers = [None, None, None]
    seen = set()
    for prompt in candidates:
        if tuple(prompt[0].tolist()) in seen:  # devset meaning representations repeat
            continue
        seen.add(tuple(prompt[0].tolist()))
        greedy, beam = gen(prompt, dict(num_beams=1)), gen(prompt, BEAM)
        if torch.equal(greedy, beam):
            continue
        beam_nr = gen(prompt, BEAM_NR)
        found = (prompt, greedy, beam, beam_nr)
        tiers[2] = tiers[2] or found
        if torch.equal(beam_nr, beam):
            continue
        tiers[1] = tiers[1] or found
        n_new = greedy.shape[1] - skip
        if min(len(set(greedy[0, skip:].tolist())), len(set(beam[0, skip:].tolist()))) >= n_new // 2:
            tiers[0] = found
            break
    for tier, found in enumerate(tiers):
        if found is not None:
            log(f"  generation prompt: tier {tier} (0 = all criteria met)")
            return found
    raise SystemExit(f"{what}: no prompt where beam search differs from greedy")


def has_repeated_bigram(seq: list[int]) -> bool:
    grams = [tuple(seq[i:i + 2]) for i in range(len(seq) - 1)]
    return len(grams) != len(set(grams))


def write_gpt2_readme(vocab_size: int, golden: dict, ad_keys: list[str], ad_all_keys: list[str]) -> None:
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    text = f"""# tiny-gpt2 test fixtures

Generated by `python3 scripts/make_fixtures_gpt2_t5.py` (deterministic, seeded, offline; do not edit by hand).
Produced with: {vers}.
Pinned in `scripts/requirements-fixtures.txt`.

## Model

* `hf/`: random `GPT2LMHeadModel`, float32. n_embd {GPT2_EMBD}, n_layer {GPT2_LAYER}, n_head {GPT2_HEAD}
  (head_dim {GPT2_EMBD // GPT2_HEAD}), n_inner null (= 4*n_embd = {4 * GPT2_EMBD}), n_positions {GPT2_CTX},
  activation_function `gelu_new` (tanh approximation), layer_norm_epsilon 1e-5, resid/embd/attn_pdrop 0,
  scale_attn_weights true (scores * head_dim^-0.5), scale_attn_by_inverse_layer_idx false,
  reorder_and_upcast_attn false, tie_word_embeddings true (`model.safetensors` has
  `transformer.wte.weight` and no `lm_head.weight`; there are no `attn.bias` / `attn.masked_bias`
  buffers either), vocab_size {vocab_size}. Weights: HF init with initializer_range 0.2 (`torch.manual_seed(100)`;
  `c_proj` weights N(0, 0.2/sqrt(2*n_layer))), then LayerNorm weights 1 + N(0, 0.1) and every bias
  (LayerNorm and Conv1D) N(0, 0.2). Conv1D weights are stored as (in, out): `y = x @ W + b`;
  `attn.c_attn` is the fused (n_embd, 3*n_embd) q|k|v projection.
* `hf/tokenizer.json`: byte-level BPE trained on `data/e2e/devset.csv` (mr + ref) exactly like
  tiny-llama's but with one special token: `<|endoftext|>` = 0, which is bos = eos = pad
  (config `bos_token_id` = `eos_token_id` = `pad_token_id` = 0; no dedicated pad token, the GPT-2
  convention `pad_token = eos_token`). ByteLevel pre-tokenizer (add_prefix_space=false), ByteLevel
  decoder, no-op post-processor (nothing is added automatically).
* `peft-adapter/`: PEFT LoraConfig(r=4, lora_alpha=8, target_modules=[c_attn], fan_in_fan_out=true,
  lora_dropout=0, task_type=CAUSAL_LM); lora_A = PEFT's kaiming init (seeded), lora_B ~ N(0, 0.1).
  scaling = alpha/r = 2. Shapes: lora_A (4, {GPT2_EMBD}) = (r, in), lora_B ({3 * GPT2_EMBD}, 4) = (out, r), as for
  nn.Linear; PEFT's forward is `conv1d(x) + scale * (x @ A.T) @ B.T` and its merge is
  `W(in,out) += scale * (B @ A).T` (fan_in_fan_out only transposes the delta).
  Keys: {", ".join(f"`{k}`" for k in ad_keys)}.
* `peft-adapter-all/`: LoraConfig(r=2, lora_alpha=4, target_modules=[c_attn, c_fc, c_proj],
  fan_in_fan_out=true): `c_proj` matches both `attn.c_proj` and `mlp.c_proj` (16 tensors).
  In both `adapter_config.json` files `target_modules` is sorted and `base_model_name_or_path` is
  `tests/fixtures/tiny-gpt2/hf`.

## golden.safetensors

Batch: `make_fixtures.golden_batch` with this tokenizer: 2 rows x 9 tokens, row 2 right-padded with 2
pad tokens (id 0). Eager attention, eval mode. Compare logits only where `attention_mask == 1`.

| key | dtype | shape |
|---|---|---|
{shapes_table(golden)}

* `labels`: `input_ids` with the first 3 positions and the padded positions set to -100.
* `*.loss`: HF causal-LM loss = mean CE of `logits[:, :-1]` vs `labels[:, 1:]` over targets != -100.
* `peft.loss_ls`: same logits/targets, `torch.nn.functional.cross_entropy(..., label_smoothing=0.1)`
  (mean over the 7 targets) = (1-0.1)*nll + 0.1*mean_over_vocab(-log p); equal to transformers'
  `LabelSmoother(epsilon=0.1)` with shift_labels=True.
* `base.*`: plain `hf/`; `peft.*`: `PeftModel.from_pretrained(hf, peft-adapter)`;
  `peft_all.logits`: with `peft-adapter-all`.
* `grad.<key>`: gradient of `peft.loss` w.r.t. each tensor of `peft-adapter/adapter_model.safetensors`
  (key exactly as there). `step3.<key>`: after 3 steps of `torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999),
  eps=1e-8, weight_decay=0.01)` on the same batch (each step: zero_grad, forward, backward, step);
  `step_losses`: loss before each step (`step_losses[0] == peft.loss`).
* `greedy.prompt_ids`: the first 5-token prompt (row 1 of `input_ids`[:5], then 5-token prefixes of devset
  texts) for which beam search differs from greedy and `beam_nr` differs from `beam`.
  `greedy.output_ids`: prompt + 12 tokens from the PEFT model's `generate(do_sample=False,
  max_new_tokens=12, min_new_tokens=12)` (EOS id 0 is masked to -inf for all 12 steps).
  `beam.output_ids`: `num_beams=3, length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=True`.
  `beam_nr.output_ids`: `num_beams=3, no_repeat_ngram_size=2, length_penalty=0.9, early_stopping=True`
  (as EOS is blocked, every hypothesis has the same length and length_penalty cannot change the ranking).
  `greedy.base_output_ids`: greedy of the plain `hf/` model.
* `greedy_leftpad.*`: a left-padded batch [prompt; 2 pads + 3-token prompt] and its PEFT greedy output
  (2, 5+12). transformers' `generate` builds `position_ids = cumsum(attention_mask) - 1` (0 on pads) and
  continues them by +1 per new token, so every row equals its unpadded greedy output (checked).
  A plain forward without `position_ids` uses `arange(T)` regardless of the mask.
"""
    (GPT2_FIX / "README.md").write_text(text, encoding="utf-8")


# =========================================================================== T5


def t5_texts() -> list[str]:
    return e2e_texts() + multi30k_lines("en") + multi30k_lines("de")


def train_t5_tokenizer():
    """BPE over a Metaspace pre-tokenizer (the SentencePiece-like layout of real T5 tokenizer.json files,
    but BPE instead of Unigram: tokenizers' UnigramTrainer is not deterministic from run to run), no
    normalizer, no byte fallback (unseen characters -> <unk>), no post-processor: </s> is appended
    explicitly by the caller."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=T5_VOCAB_TARGET, special_tokens=T5_SPECIAL, show_progress=False)
    tok.train_from_iterator(t5_texts(), trainer)
    for i, t in enumerate(T5_SPECIAL):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_t5_tokenizer(tok, out_dir: Path) -> int:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=False, add_eos_token=False,
               clean_up_tokenization_spaces=False)
    write_json(cfg_path, cfg)
    re = AutoTokenizer.from_pretrained(str(out_dir))
    for sample in ["name[Alimentum], area[city centre] 5 out of 5, £20-25.",
                   "Ein Mann schläft in einem grünen Raum auf einem Sofa."]:
        ids = tok.encode(sample).ids
        assert re(sample).input_ids == ids  # no </s> appended
        assert T5_UNK not in ids, sample
        assert re.decode(ids) == sample, (re.decode(ids), sample)
    assert (re.pad_token_id, re.eos_token_id, re.unk_token_id) == (T5_PAD, T5_EOS, T5_UNK)
    return tok.get_vocab_size()


def t5_config(vocab_size: int, version: str):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size, d_model=T5_D_MODEL, d_kv=T5_D_KV, d_ff=T5_D_FF, num_layers=T5_LAYERS,
        num_decoder_layers=T5_LAYERS, num_heads=T5_HEADS, relative_attention_num_buckets=T5_BUCKETS,
        relative_attention_max_distance=T5_MAX_DIST, dropout_rate=0.0, layer_norm_epsilon=1e-6,
        initializer_factor=1.0, feed_forward_proj="relu" if version == "v1_0" else "gated-gelu",
        tie_word_embeddings=(version == "v1_0"), pad_token_id=T5_PAD, eos_token_id=T5_EOS,
        decoder_start_token_id=T5_PAD, use_cache=True,
    )


def build_t5(config, version: str, seed: int):
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).float()
    # transformers 5 T5Config always sets tie_word_embeddings=True (tie_word_embeddings=False only turns
    # off the d_model**-0.5 output scaling, config.scale_decoder_outputs). Give v1.1 its own lm_head like
    # the real google/t5-v1_1 checkpoints.
    if version == "v1_1":
        assert not config.scale_decoder_outputs
        model.lm_head.weight = torch.nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        model.config.tie_word_embeddings = False
    else:
        assert config.scale_decoder_outputs
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(T5_RELBIAS_STD * torch.randn(p.shape, generator=g))
            elif name == "shared.weight":
                p.copy_(T5_EMBED_STD * torch.randn(p.shape, generator=g))
            elif name.endswith((".q.weight", ".k.weight")):  # unscaled q.k scores: keep them moderate
                p.copy_(T5_QK_STD * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(T5_LM_HEAD_STD * torch.randn(p.shape, generator=g))
            else:  # v o wi wi_0 wi_1 wo: large enough that the tied v1.0 head does not just copy the input token
                p.copy_(T5_LINEAR_STD * torch.randn(p.shape, generator=g))
    model.eval()
    tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    assert tied == (version == "v1_0"), (version, tied)
    return model


def save_t5(model, out_dir: Path, version: str) -> None:
    # legacy meaning (what real T5 configs and v4-style parsers use): tied + scaled for v1.0, untied for v1.1
    legacy = {"tie_word_embeddings": version == "v1_0", "scale_decoder_outputs": version == "v1_0"}
    save_pretrained(model, out_dir, dict(decoder_start_token_id=T5_PAD, eos_token_id=T5_EOS, pad_token_id=T5_PAD), legacy)


def relative_bucket_by_hand(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    ret = 0
    if bidirectional:
        num_buckets //= 2
        if rel > 0:
            ret += num_buckets
        n = abs(rel)
    else:
        n = max(-rel, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def t5_golden_batch(tok):
    def enc(text, n):
        ids = tok.encode(text).ids
        assert len(ids) >= n - 1, (text, len(ids), n)
        return ids[: n - 1] + [T5_EOS]

    e2e = e2e_texts()  # [mr0, ref0, mr1, ref1, ...]
    # first devset pair whose meaning representation is long enough (> max_distance tokens)
    i = next(i for i in range(0, len(e2e), 2) if len(tok.encode(e2e[i]).ids) >= T5_ENC_LEN - 1
             and len(tok.encode(e2e[i + 1]).ids) >= T5_DEC_LEN - 1)
    en, de = multi30k_lines("en"), multi30k_lines("de")
    src = [enc(e2e[i], T5_ENC_LEN), enc("translate English to German: " + en[1], T5_ENC_LEN2)]
    tgt = [enc(e2e[i + 1], T5_DEC_LEN), enc(de[1], T5_DEC_LEN2)]
    s, t = max(map(len, src)), max(map(len, tgt))
    input_ids = torch.tensor([r + [T5_PAD] * (s - len(r)) for r in src], dtype=torch.int64)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (s - len(r)) for r in src], dtype=torch.int64)
    labels = torch.tensor([r + [-100] * (t - len(r)) for r in tgt], dtype=torch.int64)
    decoder_input_ids = torch.full_like(labels, T5_PAD)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[decoder_input_ids == -100] = T5_PAD
    return input_ids, attention_mask, labels, decoder_input_ids, (e2e[i], "translate English to German: " + en[1], e2e[i + 1], de[1])


def build_t5_version(tok, vocab_size: int, version: str, seed: int, batch) -> dict:
    from safetensors.torch import load_file, save_file
    from transformers import T5ForConditionalGeneration

    cls = T5ForConditionalGeneration
    fix = T5_FIX / version
    hf_dir, ad_dir, ad_all_dir = fix / "hf", fix / "peft-adapter", fix / "peft-adapter-all"
    rel = f"tests/fixtures/tiny-t5/{version}/hf"
    reset_keeping_ours(fix)
    log(f"== tiny-t5/{version}: hf/")
    hf_dir.mkdir(parents=True)
    save_t5_tokenizer(tok, hf_dir)
    input_ids, attention_mask, labels, decoder_input_ids, _ = batch
    model = build_t5(t5_config(vocab_size, version), version, seed)
    fwd = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    with torch.no_grad():
        before = model(**fwd).logits
    save_t5(model, hf_dir, version)
    sd_file = load_file(str(hf_dir / "model.safetensors"))
    assert ("lm_head.weight" in sd_file) == (version == "v1_1"), sorted(sd_file)
    log(f"  model.safetensors: {len(sd_file)} tensors; embeddings: {[k for k in sorted(sd_file) if 'embed' in k or k in ('shared.weight', 'lm_head.weight')]}")
    model = mf.load_hf(cls, hf_dir)
    assert model.config.scale_decoder_outputs == (version == "v1_0")
    tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    assert tied == (version == "v1_0"), (version, tied)
    with torch.no_grad():
        out = model(**fwd)
        base_logits = out.logits
        sdpa = cls.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
        sdpa_logits = sdpa(**fwd).logits
        enc_hidden = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        dec_hidden = model.decoder(input_ids=decoder_input_ids, encoder_hidden_states=enc_hidden,
                                   encoder_attention_mask=attention_mask).last_hidden_state
        if version == "v1_0":
            man_logits = (dec_hidden * T5_D_MODEL ** -0.5) @ model.shared.weight.T
        else:
            man_logits = dec_hidden @ model.lm_head.weight.T
    check(f"t5 {version} logits before save vs reloaded from disk", maxdiff(before, base_logits), 1e-5)
    check(f"t5 {version} eager vs sdpa logits", maxdiff(base_logits, sdpa_logits), 1e-4)
    check(f"t5 {version} decoder_input_ids == model._shift_right(labels)", maxdiff(model._shift_right(labels), decoder_input_ids), 0)
    check(f"t5 {version} logits == {'(dec_hidden * d_model**-0.5) @ shared.T' if version == 'v1_0' else 'dec_hidden @ lm_head.T'}",
          maxdiff(base_logits, man_logits), 1e-5)
    if version == "v1_0":
        info("t5 v1_0: logits without the d_model**-0.5 scale vs golden (scale matters)", maxdiff(base_logits, dec_hidden @ model.shared.weight.T))
    check(f"t5 {version} HF loss vs CE(logits, labels, ignore_index=-100) (no shift)",
          maxdiff(out.loss.reshape(1), torch.nn.functional.cross_entropy(base_logits.reshape(-1, vocab_size).double(), labels.reshape(-1), ignore_index=-100).reshape(1)), 5e-6)
    log(f"  base logits std {base_logits.std():.3f}, loss {out.loss.item():.4f} (uniform: {math.log(vocab_size):.4f})")

    log(f"== tiny-t5/{version}: PEFT adapters")
    all_targets = ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    existing = sorted(t for t in all_targets if t in names)
    log(f"  peft-adapter-all target_modules = {existing}")
    make_adapter(cls, hf_dir, ad_dir, rel, dict(r=4, lora_alpha=8, target_modules=["q", "v"]), "SEQ_2_SEQ_LM", seed=seed + 10)
    make_adapter(cls, hf_dir, ad_all_dir, rel, dict(r=2, lora_alpha=4, target_modules=existing), "SEQ_2_SEQ_LM", seed=seed + 20)
    ad = load_file(str(ad_dir / "adapter_model.safetensors"))
    ad_all = load_file(str(ad_all_dir / "adapter_model.safetensors"))
    n_linear_per_layer = {"v1_0": (4 + 2) + (8 + 2), "v1_1": (4 + 3) + (8 + 3)}[version]  # enc + dec
    assert len(ad) == 2 * 2 * (T5_LAYERS * 1 + T5_LAYERS * 2), sorted(ad)  # q,v in enc self, dec self + cross
    assert len(ad_all) == 2 * T5_LAYERS * n_linear_per_layer, (len(ad_all), sorted(ad_all))

    log(f"== tiny-t5/{version}: golden.safetensors")
    golden = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
              "decoder_input_ids": decoder_input_ids, "base.logits": base_logits, "base.loss": out.loss.reshape(1)}
    for prefix, adir in [("peft", ad_dir), ("peft_all", ad_all_dir)]:
        pm = load_peft(cls, hf_dir, adir)
        with torch.no_grad():
            po = pm(**fwd)
            man = hand_merged_model(cls, hf_dir, adir)(**fwd).logits
        check(f"{version} {prefix}: PEFT logits vs base with W += scale*B@A", maxdiff(po.logits, man), 1e-4)
        info(f"{version} {prefix}: logits vs base.logits", maxdiff(po.logits, base_logits))
        golden[f"{prefix}.logits"] = po.logits
        if prefix == "peft":
            ce = torch.nn.functional.cross_entropy(po.logits.reshape(-1, vocab_size).double(), labels.reshape(-1), ignore_index=-100)
            check(f"{version} peft: HF loss vs CE(logits, labels) (no shift)", maxdiff(po.loss.reshape(1), ce.reshape(1)), 5e-6)
            golden["peft.loss"] = po.loss.reshape(1)
            ls = label_smoothed_loss(po.logits, labels, shift=False)
            check(f"{version} peft.loss_ls: torch CE(label_smoothing) vs transformers LabelSmoother",
                  maxdiff(ls.reshape(1), hf_label_smoother(po.logits, labels, False).reshape(1)), 1e-6)
            golden["peft.loss_ls"] = ls.reshape(1)
            log(f"  peft.loss {po.loss.item():.6f}  peft.loss_ls {ls.item():.6f}")

    pm = load_peft(cls, hf_dir, ad_dir, trainable=True)
    train_three_steps(pm, fwd, ad_dir, golden)
    golden["encoder_hidden"] = enc_hidden

    # generation ----------------------------------------------------------------------
    pm = load_peft(cls, hf_dir, ad_dir)
    n_new = T5_NEW_TOKENS
    ids = dict(pad_token_id=T5_PAD, eos_token_id=T5_EOS, decoder_start_token_id=T5_PAD)

    def gen(m, prompt, **kw):
        with torch.no_grad():
            return m.generate(input_ids=prompt.clone(), attention_mask=torch.ones_like(prompt),
                              max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, **ids, **kw)

    rows = [input_ids[i:i + 1, : int(attention_mask[i].sum())] for i in range(2)]
    candidates = rows + [torch.tensor([tok.encode(t).ids[:11] + [T5_EOS]]) for t in e2e_texts()[0:200:2]]
    assert all(p[0, -1].item() == T5_EOS for p in candidates)
    prompt, greedy, beam, beam_nr = choose_prompt(f"t5 {version}", candidates, lambda p, kw: gen(pm, p, **kw), 1)
    base_greedy = gen(model, prompt, num_beams=1)
    with torch.no_grad():  # greedy by hand: full decoder forward each step, EOS masked
        seq = torch.tensor([[T5_PAD]])
        for _ in range(n_new):
            lg = pm(input_ids=prompt, attention_mask=torch.ones_like(prompt), decoder_input_ids=seq).logits[:, -1]
            lg[:, T5_EOS] = -float("inf")
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    assert greedy.shape == beam.shape == beam_nr.shape == (1, 1 + n_new), (greedy.shape, beam.shape)
    assert greedy[0, 0].item() == T5_PAD
    check(f"t5 {version} greedy generate vs manual argmax loop", float((seq != greedy).sum()), 0)
    check(f"t5 {version} beam_nr has no repeated bigram", float(has_repeated_bigram(beam_nr[0].tolist())), 0)
    info(f"t5 {version} beam_nr differs from beam (no_repeat_ngram_size mattered)", float(not torch.equal(beam_nr, beam)))
    golden["greedy.prompt_ids"] = prompt
    golden["greedy.output_ids"] = greedy
    golden["beam.output_ids"] = beam
    golden["beam_nr.output_ids"] = beam_nr
    golden["greedy.base_output_ids"] = base_greedy
    log(f"  prompt {prompt.tolist()}\n  greedy {greedy.tolist()}\n  beam   {beam.tolist()}\n"
        f"  beam_nr {beam_nr.tolist()}\n  base greedy {base_greedy.tolist()}")

    golden = finish_golden(golden)
    save_file(golden, str(fix / "golden.safetensors"))
    return dict(golden=golden, ad_keys=sorted(ad), ad_all_keys=sorted(ad_all), targets_all=existing,
                st_keys=sorted(sd_file))


def reset_keeping_ours(fix: Path) -> None:
    """Empties `fix` except the `ours-*` adapters lowrank writes (crates/train/tests/ours_adapters.rs,
    LOWRANK_WRITE_FIXTURES=1), which scripts/check_ours_gpt2_t5.py checks against PEFT."""
    if not fix.exists():
        fix.mkdir(parents=True)
        return
    for p in fix.iterdir():
        if p.name.startswith("ours-") or (p.is_dir() and any(c.name.startswith("ours-") for c in p.iterdir())):
            if p.is_dir() and not p.name.startswith("ours-"):
                reset_keeping_ours(p)
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def build_t5_fixtures() -> dict:
    from transformers.models.t5.modeling_t5 import T5Attention

    reset_keeping_ours(T5_FIX)
    log("== tiny-t5: tokenizer")
    tok = train_t5_tokenizer()
    vocab_size = tok.get_vocab_size()
    log(f"  vocab_size = {vocab_size}")
    batch = t5_golden_batch(tok)
    input_ids, attention_mask, labels, _, texts = batch
    log(f"  input_ids {tuple(input_ids.shape)} lengths {attention_mask.sum(1).tolist()}, labels {tuple(labels.shape)} "
        f"lengths {(labels != -100).sum(1).tolist()}")

    # relative position buckets: hand-written vs HF, and which buckets the golden lengths reach
    s, t = input_ids.shape[1], labels.shape[1]
    worst, hit = 0, {}
    for bidir, q_len, k_len in [(True, s, s), (False, t, t)]:
        rel = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
        hf = T5Attention._relative_position_bucket(rel, bidirectional=bidir, num_buckets=T5_BUCKETS, max_distance=T5_MAX_DIST)
        mine = torch.tensor([[relative_bucket_by_hand(int(r), bidir, T5_BUCKETS, T5_MAX_DIST) for r in row] for row in rel])
        worst = max(worst, int((hf != mine).sum()))
        hit["encoder" if bidir else "decoder"] = sorted(set(hf.flatten().tolist()))
    check("t5 relative_position_bucket: HF vs hand-written", float(worst), 0)
    log(f"  buckets hit: {hit}")
    # bidirectional: bucket num_buckets/2 (= "rel > 0 and |rel| == 0") is unreachable; all others are hit,
    # and |rel| = s - 1 >= max_distance goes through the min(..., num_buckets - 1) clamp
    assert hit["encoder"] == [b for b in range(T5_BUCKETS) if b != T5_BUCKETS // 2], hit
    assert s - 1 >= T5_MAX_DIST, s
    assert len(hit["decoder"]) >= 6, hit

    out = {}
    for i, version in enumerate(T5_VERSIONS):
        out[version] = build_t5_version(tok, vocab_size, version, 200 + 100 * i, batch)
    write_t5_readme(vocab_size, out, hit, texts)
    return out


def write_t5_readme(vocab_size: int, out: dict, hit: dict, texts) -> None:
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    g0 = out["v1_0"]
    tables = "\n\n".join(f"### {v}\n\n| key | dtype | shape |\n|---|---|---|\n{shapes_table(out[v]['golden'])}" for v in T5_VERSIONS)
    text = f"""# tiny-t5 test fixtures

Generated by `python3 scripts/make_fixtures_gpt2_t5.py` (deterministic, seeded, offline; do not edit by hand).
Produced with: {vers}.
Pinned in `scripts/requirements-fixtures.txt`.

Two random `T5ForConditionalGeneration` models, float32, sharing one tokenizer:

| | `v1_0/hf` | `v1_1/hf` |
|---|---|---|
| feed_forward_proj | `relu` (`DenseReluDense.wi`, `wo`) | `gated-gelu` (`wi_0`, `wi_1`, `wo`; act `gelu_new`: `wo(gelu_new(wi_0 x) * wi_1 x)`) |
| lm_head | tied to `shared.weight` (no `lm_head.weight` in the file) | separate `lm_head.weight` |
| output scaling | decoder output * d_model**-0.5 before the lm_head | none |
| config.json | `tie_word_embeddings: true`, `scale_decoder_outputs: true` | `tie_word_embeddings: false`, `scale_decoder_outputs: false` |

Common config: d_model {T5_D_MODEL}, d_kv {T5_D_KV}, num_heads {T5_HEADS}, d_ff {T5_D_FF}, num_layers {T5_LAYERS},
num_decoder_layers {T5_LAYERS}, relative_attention_num_buckets {T5_BUCKETS}, relative_attention_max_distance {T5_MAX_DIST},
dropout_rate 0, layer_norm_epsilon 1e-6 (T5LayerNorm = RMSNorm without bias/mean), vocab_size {vocab_size},
pad_token_id 0, eos_token_id 1, decoder_start_token_id 0. Attention scores are not scaled by d_kv**-0.5;
only layer 0 of each stack has `relative_attention_bias` (encoder bidirectional, decoder causal;
cross-attention has no position bias). `model.safetensors` holds only `shared.weight` for the embeddings
(no `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight`: they are tied to it; real hub
checkpoints also carry those copies).

About `tie_word_embeddings` in transformers 5: `T5Config.__post_init__` turns the *given*
`tie_word_embeddings` into `scale_decoder_outputs` (False only when tie_word_embeddings=False) and then
forces `tie_word_embeddings = True`; a freshly built v1.1 model therefore shares `lm_head` with `shared`
(and `save_pretrained` would drop `lm_head.weight`). This script gives v1.1 its own `lm_head` parameter
and rewrites both keys in `config.json` with their legacy meaning. On load transformers sees two different
tensors and keeps them untied (it logs a warning). A Rust loader should use: scale iff
`tie_word_embeddings` (default true when absent), and `lm_head.weight` if present, else `shared.weight`.

Weights (seeded, not HF's init): q and k N(0, {T5_QK_STD}); v, o, wi, wi_0, wi_1, wo N(0, {T5_LINEAR_STD}); `lm_head` (v1_1)
N(0, {T5_LM_HEAD_STD}); `shared` N(0, {T5_EMBED_STD}); `relative_attention_bias` N(0, {T5_RELBIAS_STD}); layer norms 1 + N(0, 0.1).
(With smaller v/o/FFN weights the tied, scaled v1.0 head mostly predicts the current input token again, so
greedy outputs were a single repeated token.)

## Tokenizer (`vX/hf/tokenizer.json`, identical in both)

`tokenizers` BPE (vocab {vocab_size}) trained on `data/e2e/devset.csv` (mr + ref) plus the first
{MULTI30K_LINES} lines of Multi30k `val.en` and `val.de`; pre-tokenizer Sequence[WhitespaceSplit,
Metaspace("\u2581", prepend_scheme=always, split=true)], Metaspace decoder, no normalizer, no byte fallback
(unseen characters -> `<unk>`), no-op post-processor (nothing is appended: callers append `</s>`
themselves, as the goldens do). BPE rather than Unigram because tokenizers' UnigramTrainer does not give
the same vocabulary from run to run. Special tokens `<pad>`=0, `</s>`=1, `<unk>`=2;
no `<extra_id_N>` sentinels. `tokenizer_class` is `PreTrainedTokenizerFast` (transformers' `T5Tokenizer`
would add 100 extra ids).

## Adapters (`vX/peft-adapter`, `vX/peft-adapter-all`)

* `peft-adapter/`: LoraConfig(r=4, lora_alpha=8, target_modules=[q, v], lora_dropout=0,
  task_type=SEQ_2_SEQ_LM): encoder self-attention, decoder self- and cross-attention (`EncDecAttention`)
  q and v. lora_A = PEFT's kaiming init (seeded), lora_B ~ N(0, 0.1). scaling 2. Keys (v1_0; same in v1_1):
  {", ".join(f"`{k}`" for k in g0["ad_keys"])}.
* `peft-adapter-all/`: r=2, lora_alpha=4 (scaling 2) on v1_0: {out["v1_0"]["targets_all"]}, v1_1: {out["v1_1"]["targets_all"]}.
  `target_modules` sorted and `base_model_name_or_path` = `tests/fixtures/tiny-t5/vX/hf` in adapter_config.json.

## golden.safetensors (one per version)

Batch (2 rows): encoder rows = first {T5_ENC_LEN - 1} tokens of `{texts[0]}` + `</s>` and first {T5_ENC_LEN2 - 1}
tokens of `{texts[1]}` + `</s>` (right-padded with 0 to {T5_ENC_LEN}); labels = first {T5_DEC_LEN - 1} tokens of
`{texts[2]}` + `</s>` and first {T5_DEC_LEN2 - 1} tokens of `{texts[3]}` + `</s>` (padded with -100).
The encoder length {T5_ENC_LEN} > max_distance {T5_MAX_DIST} so the clamped buckets are used; buckets reached:
encoder {hit["encoder"]}, decoder {hit["decoder"]}.

* `decoder_input_ids`: what HF derives from `labels` (shift right, start token 0, -100 -> 0), for reference;
  the logits/losses come from `model(input_ids, attention_mask, labels=labels)` (no decoder attention mask:
  decoder positions after the end of a shorter row see only the causal mask; compare logits where
  `labels != -100`).
* `*.loss`: mean CE of `logits` vs `labels` over labels != -100 (no shift). `peft.loss_ls`: same with
  `cross_entropy(label_smoothing=0.1)` (= transformers `LabelSmoother(0.1)`).
* `base.*`: plain `hf/`; `peft.*`: with `peft-adapter`; `peft_all.logits`: with `peft-adapter-all`.
  `encoder_hidden`: the base model's `encoder(input_ids, attention_mask).last_hidden_state` (after the
  final layer norm).
* `grad.<key>` / `step3.<key>` / `step_losses`: as in tiny-gpt2 (gradient of `peft.loss`; 3 steps of
  AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)).
* `greedy.prompt_ids` (1, s0): unpadded encoder prompt ending in `</s>`: the first of (batch row 1,
  row 2, 11-token devset prefixes + `</s>`) for which beam differs from greedy and `beam_nr` from `beam`.
  Outputs are what `generate` returns: decoder sequences (1, 1 + {T5_NEW_TOKENS}) starting with the start token 0,
  `max_new_tokens={T5_NEW_TOKENS}, min_new_tokens={T5_NEW_TOKENS}` (EOS blocked), greedy / beam (`num_beams=3,
  length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=True`) / beam_nr (`num_beams=3,
  no_repeat_ngram_size=2, length_penalty=0.9`) from the PEFT model, `greedy.base_output_ids` from `hf/`.
  `no_repeat_ngram_size` looks at the decoder sequence including the start token.

{tables}
"""
    (T5_FIX / "README.md").write_text(text, encoding="utf-8")


# =========================================================================== main


def main() -> None:
    import transformers

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    build_gpt2_fixtures()
    build_t5_fixtures()
    log("== files")
    total = chmod_and_list(GPT2_FIX) + chmod_and_list(T5_FIX)
    log(f"  {total:>9}  TOTAL (both)")


if __name__ == "__main__":
    main()
