"""The decoding library: the engine, batched and form-aware decoding, the KV cache, sampling and the llama.cpp
backend. It imports nothing from ``train``, ``evaluate`` or ``apps``, so every layer above decodes with it."""
