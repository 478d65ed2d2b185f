"""What every config model shares: unknown keys are errors, assignments are validated."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quill.errors import QuillError


class ConfigError(QuillError):
    """A config problem, already phrased for the user (``path: message``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
