"""Poetry metrics, one small module per concern; ``quill.evaluate.poetry`` puts them together."""
