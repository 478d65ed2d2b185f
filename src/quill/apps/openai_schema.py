"""Request bodies and response chunks of the OpenAI API subset quill serves, and its error shape.

Why pydantic models here: the range checks (temperature, top_p, max_tokens) become 400 answers that name
the offending field, as OpenAI's do, before any work is queued. The ranges and help are those of
``quill.config.GenerationConfig``, the one definition of the sampling settings (what the schema cannot check,
such as a rhyme scheme's letters, ``SamplingParams`` does, and the server answers that with a 400 naming the
field too). Unknown fields are accepted and ignored (OpenAI clients send options such as ``user`` or
``logit_bias`` that a local poet has no use for); ``top_k`` and ``repetition_penalty`` are accepted as
extensions (vLLM does the same), and so are the form settings ``form``, ``lines``, ``rhyme``, ``meter``,
``retries`` and ``best_of`` (the ``openai`` client sends them with ``extra_body={...}``).
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quill.config import FORM_CHOICES, FORM_OFF, GenerationConfig


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _setting(name: str) -> Any:
    """GenerationConfig's type and bounds for ``name``, optional (None: the run's default)."""
    info = GenerationConfig.model_fields[name]
    args = get_args(info.annotation)
    base = next(a for a in args if a is not type(None)) if type(None) in args else info.annotation
    return Annotated[base, *info.metadata] | None


def _help(name: str) -> Any:
    return Field(None, description=GenerationConfig.model_fields[name].description)


Temperature, TopP, TopK = _setting("temperature"), _setting("top_p"), _setting("top_k")
RepetitionPenalty, MaxTokens, Seed = _setting("repetition_penalty"), _setting("max_new_tokens"), _setting("seed")
Form = Literal[(*FORM_CHOICES, *FORM_OFF)] | None  # "off" / "none": plain decoding over a server default form
Lines, Rhyme, Meter = _setting("lines"), _setting("rhyme"), _setting("meter")
Retries, BestOf = _setting("retries"), _setting("best_of")
FORM_FIELDS = ("form", "lines", "rhyme", "meter", "retries", "best_of")


class _Sampling(_Lenient):
    model: str
    temperature: Temperature = _help("temperature")
    top_p: TopP = _help("top_p")
    top_k: TopK = _help("top_k")
    repetition_penalty: RepetitionPenalty = _help("repetition_penalty")
    max_tokens: MaxTokens = _help("max_new_tokens")
    max_completion_tokens: MaxTokens = _help("max_new_tokens")
    seed: Seed = _help("seed")
    form: Form = _help("form")
    lines: Lines = _help("lines")
    rhyme: Rhyme = _help("rhyme")
    meter: Meter = _help("meter")
    retries: Retries = _help("retries")
    best_of: BestOf = _help("best_of")
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the answer (not included)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or not all(0 < len(s) <= 256 for s in stops)):
            raise ValueError("up to 4 non-empty strings of at most 256 characters")
        return stops or None

    def sampling(self) -> dict[str, Any]:
        """Overrides for ``Engine.params`` (None: the run's default)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty, "seed": self.seed,
                "max_new_tokens": self.max_completion_tokens or self.max_tokens,
                "stop": tuple(self.stop) if self.stop else None,
                **{k: getattr(self, k) for k in FORM_FIELDS}}

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = ""

    def as_quill(self) -> dict[str, str]:
        """Text parts joined (images and audio are not for a poet); 'developer' is OpenAI's new 'system'."""
        content = self.content or ""
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)

    @field_validator("messages")
    @classmethod
    def _last_is_not_assistant(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if all(m.role in ("system", "developer") for m in v):
            raise ValueError("needs at least one user message")
        return v


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("one prompt per request")
        return v

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ArenaBattleRequest(_Lenient):
    prompt: str = Field(..., min_length=1, max_length=4000)
    model_a: str | None = None
    model_b: str | None = None
    temperature: Temperature = _help("temperature")
    top_p: TopP = _help("top_p")
    max_tokens: int | None = Field(None, ge=1, le=1024)


class ArenaVoteRequest(_Lenient):
    id: str = Field(..., min_length=1, max_length=64)
    vote: Literal["a", "b", "tie"]


# ---------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def chat_response(cid: str, model: str, created: int, text: str, finish: str, prompt_tokens: int,
                  completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(cid: str, model: str, created: int, text: str, finish: str | None = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def completion_response(cid: str, model: str, created: int, text: str, finish: str, prompt_tokens: int,
                        completion_tokens: int) -> dict:
    body = completion_chunk(cid, model, created, text, finish)
    body["usage"] = usage(prompt_tokens, completion_tokens)
    return body
