"""The settings of a preference stage (``kind: dpo``): Direct Preference Optimization on (prompt, chosen,
rejected) pairs, against the model as it entered the stage (the reference, frozen)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quill.config.base import _Strict


class DPOConfig(_Strict):
    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference: the reward is "
                        "beta * (policy log-prob - reference log-prob) of an answer")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO's -log sigmoid(reward margin); "
                                            "ipo: IPO's squared loss on the per-token log-ratio margin (TRL's form)")
    sft_weight: float = Field(0.0, ge=0, description="weight of an SFT term, the chosen answer's mean token "
                              "NLL, added to each pair's loss (RPO); 0: off")
    max_prompt: int | None = Field(None, gt=0, description="prompt tokens kept (its tail), < max_length; None: no own "
                                   "limit")
    max_length: int | None = Field(None, gt=8, description="prompt + answer tokens; None: train.block_size. "
                                   "The prompt is cut (from the left) first, then the answers; every answer "
                                   "that loses its end-of-turn token is counted (truncated_end)")

    @model_validator(mode="after")
    def _lengths(self) -> "DPOConfig":
        if self.max_prompt is not None and self.max_length is not None and self.max_prompt >= self.max_length:
            raise ValueError("max_prompt must be < max_length (the answers need room)")
        return self
