"""Random scorer: seeded uniform scores, the sanity floor (METHODS.md §1)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs


def random_scores(inputs: ScoringInputs, *, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) scores from a CPU ``torch.Generator`` seeded with ``seed``, then moved to the keys' device.

    Same seed and shape -> same scores on every device. Returns float32 ``[batch, kv_heads, tokens]``: +inf on
    the window, -inf on padding.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scores = torch.rand((inputs.batch, inputs.kv_heads, inputs.tokens), generator=generator, dtype=torch.float32)
    return inputs.finalize(scores.to(inputs.keys.device))
