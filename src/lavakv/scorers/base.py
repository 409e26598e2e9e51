"""Inputs shared by every scorer: one layer's prefill tensors, as the attention layer computed them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lavakv.validity import per_head


@dataclass
class ScoringInputs:
    """What a scorer may look at for one layer after its exact prefill attention.

    Attributes:
        queries: all prompt queries, post-RoPE (and post q-norm), ``[batch, q_heads, tokens, head_dim]``; the
            tensor the layer computed (no copy). Most scorers only use :meth:`window_queries`.
        keys: the layer's full keys, post-RoPE, ``[batch, kv_heads, tokens, head_dim]``.
        values: the layer's full values, ``[batch, kv_heads, tokens, head_dim]``.
        valid: ``[batch, tokens]`` bool, False on padding (left padding) positions; or ``[batch, kv_heads, tokens]``
            when the heads hold different entries (a compressed layer scored again during decoding: each head's
            entries right-aligned, see :mod:`lavakv.validity`).
        scaling: the softmax scale the layer uses (usually ``head_dim ** -0.5``).
        window: the observation window w: the last ``window`` prompt positions, always kept.
        rope_inv_freq: the layer's RoPE inverse frequencies ``[rotary_dim / 2]`` (rotate-half layout), or None when
            unknown; scorers that predict future queries (expected attention) need them.
        queries_follow: the queries come after every key (a question or a reconstruction pass scored against a
            stored context, :meth:`lavakv.Session.compress_context`): each query sees every valid key, no causal mask
            inside the window.

    The runtime only builds these for prompts longer than the window (``tokens > window``). ``queries`` may hold
    only the last queries (at least the window's): they are the queries of the last ``queries.shape[2]`` columns.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    scaling: float
    window: int
    rope_inv_freq: torch.Tensor | None = None
    queries_follow: bool = False
    _window_attention: torch.Tensor | None = field(default=None, repr=False)
    _window_copy: torch.Tensor | None = field(default=None, repr=False)
    #: seconds spent computing the window attention, and how many times it was asked for (cost attribution)
    window_seconds: float = field(default=0.0, repr=False)
    window_reads: int = field(default=0, repr=False)

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def tokens(self) -> int:
        return self.keys.shape[2]

    def window_queries_copy(self) -> torch.Tensor:
        """A copy of :meth:`window_queries` (made once, shared by every cache that keeps it), so keeping it does not
        keep the full query tensor alive."""
        if self._window_copy is None:
            self._window_copy = self.window_queries().detach().clone()
        return self._window_copy

    def window_queries(self) -> torch.Tensor:
        """The last ``window`` queries, ``[batch, q_heads, window, head_dim]``."""
        start = max(0, self.queries.shape[2] - self.window)  # not ``-self.window``: ``[-0:]`` is every query
        return self.queries[:, :, start:, :]

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group size G)."""
        return self.queries.shape[1] // self.keys.shape[1]

    def window_attention(self) -> torch.Tensor:
        """Softmax attention of the window queries over all prompt keys, float32.

        Returns ``[batch, q_heads, w, tokens]`` (docs/methods.md, A_{l,h}[j, i] for j in the window): causal inside
        the window (unless ``queries_follow``), zero on padding keys. Costs O(q_heads * w * tokens * head_dim);
        never builds n x n.
        Computed once per layer and shared by every scorer that needs it.
        """
        self.window_reads += 1
        if self._window_attention is None:
            started = time.perf_counter()
            b, hq, w, d = self.window_queries().shape
            n = self.tokens
            g = self.group_size
            q = self.window_queries().float().reshape(b, self.kv_heads, g * w, d)
            logits = torch.matmul(q, self.keys.float().transpose(-1, -2)) * self.scaling  # [b, h_kv, g*w, n]
            logits = logits.view(b, hq, w, n)
            query_pos = torch.arange(n - w, n, device=q.device)
            key_pos = torch.arange(n, device=q.device)
            allowed = key_pos[None, :] <= query_pos[:, None]  # [w, n] causal inside the window
            if self.queries_follow:
                allowed = torch.ones_like(allowed)
            allowed = allowed[None, None] & self.key_valid(hq)[:, :, None, :]  # [b, 1 or hq, w, n]
            logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            self._window_attention = torch.nan_to_num(probs, nan=0.0)  # fully masked rows (padding queries) -> 0
            self.window_seconds = time.perf_counter() - started
        return self._window_attention

    def key_valid(self, heads: int) -> torch.Tensor:
        """Validity of the entries for tensors with ``heads`` heads: ``[batch, heads or 1, tokens]`` bool."""
        return per_head(self.valid, heads)

    def window_mask(self) -> torch.Tensor:
        """``[tokens]`` bool, True on the last ``window`` positions (the observation window)."""
        mask = torch.zeros(self.tokens, dtype=torch.bool, device=self.keys.device)
        mask[max(0, self.tokens - self.window) :] = True
        return mask

    def finalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Apply the shared conventions to raw scores ``[batch, kv_heads, tokens]``.

        Returns float32 scores with +inf on window positions (always kept) and -inf on padding (never kept).
        """
        scores = scores.float()
        scores = scores.masked_fill(self.window_mask()[None, None, :], float("inf"))
        return scores.masked_fill(~self.key_valid(scores.shape[1]), float("-inf"))
