"""The llama.cpp backend: GGUF export (logits against the HF model), tokenizer round-trip, the engine on
llama.cpp against the torch engine, the fallback when llama-cpp-python is missing, and the exact top-p
shortcut of the sampler."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from quill.decoding import llamacpp
from quill.decoding.engine import Engine
from quill.decoding.sampling import candidates
from quill.errors import ModelError
from quill.models import gguf_export, gguf_vocab

PROMPTS = ["The sea is blue, the sky is red", "Write a poem about the night.\nThe moon", "Ah, love — 😶 ünïcode"]
LINES = ["Shall I compare thee to a summer's day?", "  Thou art more lovely\tand more temperate:\n\n",
         "Rough winds do shake the darling buds of May, 1609 — “quoted” …", "naïve café, 夏の海 🌊"]
GEN = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 16, "seed": 0}


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    """Exports go to a temp folder, not the user's cache."""
    monkeypatch.setattr(gguf_export, "gguf_cache_dir", lambda: tmp_path / "gguf")
    return tmp_path / "gguf"


def llama_logits(llama_cpp, path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("quant,bound", [("f32", 1e-3), ("q8_0", 5e-2)])
def test_export_logits_match_the_model(request, llama_cpp, tmp_path, fixture, quant, bound):
    model, tokenizer, _ = request.getfixturevalue(fixture)
    path = gguf_export.write_gguf(model, tokenizer, tmp_path / f"m-{quant}.gguf", quant, name=fixture)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        ours = llama_logits(llama_cpp, path, ids)
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert rel < bound, (prompt, rel)


def test_rope_linear_scaling_and_attention_bias_export(llama_cpp, tmp_path, gpt2_tokenizer):
    """DeepSeek-coder's linear RoPE scaling, and Q/K biases (permuted like the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                      attention_bias=True, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.bias.normal_(0, 0.5)
    path = gguf_export.write_gguf(model, gpt2_tokenizer, tmp_path / "scaled.gguf", "f32")
    ids = gpt2_tokenizer.encode(PROMPTS[1] * 3)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(llama_logits(llama_cpp, path, ids) - ref).max() / np.abs(ref).max() < 1e-3


def test_tokenizer_round_trip_gpt2(llama_cpp, tmp_path, tiny_gpt2):
    model, tokenizer, _ = tiny_gpt2
    path = gguf_export.write_gguf(model, tokenizer, tmp_path / "g.gguf", "q8_0")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for line in LINES:
        assert llm.tokenize(line.encode(), add_bos=False, special=False) == tokenizer.encode(line)
    assert llm.token_eos() == tokenizer.eos_token_id


@pytest.mark.slow
def test_tokenizer_round_trip_smollm2(llama_cpp, tmp_path):
    """SmolLM2's tokenizer ("smollm" pre-tokenizer, ChatML control tokens) on a tiny random model."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from quill.models import load_tokenizer
    tok = load_tokenizer("smollm2-135m")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    path = gguf_export.write_gguf(model, tok, tmp_path / "s.gguf", "q8_0")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for line in LINES:
        assert llm.tokenize(line.encode(), add_bos=False, special=False) == tok.encode(line)
    chat = tok.apply_chat_template([{"role": "user", "content": LINES[0]}], tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == tok.encode(chat)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_engine_on_llama_cpp_generates_like_torch(llama_cpp, gguf_cache, spec):
    fast = Engine.load(spec, backend="llama.cpp", quantize="f32")
    assert fast.decoder.kind == "llama.cpp" and len(list(gguf_cache.glob("*-f32.gguf"))) == 1
    ref = Engine(fast.model, fast.tokenizer, fast.template, context_length=fast.context_length, fast=False,
                 generation=GEN)
    fast.defaults = ref.defaults
    for prompt in (ref.chat_prompt([{"role": "user", "content": PROMPTS[1]}]), ref.text_prompt(PROMPTS[0])):
        for penalty in (1.0, 1.3):
            p = ref.params(temperature=0, repetition_penalty=penalty, max_new_tokens=12)
            a, b = fast.generate(prompt, p), ref.generate(prompt, p)
            assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    # sampled (a random model's nucleus spans most of the vocabulary, so only reproducibility is comparable)
    p = ref.params(max_new_tokens=8, seed=3)
    assert fast.generate(prompt, p).token_ids == fast.generate(prompt, p).token_ids


def test_llama_cpp_decoder_grows_its_context(llama_cpp, gguf_cache, tiny_llama, monkeypatch):
    monkeypatch.setattr(llamacpp, "_FIRST_CTX", 32)
    model, tokenizer, _ = tiny_llama
    decoder = llamacpp.make_llamacpp_decoder(model, tokenizer, 512, "f32")
    ids = tokenizer.encode(PROMPTS[1] * 4)
    first = decoder.prefill(torch.tensor([ids]), len(ids) + 40).clone()
    assert decoder.n_ctx >= len(ids) + 40
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1]
    assert (first[0] - ref).abs().max() / ref.abs().max() < 1e-3
    cached = list(gguf_cache.glob("*.gguf"))
    llamacpp.make_llamacpp_decoder(model, tokenizer, 512, "f32")  # the same export, from the cache
    assert list(gguf_cache.glob("*.gguf")) == cached


def test_backend_falls_back_to_torch_when_llama_cpp_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        engine = Engine.load("tiny-llama", backend="llama.cpp", quantize="q4_0")
    assert engine.decoder.kind == "eager"
    assert "llama-cpp-python is not installed" in caplog.text and "int8" in caplog.text
    assert Engine.load("tiny-llama", backend="auto").decoder.kind == "eager"


def test_bad_backend_or_quant_is_refused_before_loading():
    with pytest.raises(Exception, match="backend"):
        Engine.load("no-such-model", backend="vllm")
    with pytest.raises(Exception, match="q3_k"):
        Engine.load("no-such-model", backend="llama.cpp", quantize="q3_k")


def test_export_refuses_unknown_tokenizers_and_architectures(tiny_llama):
    class OddTokenizer:
        def encode(self, text):
            return [1, 2, 3]
    with pytest.raises(ModelError, match="my-poet: its tokenizer"):
        gguf_vocab.tokenizer_pre(OddTokenizer(), "my-poet")
    model, tokenizer, _ = tiny_llama

    class Bert:
        config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(ModelError, match="my-poet: cannot export a 'bert'"):
        gguf_export.write_gguf(Bert(), tokenizer, "/nonexistent.gguf", "f32", name="my-poet")


# ----------------------------------------------------------------------------- sampler: exact top-p shortcut
def full_sort_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' top-p over the whole sorted vocabulary, as a dense [B, V] renormalised distribution."""
    probs, index = torch.softmax(logits, -1).sort(dim=-1, descending=True)
    cum = probs.cumsum(-1)
    drop = (cum - probs) >= top_p
    drop[:, 0] = False
    return dense(probs.masked_fill(drop, 0.0), index, logits.shape[-1])


def dense(probs: torch.Tensor, index: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.zeros(probs.shape[0], vocab, dtype=torch.float64).scatter_(1, index, probs.double())
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("rows", [1, 3])
def test_top_p_shortcut_keeps_the_full_sort_distribution(scale, rows):
    g = torch.Generator().manual_seed(int(scale * 10) + rows)
    for top_p in (0.5, 0.9, 0.95, 0.999):
        logits = torch.randn(rows, 49152, generator=g) * scale  # flat (wide nucleus) to peaked (a few tokens)
        probs, index = candidates(logits.clone(), 0, top_p)
        ours, ref = dense(probs, index, logits.shape[-1]), full_sort_nucleus(logits, top_p)
        assert torch.equal(ours > 0, ref > 0), (scale, top_p, int((ours > 0).sum()), int((ref > 0).sum()))
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-9)
