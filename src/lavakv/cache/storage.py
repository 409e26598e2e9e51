"""K/V storage for one cache layer: a dense growable buffer and a ragged per-head layout.

``DenseKV`` holds ``[batch, kv_heads, capacity, head_dim]`` with every head at the same length; decode-time
appends write in place and grow the buffer geometrically (the slack doubles with the number of appended tokens),
so a generation of T tokens reallocates O(log T) times, never once per token.

``RaggedKV`` holds heads of different lengths with no padding: one flat ``[entries, head_dim]`` tensor per K and
V, with each (sequence, KV head) segment stored contiguously in (batch, head, token) order. Bytes held equal the
kept entries times the bytes per entry.
"""

from __future__ import annotations

import torch

MIN_SLACK = 16  # tokens of headroom added to a dense buffer the first time it grows


class DenseKV:
    """Dense ``[batch, kv_heads, tokens, head_dim]`` K/V with in-place amortised append.

    Attributes:
        length: tokens stored per head.
        growth_events: how many times the buffer was reallocated (for tests and diagnostics).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, *, reserve: int = 0) -> None:
        # The initial content is held as given (no slack): right after prefill or compaction bytes == entries,
        # unless ``reserve`` tokens of headroom are asked for (decode-time eviction knows how many will come).
        self._keys = keys
        self._values = values
        self.length = keys.shape[2]
        self._appended = 0
        self.growth_events = 0
        if reserve > 0:
            self._grow(self.length + reserve)
            self.growth_events = 0

    @property
    def keys(self) -> torch.Tensor:
        """``[batch, kv_heads, length, head_dim]`` view of the stored keys."""
        return self._keys[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        """``[batch, kv_heads, length, head_dim]`` view of the stored values."""
        return self._values[:, :, : self.length]

    @property
    def capacity(self) -> int:
        return self._keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``[batch, kv_heads, new, head_dim]`` entries to every head, amortised O(new)."""
        new = keys.shape[2]
        if self.length + new > self.capacity:
            self._grow(self.length + new + max(MIN_SLACK, self._appended + new))
        self._keys[:, :, self.length : self.length + new] = keys
        self._values[:, :, self.length : self.length + new] = values
        self.length += new
        self._appended += new

    def _grow(self, capacity: int) -> None:
        b, h, _, d = self._keys.shape
        new_keys = self._keys.new_empty(b, h, capacity, d)
        new_values = self._values.new_empty(b, h, capacity, self._values.shape[-1])
        new_keys[:, :, : self.length] = self.keys
        new_values[:, :, : self.length] = self.values
        self._keys, self._values = new_keys, new_values
        self.growth_events += 1

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored entries as ``[batch * kv_heads * length, head_dim]`` in (batch, head, token) order."""
        return self.keys.reshape(-1, self._keys.shape[-1]), self.values.reshape(-1, self._values.shape[-1])

    def select(self, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries where ``subset`` (flat bool, (batch, head, token) order) is True, ``[selected, head_dim]``.

        Indexes the stored layout directly, so a non-contiguous prefill tensor is never copied whole.
        """
        mask = subset.view(self.keys.shape[:3])
        return self.keys[mask], self.values[mask]

    def nbytes(self) -> int:
        """Bytes of the K/V entries held (``length`` tokens per head; growth slack excluded)."""
        return self.keys.numel() * self._keys.element_size() + self.values.numel() * self._values.element_size()

    def slack_nbytes(self) -> int:
        """Bytes allocated beyond ``length`` for future appends."""
        return self._keys.nbytes + self._values.nbytes - self.nbytes()


class RaggedKV:
    """Per-head K/V of different lengths, stored flat with no padding.

    Attributes:
        keys, values: ``[entries, head_dim]``, segments in (batch, kv_head) order, tokens in original order.
        lengths: ``[batch, kv_heads]`` int64 entries per head.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> None:
        if keys.shape[0] != int(lengths.sum()):
            raise ValueError(f"ragged storage: {keys.shape[0]} entries but lengths sum to {int(lengths.sum())}")
        self.keys = keys
        self.values = values
        self.lengths = lengths
        self._gather: tuple[torch.Tensor, torch.Tensor] | None = None
        self._segments: list[tuple[int, int]] | None = None
        self._foreign: torch.Tensor | None = None
        self._offsets: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if self.lengths.numel() else 0

    def gather_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Index into the flat storage for a padded view, and its validity.

        Returns ``index [batch, kv_heads, max_len]`` int64 (clamped to a valid entry where padded) and
        ``valid [batch, kv_heads, max_len]`` bool. Computed once; the storage is immutable.
        """
        if self._gather is None:
            b, h = self.lengths.shape
            flat_len = self.lengths.reshape(-1)
            starts = torch.cumsum(flat_len, 0) - flat_len  # [b*h]
            slot = torch.arange(self.max_length, device=self.keys.device)
            valid = slot[None, :] < flat_len[:, None]  # [b*h, max_len]
            index = (starts[:, None] + slot[None, :]).clamp(max=max(self.keys.shape[0] - 1, 0))
            self._gather = (index.view(b, h, -1), valid.view(b, h, -1))
        return self._gather

    def segments(self) -> list[tuple[int, int]]:
        """``(start, length)`` in the flat storage of each (sequence, KV head) segment, in (batch, head) order.

        Computed once (one host sync); the storage is immutable.
        """
        if self._segments is None:
            self._segments, start = [], 0
            for n in self.lengths.reshape(-1).tolist():
                self._segments.append((start, n))
                start += n
        return self._segments

    def segment_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous int64 ``[batch * kv_heads]`` start row and length of each segment (for native kernels)."""
        if self._offsets is None:
            segments = self.segments()
            self._offsets = (torch.tensor([s for s, _ in segments], dtype=torch.int64),
                             torch.tensor([n for _, n in segments], dtype=torch.int64))
        return self._offsets

    def foreign_entries(self) -> torch.Tensor:
        """Bool ``[batch * kv_heads, 1, entries]``: True where an entry belongs to another segment.

        Lets one matmul of every query head against every stored entry keep each head to its own KV head. One byte
        per (segment, entry), so only small layers should ask for it; computed once.
        """
        if self._foreign is None:
            flat_len = self.lengths.reshape(-1)
            segment = torch.arange(flat_len.numel(), device=self.keys.device)
            owner = torch.repeat_interleave(segment, flat_len)
            self._foreign = (owner[None, :] != segment[:, None])[:, None, :]
        return self._foreign

    def right_aligned(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded copies with each head's entries at the END: K, V ``[batch, kv_heads, max_len, head_dim]`` and
        valid ``[batch, kv_heads, max_len]`` (False on the left). Appending a dense tail keeps every head's last
        column its most recent entry (the layout decode-time eviction scores on)."""
        b, h = self.lengths.shape
        m = self.max_length
        flat_len = self.lengths.reshape(-1)
        starts = torch.cumsum(flat_len, 0) - flat_len  # [b*h]
        slot = torch.arange(m, device=self.keys.device)
        shift = m - flat_len  # [b*h] empty slots on the left
        valid = slot[None, :] >= shift[:, None]
        index = (starts[:, None] + slot[None, :] - shift[:, None]).clamp(0, max(self.keys.shape[0] - 1, 0))
        keys = self.keys.index_select(0, index.reshape(-1)).view(b, h, m, -1)
        values = self.values.index_select(0, index.reshape(-1)).view(b, h, m, -1)
        return keys, values, valid.view(b, h, m)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transient padded copies for computing attention: K, V ``[batch, kv_heads, max_len, head_dim]``, valid.

        The copies live only for one attention call; the resident storage stays ragged.
        """
        index, valid = self.gather_index()
        b, h, m = index.shape
        keys = self.keys.index_select(0, index.reshape(-1)).view(b, h, m, -1)
        values = self.values.index_select(0, index.reshape(-1)).view(b, h, m, -1)
        return keys, values, valid

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored entries ``[entries, head_dim]`` in (batch, head, token) order."""
        return self.keys, self.values

    def select(self, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries where ``subset`` (flat bool over the stored entries) is True, ``[selected, head_dim]``."""
        return self.keys[subset], self.values[subset]

    def nbytes(self) -> int:
        """Bytes of K/V tensors held (exactly entries x bytes per entry)."""
        return self.keys.nbytes + self.values.nbytes


def compact(keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, reserve: int = 0
            ) -> DenseKV | RaggedKV:
    """Store selected entries: dense when every head kept the same number, ragged otherwise.

    Args:
        keys, values: ``[entries, head_dim]`` selected entries in (batch, head, token) order (fresh tensors).
        lengths: ``[batch, kv_heads]`` entries per head.
        reserve: decode tokens of headroom for a dense result (a ragged one appends to a separate tail).
    """
    b, h = lengths.shape
    first = int(lengths.reshape(-1)[0]) if lengths.numel() else 0
    if bool((lengths == first).all()):
        return DenseKV(keys.view(b, h, first, keys.shape[-1]), values.view(b, h, first, values.shape[-1]),
                       reserve=reserve)
    return RaggedKV(keys, values, lengths)
