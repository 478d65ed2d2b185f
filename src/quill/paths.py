"""Where quill keeps what it builds once per machine (converted models, Gutenberg passages, tokenized data).

One root for all of it: ``$QUILL_CACHE``, else ``$XDG_CACHE_HOME/quill``, else ``~/.cache/quill``.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    root = os.environ.get("QUILL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quill"
    return Path(root).expanduser()
