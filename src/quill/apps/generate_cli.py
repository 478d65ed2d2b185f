"""``quill generate RUN "prompt"``: one answer streamed to stdout; ``--continue`` continues raw text.

Why two modes: a chat-tuned poet answers requests ("Write a poem about the sea"), formatted by the
template saved with its checkpoint; a DAPT-only model (or anyone finishing a poem) wants the text
continued as is — the reference's "The sea is blue, the sky is red" — with no chat formatting at all.
Sampling defaults come from the run's generation config (0.7 / 0.95 / 1.1 and its seed, so the same
command gives the same poem); flags override them, the form flags (``--form sonnet --rhyme ABAB --lines 8
--meter "iambic pentameter" --retries 4 --best-of 3``) included. Timing goes to stderr so stdout is just the poem.
"""
from __future__ import annotations

import sys
from typing import Any

from quill.decoding.engine import Engine
from quill.decoding.sampling import SamplingParams


def run_generate(run: str, prompt: str, raw: bool = False, backend: str | None = None, quantize: str | None = None,
                 **sampling: Any) -> int:
    SamplingParams.from_settings(None, **sampling)  # a bad flag fails before the model loads
    # one answer: compiling would cost more than it saves
    engine = Engine.load(run, fast="eager", backend=backend, quantize=quantize)
    params = engine.params(**sampling)
    if raw:
        ids = engine.text_prompt(prompt)
        sys.stdout.write(prompt)
    else:
        ids = engine.chat_prompt([{"role": "user", "content": prompt}])
    stream = engine.stream(ids, params, prompt_text=prompt)  # form: auto reads the request's words
    try:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    r = stream.result
    print(f"[{engine.name} ({engine.decoder.kind}): {r.completion_tokens} tokens, {r.tokens_per_s:.1f} tokens/s, "
          f"first token {1000 * (r.time_to_first_token or 0):.0f} ms, finish: {r.finish_reason}]", file=sys.stderr)
    return 0
