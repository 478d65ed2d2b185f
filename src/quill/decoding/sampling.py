"""Sampling settings and the logits -> next-token step, written once for every way quill generates.

Why not HF's ``LogitsProcessor`` list: at batch 1 on a CPU a decode step of a 135M model takes a few
milliseconds, and a full-vocabulary sort for top-p costs about as much as a transformer layer. The order
and arithmetic follow transformers exactly (repetition penalty, then temperature, top-k, top-p; the penalty
counts the answer's tokens, not the prompt's, and never the stop tokens, see
``apply_repetition_penalty``), but top-p
first looks at the 64 most likely tokens, and when those hold less than ``top_p`` of the mass it sorts only
the tokens that can be in the nucleus (see ``_nucleus_superset``) instead of the whole vocabulary: the same
nucleus, ~0.3 ms instead of ~5 ms (sort + a 49k-way multinomial) on SmolLM2's 49k vocabulary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, get_args

import torch
from pydantic import ValidationError

from quill.config import FORM_OFF, GenerationConfig, format_validation_error
from quill.errors import QuillError
from quill.verse.forms import FormError, FormSpec, form_spec

# Names, defaults, bounds and help of every setting live in quill.config.GenerationConfig (one definition).
SAMPLING_KEYS = tuple(GenerationConfig.model_fields)
_D = GenerationConfig()
# settings that may be None ("off"): the config's optional ones, and the seed (None: a fresh one per generation)
_NULLABLE = frozenset({"seed"} | {k for k, f in GenerationConfig.model_fields.items()
                                  if type(None) in get_args(f.annotation)})
_NUCLEUS_PROBE = 64  # candidates looked at before the wider nucleus search


class SamplingError(QuillError, ValueError):
    """A sampling setting out of range; ``param`` names it (the server's 400 answers carry it)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1 mean off;
    ``repetition_penalty`` 1 means off; ``seed`` None draws a fresh random seed per generation.
    Defaults and bounds are GenerationConfig's (``seed`` excepted: a run's default seed is its config's)."""
    temperature: float = _D.temperature
    top_p: float = _D.top_p
    top_k: int = _D.top_k
    repetition_penalty: float = _D.repetition_penalty
    max_new_tokens: int = _D.max_new_tokens
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the answer (not included), as OpenAI's ``stop``
    # form-aware decoding (see quill.verse.forms and quill.decoding.lines): None = plain decoding
    form: str | None = _D.form          # sonnet, haiku, limerick, quatrain, couplets, free, auto (reads the prompt)
    lines: int | None = _D.lines        # exact number of lines
    rhyme: str | None = _D.rhyme        # a scheme, one letter per line ("ABAB", "AABBA") or "couplets"
    meter: str | None = _D.meter        # "iambic pentameter", "trochaic tetrameter", ...
    retries: int = _D.retries           # tries per line before the best-scoring one is kept
    best_of: int = _D.best_of           # sample this many poems and return the best by the poetic score

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        try:  # exactly what a config accepts (an int for a float, 8.0 for 8; never a bool for a number)
            checked = GenerationConfig.model_validate({k: getattr(self, k) for k in SAMPLING_KEYS
                                                       if not (k == "seed" and self.seed is None)})
        except ValidationError as err:
            raise _setting_error(err) from None
        for key in SAMPLING_KEYS:  # stored as the config types them: 1 -> 1.0 for a float, 8.0 -> 8 for an int
            if key == "seed" and self.seed is None:
                continue
            object.__setattr__(self, key, getattr(checked, key))
        if not (isinstance(self.stop, tuple) and len(self.stop) <= 4
                and all(isinstance(x, str) and 0 < len(x) <= 256 for x in self.stop)):
            raise SamplingError("stop", f"must be up to 4 non-empty strings, got {self.stop!r}")
        try:  # the scheme and meter strings are read once here, so a bad one fails before any decoding
            self.form_spec()
        except FormError as err:
            raise SamplingError(err.param, str(err).split(": ", 1)[1]) from None

    def form_spec(self, prompt: str | None = None) -> FormSpec | None:
        """The shape these settings ask for (``form: auto`` reads ``prompt``), or None for plain decoding."""
        return form_spec(self.form, self.lines, self.rhyme, self.meter, prompt=prompt)

    @classmethod
    def from_settings(cls, defaults: dict[str, Any] | None = None, **overrides: Any) -> "SamplingParams":
        """Run defaults (a generation config dict; unknown keys ignored) overridden by non-None values;
        "off" or "none" switches off a setting that may be None (``form="off"`` over a run's ``form: auto``)."""
        known = {f.name for f in fields(cls)}
        merged = {k: v for k, v in (defaults or {}).items() if k in known}
        for key, value in overrides.items():
            if key not in known:
                raise SamplingError(key, f"unknown sampling setting (use {', '.join(SAMPLING_KEYS)})")
            if key in _NULLABLE and isinstance(value, str) and value.strip().lower() in FORM_OFF:
                merged[key] = None
            elif value is not None:
                merged[key] = value
        return cls(**merged)

    def with_(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _setting_error(err: ValidationError) -> SamplingError:
    """GenerationConfig's first complaint as ``SamplingError(field, "must be <= 2, got 9")``."""
    first = err.errors()[0]
    param = str(first["loc"][0]) if first.get("loc") else "settings"
    message = format_validation_error(err).splitlines()[0].split(": ", 1)[-1]
    if "got " not in message:
        shown = repr(first.get("input"))
        message += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return SamplingError(param, message)


def parse_setting(key: str, text: str) -> Any:
    """A value typed by a person (``/set top_k 40``, ``/set form off``) converted to the setting's type;
    "none" / "off" (and "random" for the seed) mean None where a setting may be None."""
    if key not in SAMPLING_KEYS:
        raise SamplingError(key, f"unknown sampling setting (use {', '.join(SAMPLING_KEYS)})")
    text = text.strip()
    if key in _NULLABLE and text.lower() in (*FORM_OFF, *(("random",) if key == "seed" else ())):
        return None
    annotation = GenerationConfig.model_fields[key].annotation
    kinds = set(get_args(annotation)) or {annotation}
    try:
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
    except ValueError:
        raise SamplingError(key, f"not {'an integer' if int in kinds else 'a number'}: {text!r}") from None
    return text.lower() if key == "form" else text


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' arithmetic over the tokens of the answer so far: positive logits are divided by the
    penalty, negative ones multiplied, so a seen token always becomes less likely. Unlike transformers,
    callers count the answer's own tokens only, not the prompt's, and never a stop token (end of turn, EOS).
    Counting the prompt penalises the very words a request names ("a poem about the sea" makes " sea" less
    likely from the answer's first token): on the demo run, leaving the prompt out kept the topic in 0.90
    of the poet's answers instead of 0.71, and the base model's in 0.94 instead of 0.78. A penalised stop
    token makes the answer's end less likely, so answers run on (stopping 0.74 -> 0.86 without it, measured
    when the prompt's end-of-turn tokens still counted). Line breaks stay penalised: exempt too, they became
    the one token a penalised model could always pick, and its verse fell apart into one word a line, or
    stopped less often (docs/USAGE.md, "The demo poet, measured", has the runs).

    ``seen`` is either a bool mask [B, V] (batches) or, for batch 1, a 1-D tensor of the distinct seen ids;
    the second form touches only those few entries, in place, instead of five passes over the vocabulary
    (which matters on a busy 2-core CPU, where every full-vocabulary op waits for a second thread)."""
    if penalty == 1.0:
        return logits
    if seen.dtype == torch.bool:
        return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    vals = logits[:, seen]
    logits[:, seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V] (any float dtype; computed in fp32). The logits
    may be modified in place (they are the model's throwaway output)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.div_(params.temperature)
    if params.top_p >= 1.0 and not params.top_k:
        probs = torch.softmax(logits, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs, index = candidates(logits, params.top_k, params.top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return index.gather(-1, choice).squeeze(-1)


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator],
                rows: list[int]) -> dict[int, int]:
    """Next token of each row in ``rows`` of ``logits`` [B, V] (penalties already applied), every row with its
    own settings and generator, so a row's draw does not depend on the other rows. Rows that share
    (temperature, top_k, top_p) get their candidates in one batched pass; only the draw is per row."""
    out: dict[int, int] = {}
    groups: dict[tuple, list[int]] = {}
    for i in rows:
        p = params[i]
        groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
    for (temperature, top_k, top_p), idx in groups.items():
        block = logits[idx]
        if temperature == 0:
            out.update(zip(idx, block.argmax(-1).tolist()))
            continue
        block = block / temperature
        if top_p >= 1.0 and not top_k:
            probs, index = torch.softmax(block, -1), None
        elif top_k:
            probs, index = candidates(block, top_k, top_p)
        else:  # top-p alone: each row's nucleus on its own, so one flat row does not sort them all
            for j, i in enumerate(idx):
                p, ix = candidates(block[j:j + 1], 0, top_p)
                out[i] = int(ix[0, int(torch.multinomial(p[0], 1, generator=generators[i])[0])])
            continue
        for j, i in enumerate(idx):
            choice = int(torch.multinomial(probs[j], 1, generator=generators[i])[0])
            out[i] = choice if index is None else int(index[j, choice])
    return out


def candidates(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens top-k / top-p keep, most likely first: (unnormalised probabilities [B, n], ids [B, n]);
    entries dropped in a row (rows keep different counts) have probability 0. ``logits`` are temperature-scaled."""
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k > 0 else 0
    if k:  # top-k: the softmax runs over the k survivors only, as after HF's -inf masking
        values, index = logits.topk(k, dim=-1)  # sorted, most likely first
        probs = torch.softmax(values, -1)
    else:
        full = torch.softmax(logits, -1)
        probs, index = full.topk(min(_NUCLEUS_PROBE, vocab), dim=-1)
        if top_p < 1.0 and bool((probs.sum(-1) < top_p).any()):  # the nucleus is wider than the probe
            probs, index = _nucleus_superset(full, top_p)
    if top_p < 1.0:
        cum = probs.cumsum(-1)
        drop = (cum - probs) >= top_p  # HF: drop where the mass of more likely tokens reaches top_p
        drop[:, 0] = False
        probs = probs.masked_fill(drop, 0.0)
    return probs, index


def _nucleus_superset(full: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (probabilities, ids) of a prefix of the sorted vocabulary that contains the top-p nucleus.

    Every token below ``eps = (1 - top_p) / (2 V)`` together holds less than ``(1 - top_p) / 2`` of the mass,
    so the tokens at or above ``eps`` hold more than ``top_p``; they are the most likely ones, so the nucleus
    (the most likely tokens until the mass *before* one reaches top_p) lies inside them, and sorting just
    them (typically a few hundred to a few thousand of 49k) gives exactly the full sort's nucleus. When
    rounding leaves no margin (top_p within 1e-5 of 1), the whole row is sorted."""
    keep = full >= (1.0 - top_p) / (2 * full.shape[-1])
    if full.shape[0] == 1:
        ids = keep[0].nonzero().squeeze(1)
        probs = full[0, ids]
        if float(probs.sum()) - top_p > 1e-5:
            probs, order = probs.sort(descending=True)
            return probs[None], ids[order][None]
    else:
        n = int(keep.sum(-1).max())
        mass = full.masked_fill(~keep, 0.0).sum(-1)
        if bool((mass - top_p > 1e-5).all()) and n <= full.shape[-1] // 8:
            return full.topk(n, dim=-1)
    return full.sort(dim=-1, descending=True)
