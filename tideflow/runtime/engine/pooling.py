"""Embeddings (`SamplingParams.pooling`): which packed rows of a step a request pools, and
their part of the pooled vector from those rows' final hidden states (after the model's last
norm).

"last" pools the prompt's last token; "mean" averages every prompt token, summed chunk by
chunk (rows pooled before, by a sequence recomputed after preemption, are not added twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch

POOLING = ("last", "mean")


@dataclass(frozen=True, slots=True)
class PoolRows:
    """The pooled rows of one step: per batch row that has some, its first packed row and count."""

    batch_rows: tuple[int, ...] = ()
    starts: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()

    @property
    def flat(self) -> list[int]:
        return [s + k for s, n in zip(self.starts, self.counts) for k in range(n)]


def pool_rows(batch: ScheduledBatch) -> PoolRows:
    rows, starts, counts = [], [], []
    start = 0
    for i, (seq, n, c) in enumerate(zip(batch.seqs, batch.num_new_tokens, batch.num_computed_tokens)):
        if seq.wants_pooling:
            last = seq.num_prompt_tokens - 1
            if seq.params.pooling == "last":
                lo, hi = (last, last + 1) if c <= last < c + n and seq.pooled_count == 0 else (0, 0)
            else:
                lo, hi = max(c, seq.pooled_count), min(c + n, seq.num_prompt_tokens)
            if lo < hi:
                rows.append(i)
                starts.append(start + lo - c)
                counts.append(hi - lo)
        start += n
    return PoolRows(tuple(rows), tuple(starts), tuple(counts))


def pooled_parts(hidden: torch.Tensor, rows: PoolRows) -> dict[int, tuple[list[float], int]]:
    """batch row -> (the sum of its pooled rows' hidden states, how many), from `hidden` [len(rows.flat), H]."""
    out = {}
    at = 0
    for i, n in zip(rows.batch_rows, rows.counts):
        out[i] = (hidden[at : at + n].double().sum(dim=0).tolist(), n)
        at += n
    return out
