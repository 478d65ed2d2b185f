"""quill: turn a small open language model into a conversational poet."""

__version__ = "0.1.0"
