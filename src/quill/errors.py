"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class QuillError(Exception):
    """Base for every error quill phrases for the user: the message names the file, row, column or key."""


class DataError(QuillError):
    """Bad or missing input data: the message names the file and, where known, the row or column."""


class ModelError(QuillError):
    """A model, tokenizer or checkpoint that cannot be loaded (offline hub id, missing file, remote code)."""


class RunError(QuillError):
    """A run folder that is missing, locked by another process, or incomplete."""
