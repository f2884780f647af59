#!/usr/bin/env python3
"""Generate the tiny offline test fixtures under tests/fixtures/tiny-llama/.

Everything is built from configs (no model hub access) and is deterministic:
rerunning the script rewrites byte-identical files for the same package versions
(see scripts/requirements-fixtures.txt).

    python3 scripts/make_fixtures.py                 # (re)build all fixtures
    python3 scripts/make_fixtures.py --check-ours DIR
        load DIR/adapter_config.json + DIR/adapter_model.safetensors (written by
        our Rust tool) onto tests/fixtures/tiny-llama/hf with PEFT, run the golden
        batch and compare with DIR/logits.safetensors (key "logits"); exit 1 when
        the max abs diff over non-padded positions is above 1e-4.

See tests/fixtures/tiny-llama/README.md (written by this script) for the
meaning of every file and key.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tiny-llama"
HF_DIR = FIX / "hf"
QWEN_DIR = FIX / "hf-qwen2"
ADAPTER_DIR = FIX / "peft-adapter"
RSLORA_DIR = FIX / "peft-adapter-rslora"
DEVSET = ROOT / "data" / "e2e" / "devset.csv"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_TARGET = 400
# ChatML, like SmolLM2-Instruct but without the default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

N_HEAD, N_KV_HEAD, HIDDEN, N_LAYER, FFN, CTX = 4, 2, 64, 2, 128, 256
QWEN_HIDDEN, QWEN_FFN = 32, 64
INIT_STD = 0.2
CHECK_TOL = 1e-4


def log(msg: str) -> None:
    print(msg, flush=True)


def maxdiff(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def check(name: str, diff: float, tol: float) -> None:
    status = "ok" if diff <= tol else "FAIL"
    log(f"  [{status}] {name}: max abs diff {diff:.3e} (tol {tol:.0e})")
    if diff > tol:
        raise SystemExit(f"check failed: {name}")


def info(name: str, diff: float) -> None:
    log(f"  [info] {name}: max abs diff {diff:.3e}")


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- tokenizer


def e2e_texts() -> list[str]:
    texts = []
    with open(DEVSET, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row["mr"])
            texts.append(row["ref"])
    return texts


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 regex + byte map
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(e2e_texts(), trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_tokenizer(tok, out_dir: Path) -> int:
    """Write tokenizer.json + tokenizer_config.json; returns the vocab size."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=CTX,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out_dir))
    # Keep the chat template inside tokenizer_config.json (what older transformers, the
    # llama.cpp converter and most Rust loaders read) rather than chat_template.jinja.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        tokenizer_class="PreTrainedTokenizerFast",
        chat_template=CHAT_TEMPLATE,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        unk_token=None,
    )
    write_json(cfg_path, cfg)
    jinja = out_dir / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    # sanity: reload through AutoTokenizer
    re = AutoTokenizer.from_pretrained(str(out_dir))
    sample = "name[Alimentum], area[city centre] 5 out of 5, £20-25."
    assert re(sample).input_ids == tok.encode(sample).ids
    assert (re.bos_token_id, re.eos_token_id, re.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert re.decode(tok.encode(sample).ids) == sample
    assert re.chat_template == CHAT_TEMPLATE
    return tok.get_vocab_size()


# --------------------------------------------------------------------------- models


def llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=CTX,
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        hidden_act="silu",
    )


def qwen2_config(vocab_size: int):
    from transformers import Qwen2Config

    # Smaller than the llama (hidden 32, intermediate 64, head_dim 8) to keep the fixtures
    # well under 2 MB; its untied lm_head doubles the embedding bytes.
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=QWEN_HIDDEN,
        intermediate_size=QWEN_FFN,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=CTX,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=N_LAYER,
        initializer_range=INIT_STD,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        hidden_act="silu",
    )


def build_model(cls, config, seed: int):
    torch.manual_seed(seed)
    model = cls(config).float()  # Linear/Embedding ~ N(0, initializer_range=0.2)
    # Non-trivial norm weights and biases, so that forgetting to load them shows up.
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def save_hf(model, out_dir: Path, rope_theta: float) -> None:
    from transformers import GenerationConfig

    model.config._name_or_path = out_dir.name
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # transformers 5 writes rope_theta only inside "rope_parameters" and "dtype" instead of
    # "torch_dtype"; add the legacy top-level keys too so v4-style config parsers work.
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rope_theta"] = rope_theta
    cfg["torch_dtype"] = "float32"
    cfg.setdefault("dtype", "float32")
    write_json(cfg_path, cfg)


def load_hf(cls, path: Path):
    model = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


# --------------------------------------------------------------------------- golden batch


def golden_batch(tok):
    row1 = tok.encode("name[Alimentum], area[city centre], familyFriendly[no]").ids[:9]
    row2 = tok.encode("Alimentum is not a family-friendly place").ids[:7]
    assert len(row1) == 9 and len(row2) == 7
    input_ids = torch.tensor([row1, row2 + [PAD_ID, PAD_ID]], dtype=torch.int64)
    attention_mask = torch.tensor([[1] * 9, [1] * 7 + [0, 0]], dtype=torch.int64)
    labels = input_ids.clone()
    labels[:, :3] = -100
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


def manual_causal_lm_loss(logits, labels) -> torch.Tensor:
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    shift_labels = labels[:, 1:].reshape(-1)
    keep = shift_labels != -100
    return torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep])


# --------------------------------------------------------------------------- PEFT


def make_adapter(base_dir: Path, out_dir: Path, lora_kwargs: dict, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = load_hf(LlamaForCausalLM, base_dir)
    torch.manual_seed(seed)  # lora_A uses kaiming-uniform from the global RNG
    pm = get_peft_model(base, LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **lora_kwargs))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    reset_dir(out_dir)
    pm.save_pretrained(str(out_dir), safe_serialization=True)
    readme = out_dir / "README.md"  # PEFT's auto model card: not needed
    if readme.exists():
        readme.unlink()
    # Deterministic, machine-independent adapter_config.json: PEFT writes target_modules from a
    # set (order depends on PYTHONHASHSEED) and the absolute base path.
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = "tests/fixtures/tiny-llama/hf"
    write_json(cfg_path, cfg)


def peft_key(param_name: str) -> str:
    """named_parameters() name -> adapter_model.safetensors key."""
    return param_name.replace(".default.", ".")


def load_peft(base_dir: Path, adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = load_hf(LlamaForCausalLM, base_dir)
    pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    pm.eval()
    return pm


def manual_merged_logits(base_dir: Path, adapter_dir: Path, input_ids, attention_mask):
    """Merge W += scale * B @ A by hand (scale from adapter_config) and run the plain model."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    ad = load_file(str(adapter_dir / "adapter_model.safetensors"))
    model = load_hf(LlamaForCausalLM, base_dir)
    sd = model.state_dict()
    with torch.no_grad():
        for k, a in ad.items():
            if ".lora_A." not in k:
                continue
            b = ad[k.replace(".lora_A.", ".lora_B.")]
            target = k.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            sd[target] += scale * (b @ a)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


# --------------------------------------------------------------------------- GGUF


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> GGML interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_equivalence_check(sd: dict) -> float:
    """Scores q.k with HF (rotate_half) RoPE on HF weights vs GGML interleaved RoPE on permuted weights."""
    rng = np.random.default_rng(0)
    T, hd = 7, HIDDEN // N_HEAD
    x = rng.standard_normal((T, HIDDEN))
    wq = sd["model.layers.0.self_attn.q_proj.weight"].double().numpy()
    wk = sd["model.layers.0.self_attn.k_proj.weight"].double().numpy()
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(T)[:, None] * inv[None, :]  # (T, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope_neox(v):  # (T, H, hd)
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        c, s = cos[:, None], sin[:, None]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    def rope_norm(v):  # interleaved pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        c, s = cos[:, None], sin[:, None]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
        return out

    def scores(q, k):
        k = np.repeat(k, N_HEAD // N_KV_HEAD, axis=1)
        return np.einsum("thd,shd->hts", q, k)

    q_hf = rope_neox((x @ wq.T).reshape(T, N_HEAD, hd))
    k_hf = rope_neox((x @ wk.T).reshape(T, N_KV_HEAD, hd))
    q_gg = rope_norm((x @ permute_qk(wq, N_HEAD, N_HEAD).T).reshape(T, N_HEAD, hd))
    k_gg = rope_norm((x @ permute_qk(wk, N_HEAD, N_KV_HEAD).T).reshape(T, N_KV_HEAD, hd))
    return float(np.abs(scores(q_hf, k_hf) - scores(q_gg, k_gg)).max())


def gguf_token_vocab(hf_dir: Path, vocab_size: int):
    """Mirror of convert_hf_to_gguf.py TextModel.get_vocab_base (tokens + token types)."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    reverse_vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added_vocab = tokenizer.get_added_vocab()
    added_dec = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        t = reverse_vocab[i]
        if t in added_vocab:
            toktypes.append(gguf.TokenType.CONTROL if added_dec[i].special else gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    return tokens, toktypes


def write_gguf(path: Path, sd: dict, vocab_size: int, kind: str) -> dict:
    """Write the tiny llama like convert_hf_to_gguf.py would. Returns {gguf name: array as stored
    (dequantized, still permuted)} for verification."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }[kind]
    qtype = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_1": QT.Q4_1}[kind]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("tiny-llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(ftype)
    w.add_vocab_size(vocab_size)
    w.add_rope_dimension_count(HIDDEN // N_HEAD)
    tokens, toktypes = gguf_token_vocab(HF_DIR, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")  # plain GPT-2 ByteLevel regex (no individual-digit split)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(str(HF_DIR), load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(w, quiet=True)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, N_LAYER)
    stored = {}
    for name in sorted(sd):  # safetensors key order, like the converter
        data = sd[name].detach().float().numpy().copy()
        if name.endswith("q_proj.weight"):
            data = permute_qk(data, N_HEAD, N_HEAD)
        elif name.endswith("k_proj.weight"):
            data = permute_qk(data, N_HEAD, N_KV_HEAD)
        new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new_name is not None, name
        if data.ndim <= 1 or new_name.endswith("_norm.weight"):
            w.add_tensor(new_name, data.astype(np.float32))
            stored[new_name] = data.astype(np.float32)
        elif qtype == QT.F32:
            w.add_tensor(new_name, data.astype(np.float32))
            stored[new_name] = data.astype(np.float32)
        elif qtype == QT.F16:
            h = data.astype(np.float16)
            w.add_tensor(new_name, h)
            stored[new_name] = h.astype(np.float32)
        else:
            assert data.shape[-1] % 32 == 0
            q = gguf.quants.quantize(data, qtype)
            w.add_tensor(new_name, q, raw_dtype=qtype)
            stored[new_name] = gguf.quants.dequantize(q, qtype).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def verify_gguf(path: Path, stored: dict, vocab_size: int) -> None:
    import gguf

    r = gguf.GGUFReader(str(path))
    names = [t.name for t in r.tensors]
    assert set(names) == set(stored), (names, list(stored))
    assert "output.weight" not in names
    worst = 0.0
    for t in r.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        arr = arr.reshape(stored[t.name].shape)
        worst = max(worst, float(np.abs(arr - stored[t.name]).max()))
    check(f"{path.name} read back by GGUFReader == written", worst, 0.0)
    f = r.fields
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.vocab_size"].contents() == vocab_size
    assert len(f["tokenizer.ggml.tokens"].contents()) == vocab_size


def gguf_keys(path: Path) -> list[str]:
    import gguf

    return [k for k in gguf.GGUFReader(str(path)).fields if not k.startswith("GGUF.")]


# --------------------------------------------------------------------------- main build


def build() -> None:
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    import gguf
    import peft
    import tokenizers
    import transformers

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    FIX.mkdir(parents=True, exist_ok=True)

    # 1. tokenizer + tiny llama -------------------------------------------------------
    log("== tokenizer + hf/")
    tok = train_tokenizer()
    reset_dir(HF_DIR)
    vocab_size = save_tokenizer(tok, HF_DIR)
    log(f"  vocab_size = {vocab_size}, merges = {vocab_size - 256 - len(SPECIAL_TOKENS)}")
    llama = build_model(LlamaForCausalLM, llama_config(vocab_size), seed=0)
    save_hf(llama, HF_DIR, 10000.0)
    llama = load_hf(LlamaForCausalLM, HF_DIR)  # everything below uses what is on disk
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    input_ids, attention_mask, labels = golden_batch(tok)
    with torch.no_grad():
        base_logits = llama(input_ids=input_ids, attention_mask=attention_mask).logits
        sdpa = LlamaForCausalLM.from_pretrained(str(HF_DIR), attn_implementation="sdpa").eval()
        sdpa_logits = sdpa(input_ids=input_ids, attention_mask=attention_mask).logits
    valid = attention_mask.bool()
    check("llama eager vs sdpa logits (valid positions)", maxdiff(base_logits[valid], sdpa_logits[valid]), 1e-5)
    log(f"  base logits std {base_logits.std():.3f}")
    sd = {k: v for k, v in llama.state_dict().items() if k != "lm_head.weight"}

    # 2. qwen2 -------------------------------------------------------------------------
    log("== hf-qwen2/")
    reset_dir(QWEN_DIR)
    save_tokenizer(tok, QWEN_DIR)
    qwen = build_model(Qwen2ForCausalLM, qwen2_config(vocab_size), seed=2)
    save_hf(qwen, QWEN_DIR, 1000000.0)
    with torch.no_grad():
        q_before = qwen(input_ids=input_ids, attention_mask=attention_mask).logits
        qwen = load_hf(Qwen2ForCausalLM, QWEN_DIR)
        assert qwen.config.rope_parameters["rope_theta"] == 1000000.0
        qwen_logits = qwen(input_ids=input_ids, attention_mask=attention_mask).logits
    check("qwen2 logits before save (sdpa) vs reloaded (eager)", maxdiff(q_before, qwen_logits), 1e-5)
    qsd = load_file(str(QWEN_DIR / "model.safetensors"))
    assert "lm_head.weight" in qsd and "model.layers.0.self_attn.q_proj.bias" in qsd

    # 3. GGUF ----------------------------------------------------------------------------
    log("== GGUF")
    check("RoPE: HF rotate_half on HF W vs GGML interleaved on permuted W (attn scores)",
          rope_equivalence_check(sd), 1e-9)
    wq = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
    wk = sd["model.layers.0.self_attn.k_proj.weight"].numpy()
    check("unpermute(permute(Wq)) == Wq", maxdiff(unpermute_qk(permute_qk(wq, 4, 4), 4, 4), wq), 0.0)
    check("unpermute(permute(Wk)) == Wk", maxdiff(unpermute_qk(permute_qk(wk, 4, 2), 4, 2), wk), 0.0)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, N_LAYER)
    dequant_out = {}
    for kind in ["f32", "f16", "q8_0", "q4_1"]:
        path = FIX / f"model-{kind}.gguf"
        stored = write_gguf(path, sd, vocab_size, kind)
        verify_gguf(path, stored, vocab_size)
        # rebuild an HF state dict from the stored (dequantized) values
        new_sd = {}
        for name, v in sd.items():
            arr = stored[tmap.get_name(name, try_suffixes=(".weight", ".bias"))]
            if name.endswith("q_proj.weight"):
                arr = unpermute_qk(arr, N_HEAD, N_HEAD)
            elif name.endswith("k_proj.weight"):
                arr = unpermute_qk(arr, N_HEAD, N_KV_HEAD)
            new_sd[name] = torch.from_numpy(np.ascontiguousarray(arr)).reshape(v.shape)
        info(f"{kind} weights vs original", max(maxdiff(new_sd[k], sd[k]) for k in sd))
        m = copy.deepcopy(llama)
        m.load_state_dict(new_sd, strict=False)
        m.tie_weights()
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            lg = m(input_ids=input_ids, attention_mask=attention_mask).logits
        if kind == "f32":
            check("f32 gguf weights -> logits == base.logits", maxdiff(lg, base_logits), 0.0)
        else:
            info(f"{kind} dequantized-model logits vs base.logits", maxdiff(lg, base_logits))
            dequant_out[f"{kind}.logits"] = lg.contiguous()
    save_file(dequant_out, str(FIX / "gguf_dequant_logits.safetensors"))

    # 4. PEFT adapters -------------------------------------------------------------------
    log("== PEFT adapters")
    make_adapter(HF_DIR, ADAPTER_DIR, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), seed=10)
    make_adapter(HF_DIR, RSLORA_DIR, dict(
        r=4, lora_alpha=8, use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), seed=20)

    # 5. golden ------------------------------------------------------------------------
    log("== golden.safetensors")
    golden = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "base.logits": base_logits,
        "qwen2.logits": qwen_logits,
    }
    with torch.no_grad():
        base_loss = llama(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    check("base: HF loss vs manual shifted CE", maxdiff(base_loss.reshape(1), manual_causal_lm_loss(base_logits, labels).reshape(1)), 1e-6)
    golden["base.loss"] = base_loss.reshape(1)

    for prefix, adir in [("peft", ADAPTER_DIR), ("rslora", RSLORA_DIR)]:
        pm = load_peft(HF_DIR, adir)
        with torch.no_grad():
            out = pm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            # the loss ignores attention_mask: only labels == -100 are skipped
            out_nomask = pm(input_ids=input_ids, labels=labels)
        check(f"{prefix}: HF loss vs manual shifted CE", maxdiff(out.loss.reshape(1), manual_causal_lm_loss(out.logits, labels).reshape(1)), 1e-6)
        check(f"{prefix}: loss with vs without attention_mask (right padding)", maxdiff(out.loss.reshape(1), out_nomask.loss.reshape(1)), 1e-6)
        manual = manual_merged_logits(HF_DIR, adir, input_ids, attention_mask)
        check(f"{prefix}: PEFT logits vs hand-merged W + scale*B@A", maxdiff(out.logits, manual), 1e-4)
        info(f"{prefix}: logits vs base.logits", maxdiff(out.logits, base_logits))
        golden[f"{prefix}.logits"] = out.logits
        golden[f"{prefix}.loss"] = out.loss.reshape(1)

    # gradients + 3 AdamW steps on the plain adapter
    adapter_keys = set(load_file(str(ADAPTER_DIR / "adapter_model.safetensors")))
    pm = load_peft(HF_DIR, ADAPTER_DIR, trainable=True)
    pm.train()
    params = {peft_key(n): p for n, p in pm.named_parameters() if p.requires_grad}
    assert set(params) == adapter_keys, (sorted(params), sorted(adapter_keys))
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = pm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        if step == 0:
            check("train-mode loss == peft.loss", abs(loss.item() - golden["peft.loss"].item()), 1e-6)
            for k, p in params.items():
                golden[f"grad.{k}"] = p.grad.detach().clone()
        opt.step()
    for k, p in params.items():
        golden[f"step3.{k}"] = p.detach().clone()
    golden["step_losses"] = torch.tensor(losses, dtype=torch.float32)
    log(f"  step_losses = {losses}")

    # generation: first candidate prompt (5 tokens) for which beam search != greedy
    pm = load_peft(HF_DIR, ADAPTER_DIR)
    candidates = [input_ids[:1, :5]] + [
        torch.tensor([tok.encode(t).ids[:5]]) for t in e2e_texts()[1:200:2]]
    for prompt in candidates:
        gen_common = dict(
            input_ids=prompt.clone(), attention_mask=torch.ones_like(prompt), max_new_tokens=12,
            min_new_tokens=12, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID,
        )
        with torch.no_grad():
            greedy = pm.generate(**gen_common, do_sample=False, num_beams=1)
            beam = pm.generate(**gen_common, do_sample=False, num_beams=3, length_penalty=1.0,
                               no_repeat_ngram_size=0, early_stopping=True)
        if not torch.equal(greedy, beam):
            break
    else:
        raise SystemExit("no prompt where beam search differs from greedy")
    with torch.no_grad():
        base_greedy = llama.generate(**gen_common, do_sample=False, num_beams=1)
        # greedy re-derived by hand (argmax of full forward, EOS masked as min_new_tokens does)
        seq = prompt.clone()
        for _ in range(12):
            lg = pm(input_ids=seq).logits[:, -1]
            lg[:, EOS_ID] = -float("inf")
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    assert greedy.shape == (1, 17) and beam.shape == (1, 17), (greedy.shape, beam.shape)
    check("greedy generate vs manual argmax loop", float((seq != greedy).sum()), 0)
    golden["greedy.prompt_ids"] = prompt
    golden["greedy.output_ids"] = greedy
    golden["beam.output_ids"] = beam
    golden["greedy.base_output_ids"] = base_greedy
    log(f"  greedy: {greedy.tolist()}\n  beam:   {beam.tolist()}\n  base greedy: {base_greedy.tolist()}")

    golden = {k: (v.detach().to(torch.int64) if v.dtype == torch.int64 else v.detach().float()).contiguous()
              for k, v in golden.items()}
    save_file(golden, str(FIX / "golden.safetensors"))

    # self-test of --check-ours using the PEFT adapter itself
    tmp = FIX / ".check-ours-selftest"
    reset_dir(tmp)
    for f in ["adapter_config.json", "adapter_model.safetensors"]:
        shutil.copy(ADAPTER_DIR / f, tmp / f)
    save_file({"logits": golden["peft.logits"]}, str(tmp / "logits.safetensors"))
    rc = check_ours(tmp)
    shutil.rmtree(tmp)
    assert rc == 0

    versions = dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                    tokenizers=tokenizers.__version__, gguf=_pkg_version("gguf"),
                    safetensors=_pkg_version("safetensors"), numpy=np.__version__,
                    python=sys.version.split()[0])
    write_readme(vocab_size, versions, golden, gguf_keys(FIX / "model-q8_0.gguf"))

    log("== files")
    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            p.chmod(0o644)
            total += p.stat().st_size
            log(f"  {p.stat().st_size:>9}  {p.relative_to(FIX)}")
    log(f"  {total:>9}  TOTAL")


def _pkg_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# --------------------------------------------------------------------------- README


def write_readme(vocab_size: int, versions: dict, golden: dict, keys: list[str]) -> None:
    shapes = "\n".join(f"| `{k}` | {str(v.dtype).replace('torch.', '')} | {tuple(v.shape)} |"
                       for k, v in golden.items())
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    text = f"""# tiny-llama test fixtures

Generated by `python3 scripts/make_fixtures.py` (deterministic, seeded, offline; do not edit by hand).
Produced with: {vers}.
Pinned in `scripts/requirements-fixtures.txt`.

## Models

* `hf/`: random `LlamaForCausalLM`, float32. hidden 64, intermediate 128, 2 layers,
  4 heads / 2 KV heads (GQA, head_dim 16), rms_norm_eps 1e-5, rope_theta 10000,
  max_position_embeddings 256, tie_word_embeddings (no `lm_head.weight` in the safetensors),
  vocab_size {vocab_size}. Linear/embedding weights ~ N(0, 0.2) (`torch.manual_seed(0)`), RMSNorm
  weights 1 + N(0, 0.1). `config.json` is transformers-5 style (`rope_parameters`) plus the legacy
  top-level `rope_theta` and `torch_dtype` keys.
* `hf/tokenizer.json`: byte-level BPE trained on `data/e2e/devset.csv` (mr + ref) with the
  `tokenizers` library: ByteLevel pre-tokenizer (add_prefix_space=false, GPT-2 regex), ByteLevel
  decoder, a no-op TemplateProcessing post-processor (nothing is added automatically). Special tokens:
  `<|endoftext|>`=0 (pad), `<|im_start|>`=1 (bos), `<|im_end|>`=2 (eos). ChatML `chat_template`
  in `tokenizer_config.json`.
* `hf-qwen2/`: random `Qwen2ForCausalLM`, same tokenizer, 2 layers, 4 heads / 2 KV heads but
  hidden 32, intermediate 64 (head_dim 8) to save bytes; q/k/v biases (~N(0, 0.2)),
  tie_word_embeddings=false (has `lm_head.weight`), rope_theta 1e6, rms_norm_eps 1e-6.
* `model-{{f32,f16,q8_0,q4_1}}.gguf`: `hf/` converted the way llama.cpp's `convert_hf_to_gguf.py`
  (`LlamaModel`) does: tensor names via `gguf.get_tensor_name_map(LLAMA)` (`token_embd.weight`,
  `blk.N.attn_norm/attn_q/attn_k/attn_v/attn_output/ffn_norm/ffn_gate/ffn_up/ffn_down.weight`,
  `output_norm.weight`; no `output.weight` since embeddings are tied). Q and K rows are permuted
  per head for GGML's interleaved RoPE:
  `W.reshape(n, 2, rows//n//2, cols).swapaxes(1, 2).reshape(rows, cols)` with n = 4 for
  `attn_q` and n = n_head_kv = 2 for `attn_k` (inverse: `reshape(n, rows//n//2, 2, cols).swapaxes(1, 2)`).
  f32: all F32; f16: 2-D weights F16, norms F32; q8_0 / q4_1: 2-D weights (incl. token_embd)
  quantized with `gguf.quants.quantize`, norms F32. Tokenizer: `tokenizer.ggml.model`="gpt2",
  `tokenizer.ggml.pre`="gpt2" (our pre-tokenizer is the plain GPT-2 regex; "smollm" would split
  digits individually), token types 3 (CONTROL) for the 3 specials, 1 (NORMAL) otherwise.
  Metadata keys (in order): {", ".join(f"`{k}`" for k in keys)}.
* `gguf_dequant_logits.safetensors`: `q8_0.logits`, `q4_1.logits`, `f16.logits` (2, 9, V) float32:
  the HF model's logits on the golden batch when its weights are replaced by the dequantized
  (and un-permuted) GGUF tensors (tied lm_head = dequantized token_embd), eager attention.
* `peft-adapter/`: PEFT `save_pretrained` of LoraConfig(r=4, lora_alpha=8,
  target_modules=[q_proj, v_proj], lora_dropout=0, task_type=CAUSAL_LM) on `hf/`; lora_A is PEFT's
  kaiming init (seeded), every lora_B ~ N(0, 0.1) (seeded). scaling = alpha/r = 2.
* `peft-adapter-rslora/`: same with use_rslora=True, r=4, lora_alpha=8 (scaling = alpha/sqrt(r) = 4),
  targets q,k,v,o,gate,up,down_proj.
  In both `adapter_config.json` files `target_modules` is sorted and `base_model_name_or_path` is
  `tests/fixtures/tiny-llama/hf` (relative to the repo root).

## golden.safetensors

Batch: 2 rows x 9 tokens, row 2 right-padded with 2 pad tokens (id 0). All logits are from
eager attention in eval mode. Logits at padded positions (0-based row 1, positions 7 and 8) are those of HF
(the padded query attends to the earlier non-pad keys only); compare logits only where
`attention_mask == 1` unless you mask the same way.

| key | dtype | shape |
|---|---|---|
{shapes}

* `labels`: `input_ids` with the first 3 positions and the padded positions set to -100.
* `*.loss`: HF causal-LM loss = mean cross-entropy of `logits[:, :-1]` vs `labels[:, 1:]` over
  targets != -100 (7 targets here). HF's loss does not look at `attention_mask` at all; padding is
  ignored only because its labels are -100 (checked: same loss without the mask).
* `base.*`: plain `hf/` model. `qwen2.logits`: plain `hf-qwen2/` model.
* `peft.*`: `PeftModel.from_pretrained(hf, peft-adapter)`; `rslora.*`: with `peft-adapter-rslora`.
* `grad.<key>`: gradient of `peft.loss` w.r.t. each LoRA tensor, `<key>` exactly as in
  `peft-adapter/adapter_model.safetensors` (e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
* `step3.<key>`: LoRA tensors after 3 steps of `torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999),
  eps=1e-8, weight_decay=0.01)` on the same batch (fresh optimizer from the saved adapter; each step
  zero_grad, forward, loss, backward, step). `step_losses`: loss before each step
  (`step_losses[0] == peft.loss`).
* `greedy.prompt_ids`: 5 tokens: the first of (row 1 of `input_ids`[:5], then 5-token prefixes of
  devset texts) for which beam search and greedy disagree. `greedy.output_ids`: prompt + 12 tokens from the
  PEFT model's `generate(do_sample=False, max_new_tokens=12, min_new_tokens=12)` (EOS id 2 is
  masked to -inf for the 12 steps, so it never stops early). `beam.output_ids`: same with
  `num_beams=3, length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=True` (HF applies the
  EOS mask to log_softmax scores over the full vocab, i.e. after normalisation).
  `greedy.base_output_ids`: greedy of the plain `hf/` model.

## Checking our adapters

`python3 scripts/make_fixtures.py --check-ours DIR` loads `DIR/adapter_config.json` +
`DIR/adapter_model.safetensors` with `PeftModel.from_pretrained` on `hf/`, runs `input_ids` /
`attention_mask` and compares with `DIR/logits.safetensors` (key `logits`, shape (2, 9, V)); exit
status 1 when the max abs diff over non-padded positions exceeds 1e-4.
"""
    (FIX / "README.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- --check-ours


def check_ours(d: Path) -> int:
    from safetensors.torch import load_file

    d = Path(d)
    golden = load_file(str(FIX / "golden.safetensors"))
    ids, mask = golden["input_ids"], golden["attention_mask"]
    ours = load_file(str(d / "logits.safetensors"))["logits"].float()
    pm = load_peft(HF_DIR, d)
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask).logits
    if tuple(ours.shape) != tuple(ref.shape):
        log(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
        return 1
    valid = mask.bool()
    d_valid = maxdiff(ours[valid], ref[valid])
    d_all = maxdiff(ours, ref)
    log(f"--check-ours {d}: max abs diff {d_valid:.3e} (non-padded positions), {d_all:.3e} (all positions); tol {CHECK_TOL:.0e}")
    if d_valid > CHECK_TOL:
        log("FAIL")
        return 1
    log("OK")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-ours", metavar="DIR", type=Path,
                    help="compare a LoRA adapter folder written by our Rust tool against PEFT")
    args = ap.parse_args()
    if args.check_ours is not None:
        sys.exit(check_ours(args.check_ours))
    build()


if __name__ == "__main__":
    main()
