"""Which examples each training step reads: a pure function of (n, global batch, step, seed).

Resuming at any step replays exactly the batches of an uninterrupted run with no iterator state to save, and
every DDP rank computes the same global batch and takes its own slice of it with `shard`.
"""
from __future__ import annotations

import functools

import torch

from mcm_fast._checks import check_int

SEED_STRIDE = 1_000_003  # epoch e of seed s draws its permutation from s * SEED_STRIDE + e
MAX_EXAMPLES = 2**31  # a permutation of more would take over 16 GiB


def batch_indices(n: int, global_batch: int, step: int, seed: int) -> torch.Tensor:
    """The example indices of training step `step` (0-based): LongTensor [global_batch], no index repeated.

    Epoch e is torch.randperm(n) seeded with (seed * 1_000_003 + e) mod 2^64, cut into n // global_batch batches
    (the tail is dropped); step k reads batch k % (n // global_batch) of epoch k // (n // global_batch).
    """
    for name, value, low in (("n", n, 1), ("global_batch", global_batch, 1), ("step", step, 0)):
        check_int(name, value, low)
    if n > MAX_EXAMPLES:
        raise ValueError(f"n: expected at most {MAX_EXAMPLES} examples, got {n}")
    check_int("seed", seed)
    if global_batch > n:
        raise ValueError(f"global_batch: expected at most n={n} (the data set's size), got {global_batch}")
    epoch, i = divmod(step, n // global_batch)
    return _permutation(int(n), int(seed), epoch)[i * global_batch:(i + 1) * global_batch].clone()


def shard(indices: torch.Tensor, part: int, parts: int) -> torch.Tensor:
    """The contiguous slice of a global batch that micro-batch or rank `part` of `parts` reads.

    Slices 0..parts-1 concatenate back to the global batch, so any split of the work sees the same examples.
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
        raise TypeError(f"indices: expected a 1-d tensor (a global batch from batch_indices), got {indices!r:.80}")
    check_int("parts", parts, 1)
    check_int("part", part, 0)
    if part >= parts:
        raise ValueError(f"part: expected a part in [0, {parts - 1}], got {part}")
    if len(indices) % parts:
        raise ValueError(f"global_batch: expected a multiple of parts={parts}, got a batch of {len(indices)}")
    size = len(indices) // parts
    return indices[part * size:(part + 1) * size]


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch `epoch`'s order of the n examples; cached because randperm(60000) costs ~8 ms, redone every step."""
    generator = torch.Generator().manual_seed((seed * SEED_STRIDE + epoch) % 2**64)
    return torch.randperm(n, generator=generator)
