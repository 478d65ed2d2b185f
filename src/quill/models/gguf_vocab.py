"""The tokenizer half of the GGUF export (``quill.models.gguf_export``): tokens, types, merges, special ids, chat template.

As in llama.cpp's ``convert_hf_to_gguf.py``: tokens by id (ids the tokenizer does not use become
``[PADn]``, unused), token types (added special tokens are control tokens), merges, special ids, and
``tokenizer.ggml.pre`` found by hashing the tokenization of the reference's check text.
"""
from __future__ import annotations

import hashlib
import json

import gguf

from quill.errors import ModelError


# The reference's check text (convert_hf_to_gguf.py, get_vocab_base_pre) and the sha256 of str(its ids) for
# the pre-tokenizers llama.cpp implements that quill's models use.
_CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
           "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
           "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
           "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
_PRE_BY_HASH = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


def tokenizer_pre(tokenizer, name: str = "model") -> str:
    """``tokenizer.ggml.pre``: which of llama.cpp's pre-tokenizers reproduces this tokenizer."""
    digest = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    if digest not in _PRE_BY_HASH:
        raise ModelError(f"{name}: its tokenizer is not one llama.cpp's GGUF export here knows (check hash "
                         f"{digest[:12]}…; known: {', '.join(sorted(set(_PRE_BY_HASH.values())))})")
    return _PRE_BY_HASH[digest]


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>")) \
        or token == "<pad>"


def _vocab(tokenizer, n_vocab: int, name: str) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF token types and the BPE merges (``"a b"`` strings) of a byte-level BPE."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ModelError(f"{name}: only byte-level BPE tokenizers can be exported to GGUF")
    merges = [m if isinstance(m, str) else " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part)
                                                     for part in m) for m in model.get("merges", [])]
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= n_vocab:
        raise ModelError(f"{name}: tokenizer has id {max(by_id)} but the model only {n_vocab} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[i].special or _looks_special(token)
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types], merges


def write_tokenizer(writer, tokenizer, n_vocab: int, name: str, template=None) -> None:
    tokens, types, merges = _vocab(tokenizer, n_vocab, name)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer, name))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # with quill's template, its end-of-turn token is the EOS (and EOT): llama.cpp and Ollama stop where quill does
    eot = template.end_of_turn_id(tokenizer) if template is not None else None
    for tid, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                     (tokenizer.eos_token_id if eot is None else eot, writer.add_eos_token_id),
                     (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if tid is not None and 0 <= tid < n_vocab:
            add(int(tid))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id and tokenizer.bos_token_id is not None)
    writer.add_add_eos_token(len(probe) > 1 and probe[-1] == tokenizer.eos_token_id)
    if template is not None:
        writer.add_chat_template(template.jinja_source())
        writer.add_eot_token_id(eot)
    elif isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
