"""What a stage reads and how: the source, cleaning, the split and synthesized instruction pairs (``data:``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quill.config.base import _Strict


class CleanConfig(_Strict):
    min_chars: int = Field(1, ge=0, description="drop texts shorter than this (after normalising)")
    max_chars: int | None = Field(None, gt=0, description="drop texts longer than this")
    dedupe: bool = Field(True, description="drop duplicate texts (counted in the report)")
    strip_special_tokens: bool = Field(True, description="remove tokenizer control strings such as <|endoftext|> "
                                       "found in the text (counted in the report)")


class SplitConfig(_Strict):
    val: float = Field(0.2, ge=0, lt=1, description="share held out for validation (val + test < 1)")
    test: float = Field(0.0, ge=0, lt=1, description="share held out for test (val + test < 1)")
    seed: int = Field(0, description="seed of the split: a text's split depends only on it and the seed")
    keep_existing: bool = Field(True, description="keep the splits a data set already has (hub data sets)")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val + self.test >= 1:
            raise ValueError("val + test must be < 1")
        return self


class SynthConfig(_Strict):
    """Instruction pairs made from a poem corpus, so stage 2 works offline with any corpus. A prompt names
    only what the poem measurably has (quill.verse.describe): its line count, rhyme scheme, meter, form,
    a topic it is about, its author."""
    per_poem: int = Field(1, ge=1, le=8, description="instruction pairs made from each poem")
    kinds: list[Literal["topic", "style", "title", "continue", "lines", "form", "scheme", "meter"]] = Field(
        default_factory=lambda: ["topic", "style", "title", "continue", "lines", "form", "scheme", "meter"],
        description="kinds of instruction to make, each only from poems that have what it names")
    weights: dict[str, float] = Field(default_factory=dict, description="kind -> weight of its turn when a poem "
                                      "has several applicable kinds (default 1 each): with per_poem 1, a poem that "
                                      "is a quatrain and has a topic becomes a form pair about twice as often as a "
                                      "topic pair at form: 2. Only kinds listed in kinds; weights > 0")
    combine: float = Field(0.5, ge=0, le=1, description="chance that a pair also names each further feature "
                           "the poem truly has (line count, scheme, meter, topic) besides its kind's own")
    min_topic_uses: int = Field(0, ge=0, description="keep only poems that come back to their topic (the best "
                                "noun of their opening lines, counted by stem) at least this many times: 2 keeps "
                                "passages about something rather than ones that name it in passing; the rest are "
                                "dropped and counted (0: keep every poem)")
    max_poems: int | None = Field(None, gt=0, description="after min_topic_uses, keep at most this many poems (a "
                                  "seeded sample; the rest are dropped and counted): read more rows, keep the best")
    seed: int = Field(0, description="seed of the choice of kinds, wordings and the max_poems sample")

    @model_validator(mode="after")
    def _weights(self) -> "SynthConfig":
        for kind, weight in self.weights.items():
            if kind not in self.kinds:
                raise ValueError(f"weights: {kind!r} is not one of kinds ({', '.join(self.kinds)})")
            if not weight > 0:
                raise ValueError(f"weights.{kind} must be > 0 (leave a kind out of kinds to never make it)")
        return self


class DataConfig(_Strict):
    source: str = Field(..., description="hub id, preset (poetry-foundation, poetry-instructions, gutenberg), "
                        "file (.csv .json .jsonl .parquet, .gz allowed), or a folder of .txt files")
    format: Literal["auto", "hub", "csv", "json", "jsonl", "parquet", "txt", "gutenberg"] = Field(
        "auto", description="how to read source (auto: from the preset, the file suffix or the folder)")
    kind: Literal["poems", "instructions", "synthesize", "preferences"] = Field(
        "poems", description="poems: raw texts (stage 1); instructions: prompt/completion pairs parsed from "
        "'User: … Assistant: …', prompt/completion or messages columns; synthesize: pairs made from poems; "
        "preferences: prompt/chosen/rejected pairs (kind: dpo)")
    columns: dict[str, str] = Field(default_factory=dict, description="canonical name -> column in the source: "
                                    "text, title, author, tags, conversation, prompt, completion, messages, "
                                    "chosen, rejected")
    hub_config: str | None = Field(None, description="configuration (subset) name of a hub data set")
    hub_split: str | None = Field(None, description="load only this split of a hub data set")
    passage_lines: int = Field(8, ge=1, description="gutenberg: consecutive lines grouped into one passage")
    max_rows: int | None = Field(None, gt=0, description="read at most this many rows (quick runs)")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="normalising, filtering and de-duplication")
    split: SplitConfig = Field(default_factory=SplitConfig, description="train/val/test split (de-duplicated "
                               "first; one held-out set across the run's stages)")
    synthesize: SynthConfig = Field(default_factory=SynthConfig, description="instruction pairs made from poems "
                                    "(kind: synthesize)")
