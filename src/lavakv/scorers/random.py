"""Random scorer: seeded uniform scores, the sanity floor (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs


def random_scores(inputs: ScoringInputs, *, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) scores from a CPU ``torch.Generator`` seeded with ``seed``, then moved to the keys' device.

    The k-th real entry of a row (and KV head) gets the same draw whatever the row's padding, its place in the
    batch or the number of tokens: draws are taken as ``[tokens, kv_heads]`` (row-major, so draw (k, h) does not
    depend on the token count) and indexed by each entry's rank among its row's real entries. So a padded batch
    keeps, row by row, what each row keeps alone, on every device. Returns float32 ``[batch, kv_heads, tokens]``:
    +inf on the window, -inf on padding.
    """
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"random: seed={seed} is outside the range a torch generator takes, [-2**63, 2**64)")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.rand((inputs.tokens, inputs.kv_heads), generator=generator, dtype=torch.float32)
    valid = inputs.key_valid(inputs.kv_heads).cpu()  # [b, 1 or kv_heads, tokens]
    rank = (valid.long().cumsum(dim=-1) - 1).clamp_min(0).expand(-1, inputs.kv_heads, -1)  # [b, kv_heads, tokens]
    heads = torch.arange(inputs.kv_heads)[None, :, None].expand_as(rank)
    return inputs.finalize(draws[rank, heads].to(inputs.keys.device))
