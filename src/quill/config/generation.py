"""The sampling settings: names, defaults, bounds and help, defined once (see the comment below)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from quill.config.base import _Strict


# The one definition of the sampling settings: names, defaults, bounds and help. ``SamplingParams`` (the
# engine's settings object) validates through this model, the OpenAI schema copies its bounds, and the CLI
# flags, ``/set`` and the saved generation_config.json all use these names. quill.verse.forms reads its form
# and meter vocabulary from here; the rhyme and meter validators below accept what it parses
# (tests/test_form_settings.py checks that they agree).
FORM_CHOICES = ("sonnet", "haiku", "limerick", "quatrain", "couplets", "free", "auto")
FORM_OFF = ("off", "none")      # typed or sent to switch a run's default form off (plain decoding)
MAX_LINES = 64
MAX_SEED = 2 ** 63 - 1
METER_FEET = ("iambic", "trochaic", "anapestic", "dactylic")
METER_MEASURES = ("monometer", "dimeter", "trimeter", "tetrameter", "pentameter", "hexameter", "heptameter")


class GenerationConfig(_Strict):
    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy; higher: more surprising (OpenAI's 0 to 2)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: keep the most likely tokens holding this "
                         "share of the probability (1: off)")
    top_k: int = Field(0, ge=0, description="keep only the k most likely tokens (0: off)")
    repetition_penalty: float = Field(1.1, gt=0, le=10, description="> 1 makes tokens the answer already "
                                      "used less likely (the prompt's are not counted; 1: off)")
    max_new_tokens: int = Field(160, ge=1, le=1 << 20, description="most tokens in one answer")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed: the same seed gives the same poem (a "
                      "request or a chat without one draws a fresh seed)")
    form: Literal[FORM_CHOICES] | None = Field(None, description="form-aware decoding: sonnet, haiku, limerick, "
                                               "quatrain, couplets, free, or auto (read the request's words); "
                                               "none or off: plain decoding")
    lines: int | None = Field(None, ge=1, le=MAX_LINES, description="exact number of lines")
    rhyme: str | None = Field(None, min_length=1, max_length=256, description="rhyme scheme, one letter per line "
                              "(ABAB, AABBA; repeated to fill the lines) or 'couplets'")
    meter: str | None = Field(None, max_length=64, description="meter, FOOT [MEASURE]: e.g. 'iambic pentameter', "
                              "'trochaic tetrameter'")
    retries: int = Field(4, ge=1, le=16, description="form-aware decoding: tries per line before the best one is kept")
    best_of: int = Field(1, ge=1, le=16, description="sample this many answers and return the best by the poetic score")

    @field_validator("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "lines",
                     "retries", "best_of", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # pydantic would read true as 1
            raise ValueError(f"must be a number, got {v!r}")
        return v

    @field_validator("rhyme")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        """The schemes quill.verse.forms.expand_rhyme reads: capital letters (spaces and case ignored) or couplets."""
        if v is None or v.strip().lower() == "couplets":
            return v
        letters = v.strip().replace(" ", "").upper()
        if not letters or not all("A" <= c <= "Z" for c in letters) or len(letters) > MAX_LINES:
            raise ValueError(f"use capital letters, one per line (ABAB, AABBA) or 'couplets', got {v!r}")
        return v

    @field_validator("meter")
    @classmethod
    def _meter(cls, v: str | None) -> str | None:
        """The meters quill.verse.forms.parse_meter reads: FOOT [MEASURE], in either order."""
        if v is None:
            return v
        parts = v.lower().replace("-", " ").split()
        feet = [p for p in parts if p in METER_FEET]
        measures = [p for p in parts if p in METER_MEASURES]
        if not feet or len(parts) > 2 or (len(parts) == 2 and not measures):
            raise ValueError(f"use FOOT [MEASURE] with FOOT one of {', '.join(METER_FEET)} and MEASURE one of "
                             f"{', '.join(METER_MEASURES)}, got {v!r}")
        return v
