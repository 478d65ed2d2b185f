"""The KV cache of batched decoding: transformers' ``DynamicCache`` with room to grow, and rows that change hands.

Why not the stock ``DynamicLayer``: it appends a decode step's key/value column with ``torch.cat``, which
copies the whole cache every step. At batch 24 and a few hundred columns that is ~0.3 GB moved per step on a
CPU, as much as reading the model's weights. ``GrowingLayer`` keeps keys and values in a buffer with spare
columns (doubled when full), so a step writes one column; what the model sees (``keys``, ``values``) is a
view of the filled part, so attention and masks work unchanged.

``batch_select_indices`` drops finished rows (``decoding/batch.py`` does it once no request is waiting for
a slot, so the batch's tail does not compute for rows that have ended). ``place`` puts a new request's
prefilled prompt into a row of a running batch (continuous batching, see ``decoding/batch.py``): its
key/values go in the row's last columns before the current one, and the row's attention mask (kept by the
caller) hides everything older.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose tensors are views of buffers with spare columns: appending is a write."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._n = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, k = self._n, key_states.shape[-2]
        if self._k is None or n + k > self._k.shape[-2]:
            self._k = _grown(self._k, key_states, n, n + k)
            self._v = _grown(self._v, value_states, n, n + k)
        self._k[..., n:n + k, :] = key_states
        self._v[..., n:n + k, :] = value_states
        self._n = n + k
        self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and self._k is not None:
            self._n = self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None
        self._n = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` (the buffers too, so the next step still writes in place)."""
        if self.is_initialized and self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
        else:
            super().batch_select_indices(indices)


def _grown(old: torch.Tensor | None, like: torch.Tensor, filled: int, need: int) -> torch.Tensor:
    """A buffer of at least ``need`` columns (twice that, at least 64) holding ``old``'s first ``filled``."""
    shape = list(like.shape)
    shape[-2] = max(2 * need, 64)
    new = torch.empty(shape, dtype=like.dtype, device=like.device)
    if old is not None and filled:
        new[..., :filled, :] = old[..., :filled, :]
    return new


def decode_cache(model) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers grow in place (sliding-window and other
    special layers keep transformers' own class)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def can_place(cache: DynamicCache) -> bool:
    """Whether rows of ``cache`` can change hands (every layer a plain full-attention one)."""
    return all(isinstance(layer, DynamicLayer) and not getattr(layer, "is_sliding", False) for layer in cache.layers)


def place(cache: DynamicCache, rows: list[int], prefilled: DynamicCache, end: int) -> None:
    """Copy ``prefilled`` (a prefill of len(rows) prompts, one per row, left-padded to a common width w) into
    ``cache`` rows ``rows`` at columns [end - w, end)."""
    for layer, new in zip(cache.layers, prefilled.layers):
        w = new.keys.shape[-2]
        for j, row in enumerate(rows):
            layer.keys[row, :, end - w:end] = new.keys[j]
            layer.values[row, :, end - w:end] = new.values[j]
