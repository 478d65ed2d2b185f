"""The apps on top of training, evaluation and decoding: ``quill serve`` (OpenAI API, arena, web page), chat,
``quill generate`` and ``quill sweep``. Nothing below this layer imports it; only ``quill.cli`` does."""
