"""THE prompt template: one object per model that renders conversations the same way in training,
chat and serving, and is saved next to every checkpoint (``template.json``) so a checkpoint is
self-contained.

Two styles:

* ``quill`` — for base models without a chat template (GPT-2, deepseek-coder-base):
  ``User: {prompt}\\nAssistant: {answer}<eos>``; earlier turns are joined with ``\\n`` and each earlier
  answer ends with the end-of-turn token too, so a multi-turn history looks like what training showed.
* ``jinja`` — the model's own chat template (SmolLM2-Instruct: ChatML), or quill's ChatML for
  ``template: chatml``. The jinja source is stored in ``template.json``.

Why encoding is done in pieces instead of ``tokenizer(rendered_text)``:

* the prompt and the answer are tokenized separately and concatenated, so the boundary between
  "tokens without loss" and "tokens with loss" is exact (the classic completion-only pitfall is a
  response marker that tokenizes differently in context, which silently masks everything);
* text (message contents) is encoded with ``split_special_tokens=True``: a ``<|im_end|>`` typed inside a
  poem or a user message is plain text and can never end a turn; the template's own control tokens
  are looked up and added as ids explicitly.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quill.errors import ModelError
from quill.data.pack import IGNORE_INDEX  # defined once, in pack.py

TEMPLATE_FILE = "template.json"

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# quill style: the label before each role's message (one definition: the jinja and Ollama renderings read it)
QUILL_LABELS = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}

# Private-use characters mark where message contents sit in a rendered jinja template.
_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"bad message {m!r}: need role system/user/assistant and a string content")


def _controls(tokenizer) -> list[str]:
    """Strings the tokenizer maps to a single control id (special tokens), longest first."""
    names = set(tokenizer.all_special_tokens)
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            names.add(str(tok))
    return sorted((n for n in names if n), key=len, reverse=True)


@dataclass
class PromptTemplate:
    """How conversations become text and token ids for one model. See the module docstring."""

    style: str = "quill"                 # "quill" | "jinja"
    name: str = "quill"                  # "quill" | "chatml" | "model" (the model's own chat template)
    end_of_turn: str = "<|endoftext|>"   # ends every assistant answer; carries loss in training
    chat_template: str | None = None     # jinja source (style "jinja")
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token/eos_token... seen by jinja
    bos: str | None = None               # quill style: prepended when the tokenizer always adds a BOS

    # ------------------------------------------------------------------ rendering (text)
    def _pieces(self, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """[(text, is_content)]: template text (may hold control strings) and message contents (plain)."""
        if self.style == "quill":
            out: list[tuple[str, bool]] = [(self.bos, False)] if self.bos else []
            for i, m in enumerate(messages):
                out += [(("\n" if i else "") + QUILL_LABELS[m["role"]], False), (m["content"], True)]
                if m["role"] == "assistant":
                    out.append((self.end_of_turn, False))
            if add_generation_prompt:
                out.append((("\n" if messages else "") + QUILL_LABELS["assistant"], False))
            return [p for p in out if p[0]]
        from transformers.utils.chat_template_utils import render_jinja_template
        masked = [{"role": m["role"], "content": _MARK.format(i)} for i, m in enumerate(messages)]
        try:
            text = render_jinja_template([masked], chat_template=self.chat_template,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)[0][0]
        except Exception as err:  # jinja raise_exception(), e.g. "roles must alternate"
            raise ValueError(f"chat template refused the conversation: {err}") from None
        out, pos = [], 0
        for match in _MARK_RE.finditer(text):
            out += [(text[pos:match.start()], False), (messages[int(match.group(1))]["content"], True)]
            pos = match.end()
        out.append((text[pos:], False))
        return [p for p in out if p[0]]

    def render_prompt(self, messages: list[dict]) -> str:
        """The text up to where the assistant's answer starts (the generation prompt)."""
        if messages:
            _check_messages(messages)
        return "".join(t for t, _ in self._pieces(messages, add_generation_prompt=True))

    def render(self, messages: list[dict]) -> str:
        """A whole training conversation: prompt + last assistant answer + end-of-turn."""
        prompt, answer = self._split(messages)
        return self.render_prompt(prompt) + answer + self.end_of_turn

    @staticmethod
    def _split(messages: list[dict]) -> tuple[list[dict], str]:
        _check_messages(messages)
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        return messages[:-1], messages[-1]["content"]

    # ------------------------------------------------------------------ encoding (ids)
    def _encode_pieces(self, tokenizer, pieces: list[tuple[str, bool]]) -> list[int]:
        """Template text is split at control strings (added as ids); the rest, contents included, is
        joined into runs and encoded as plain text, so runs tokenize canonically ("User: hi" as one string)."""
        controls = _controls(tokenizer)
        pattern = re.compile("(" + "|".join(map(re.escape, controls)) + ")") if controls else None
        ids: list[int] = []
        run = ""
        for text, is_content in pieces:
            parts = [text] if is_content or pattern is None else pattern.split(text)
            for j, part in enumerate(parts):
                if not is_content and j % 2 == 1:  # a control string from the template itself
                    ids += encode_text(tokenizer, run) if run else []
                    run = ""
                    ids.append(tokenizer.convert_tokens_to_ids(part))
                else:
                    run += part
        return ids + (encode_text(tokenizer, run) if run else [])

    def encode_prompt(self, tokenizer, messages: list[dict]) -> list[int]:
        """Ids of ``render_prompt(messages)``: exactly the prefix the model saw in training."""
        if messages:
            _check_messages(messages)
        return self._encode_pieces(tokenizer, self._pieces(messages, add_generation_prompt=True))

    def encode_example(self, tokenizer, messages: list[dict], max_length: int) -> dict[str, list[int]] | None:
        """{"input_ids", "labels"} for one training conversation, or None when no answer token fits.

        Labels are -100 on the prompt; the last answer and its end-of-turn token carry loss (the
        end-of-turn is added by id, so it is learned even when pad == eos: collators mask by labels and
        attention, never by pad id). Too long: the prompt keeps its tail (at most half of max_length when
        the answer needs the room) and the answer keeps its head.
        """
        prompt, answer = self._split(messages)
        p_ids = self.encode_prompt(tokenizer, prompt)
        a_ids = (encode_text(tokenizer, answer) if answer else []) + [self.end_of_turn_id(tokenizer)]
        if len(p_ids) + len(a_ids) > max_length:
            keep_p = min(len(p_ids), max(max_length - len(a_ids), max_length // 2))
            p_ids = p_ids[len(p_ids) - keep_p:] if keep_p else []
            a_ids = a_ids[:max_length - len(p_ids)]
        if not a_ids:
            return None
        return {"input_ids": p_ids + a_ids, "labels": [IGNORE_INDEX] * len(p_ids) + list(a_ids)}

    def end_of_turn_id(self, tokenizer) -> int:
        tid = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if tid is None or tid == tokenizer.unk_token_id and self.end_of_turn != tokenizer.unk_token:
            raise ModelError(f"end-of-turn token {self.end_of_turn!r} is not in the tokenizer's vocabulary")
        return tid

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end generation: the end-of-turn token, and the tokenizer's EOS if different."""
        ids = [self.end_of_turn_id(tokenizer)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ other tools
    def jinja_source(self) -> str:
        """This template as a Hugging Face ``chat_template`` (jinja): what ``save_model`` writes into the
        tokenizer files and the GGUF export embeds, so ``apply_chat_template(messages,
        add_generation_prompt=True)`` in any tool renders exactly ``render_prompt(messages)`` (tested)."""
        if self.style == "jinja":
            return str(self.chat_template)
        lit = json.dumps  # a JSON string is a valid jinja string literal (same escapes)
        labels = "".join(f"{'{% if' if i == 0 else '{% elif'} message['role'] == {lit(role)} %}}{{{{ {lit(label)} }}}}"
                         for i, (role, label) in enumerate(QUILL_LABELS.items()))
        return ((f"{{{{ {lit(self.bos)} }}}}" if self.bos else "")
                + "{% for message in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
                + labels + "{% endif %}{{ message['content'] }}"
                + f"{{% if message['role'] == 'assistant' %}}{{{{ {lit(self.end_of_turn)} }}}}{{% endif %}}"
                + "{% endfor %}{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}"
                + f"{{{{ {lit(QUILL_LABELS['assistant'])} }}}}{{% endif %}}")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TEMPLATE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PromptTemplate":
        path = Path(folder) / TEMPLATE_FILE
        if not path.is_file():
            raise ModelError(f"{path}: missing (not a quill checkpoint?)")
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw.pop("version", None)
        return cls(**raw)


def encode_text(tokenizer, text: str) -> list[int]:
    """Plain text -> ids for DAPT and message contents: no BOS/EOS added (the packer puts EOS between
    poems itself) and control strings such as ``<|endoftext|>`` inside the text stay plain text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """``encode_text`` for many texts in one call (same ids); a fast tokenizer encodes a batch in parallel,
    1.6x faster than one call per poem on 3,000 poems (docs/PERFORMANCE.md)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []


def _special_tokens(tokenizer) -> dict[str, str]:
    return {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
            if getattr(tokenizer, k, None)}


def _adds_bos(tokenizer) -> str | None:
    """The BOS string when the tokenizer always prepends one (Llama-style), so quill prompts keep it."""
    bos = tokenizer.bos_token
    if not bos or bos == tokenizer.eos_token:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else None


def _jinja_template(tokenizer, source: str, name: str) -> PromptTemplate:
    """A jinja template, checked to put each answer right after the generation prompt and end it with a
    control token (that token is the end-of-turn); a template that does not is refused."""
    probe = PromptTemplate(style="jinja", name=name, chat_template=source, special_tokens=_special_tokens(tokenizer))
    user = [{"role": "user", "content": "Q"}]
    full = "".join(t for t, _ in probe._pieces(user + [{"role": "assistant", "content": "\ue002"}], False))
    prompt = probe.render_prompt(user)
    rest = full[len(prompt):]
    if not full.startswith(prompt) or not rest.startswith("\ue002"):
        raise ModelError(f"chat template '{name}' does not put the answer right after its generation prompt")
    rest = rest[1:].lstrip()
    eot = next((c for c in _controls(tokenizer) if rest.startswith(c)), None)
    if eot is None:
        raise ModelError(f"chat template '{name}' does not end an answer with a control token")
    probe.end_of_turn = eot
    return probe


def template_for(tokenizer, name: str = "auto") -> PromptTemplate:
    """The template for a tokenizer: ``auto`` = the model's own chat template if it has one, else quill's
    ``User:/Assistant:``; ``quill`` / ``chatml`` force one (chatml needs ``<|im_start|>``/``<|im_end|>``)."""
    if name not in ("auto", "quill", "chatml"):
        raise ModelError(f"unknown template '{name}' (use auto, quill or chatml)")
    if name == "auto" and getattr(tokenizer, "chat_template", None):
        src = tokenizer.chat_template
        if isinstance(src, dict):  # several named templates: the default one
            src = src.get("default") or next(iter(src.values()))
        try:
            return _jinja_template(tokenizer, src, "model")
        except (ModelError, ValueError) as err:
            import logging
            logging.getLogger(__name__).warning("%s; using the quill template instead", err)
    if name == "chatml":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in _controls(tokenizer)]
        if missing:
            raise ModelError(f"template 'chatml' needs control tokens {missing} that this tokenizer lacks; "
                             "use template: quill")
        return _jinja_template(tokenizer, CHATML, "chatml")
    if not tokenizer.eos_token:
        raise ModelError("template 'quill' needs a tokenizer with an EOS token")
    return PromptTemplate(style="quill", name="quill", end_of_turn=tokenizer.eos_token, bos=_adds_bos(tokenizer))
