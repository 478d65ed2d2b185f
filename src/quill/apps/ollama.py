"""An Ollama ``Modelfile`` for a quill checkpoint: its prompt template in Go template syntax, its stop tokens
and its sampling settings, beside the GGUF export.

Why a translation: Ollama renders prompts with Go's ``text/template`` over ``.Messages`` (each with
``.Role`` and ``.Content``), not with the checkpoint's jinja; a GGUF imported without a matching ``TEMPLATE``
is prompted in a format the model never saw, the usual cause of a fine-tune that "produces gibberish in
Ollama". Two template families are translated, each checked here by rendering probe conversations with
quill's own template (and in the tests by rendering the Go template with Go itself):

* quill's ``User: … / Assistant: …`` style (GPT-2, DeepSeek-coder-base);
* ChatML (SmolLM2-Instruct, ``template: chatml``), with the model's default system message when its template
  adds one to conversations that bring none.

Any other jinja template is refused with a message that names it; ``--to gguf`` still carries it as
``tokenizer.chat_template`` for llama.cpp and LM Studio, which render jinja themselves.

The BOS token is not in ``TEMPLATE``: Ollama's tokenizer adds it, as the GGUF's ``add_bos_token`` says.
"""
from __future__ import annotations

import json

from quill.data.template import QUILL_LABELS, PromptTemplate
from quill.errors import QuillError

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_PROBE = "\ue010"  # a private-use character: where a message's content sits in a rendered probe


class TemplateNotTranslatable(QuillError, ValueError):
    """The checkpoint's chat template has no Go-template equivalent here."""


def _go_quill(template: PromptTemplate) -> str:
    labels = "".join(f"{'{{ if' if i == 0 else '{{ else if'} eq $m.Role {json.dumps(role)} }}}}{label}"
                     for i, (role, label) in enumerate(QUILL_LABELS.items()))
    return ("{{- range $i, $m := .Messages }}{{ if $i }}\n{{ end }}" + labels + "{{ end }}{{ $m.Content }}"
            f'{{{{ if eq $m.Role "assistant" }}}}{template.end_of_turn}{{{{ end }}}}{{{{ end }}}}\n'
            + QUILL_LABELS["assistant"])


def _chatml(messages: list[dict], default_system: str | None) -> str:
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    turns = "".join(f"{_IM_START}{m['role']}\n{m['content']}{_IM_END}\n" for m in messages)
    return f"{turns}{_IM_START}assistant\n"


def _default_system(template: PromptTemplate) -> str | None:
    """The system message a ChatML-shaped template adds when a conversation has none (None: it adds none)."""
    text = template.render_prompt([{"role": "user", "content": _PROBE}])
    head, user = f"{_IM_START}system\n", f"{_IM_END}\n{_IM_START}user\n{_PROBE}"
    if text.startswith(head) and user in text:
        return text[len(head):text.index(user)]
    return None


def _probes() -> list[list[dict]]:
    s, u, a = ({"role": r, "content": f"{_PROBE}{r}"} for r in ("system", "user", "assistant"))
    return [[u], [s, u], [u, a, u], [s, u, a, u, a, u]]


def _go_chatml(template: PromptTemplate) -> str:
    default = _default_system(template)
    for conv in _probes():
        if template.render_prompt(conv) != _chatml(conv, default):
            raise TemplateNotTranslatable(
                f"the checkpoint's chat template ({template.name!r}) is neither quill's nor ChatML, so it has no "
                "Ollama TEMPLATE here; `quill export RUN --to gguf` carries it as jinja (llama.cpp, LM Studio)")
    head = ""
    if default is not None:
        head = ('{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                f"{_IM_START}system\n{{{{ {json.dumps(default, ensure_ascii=False)} }}}}{_IM_END}\n{{{{ end }}}}")
    return (head + "{{- range .Messages }}" + f"{_IM_START}{{{{ .Role }}}}\n{{{{ .Content }}}}{_IM_END}\n"
            + "{{ end }}" + f"{_IM_START}assistant\n")


def go_template(template: PromptTemplate) -> str:
    """quill's template as an Ollama ``TEMPLATE``: over the same messages it renders ``render_prompt``'s text
    (less the BOS token, which Ollama adds)."""
    return _go_quill(template) if template.style == "quill" else _go_chatml(template)


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def modelfile(gguf_name: str, template: PromptTemplate, tokenizer, generation: dict) -> str:
    """The Modelfile text: ``FROM`` the GGUF beside it, the ``TEMPLATE``, a ``PARAMETER stop`` per stop token
    and the checkpoint's sampling settings. Ollama's repeat penalty cannot leave the prompt out as quill's
    does (``quill.decoding.sampling.apply_repetition_penalty``); ``repeat_last_n -1`` applies it to the whole
    context, as transformers does."""
    go = go_template(template)
    if '"""' in go:
        raise TemplateNotTranslatable('the chat template contains """, which a Modelfile cannot quote')
    stops = [tokenizer.convert_ids_to_tokens(i) for i in template.stop_token_ids(tokenizer)]
    g = generation
    lines = [f"# written by `quill export` ({template.style} template '{template.name}'); in this folder: "
             "ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}", f'TEMPLATE """{go}"""']
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines += [f"PARAMETER temperature {g['temperature']}", f"PARAMETER top_p {g['top_p']}",
              f"PARAMETER top_k {g['top_k']}", f"PARAMETER repeat_penalty {g['repetition_penalty']}",
              "PARAMETER repeat_last_n -1", f"PARAMETER num_predict {g['max_new_tokens']}"]
    return "\n".join(lines) + "\n"
