"""Prompt logprobs: which packed rows of a step predict prompt tokens whose logprobs a request
asked for (`SamplingParams.prompt_logprobs`), and their entries from those rows' logits.

Row r of a prompt predicts token r + 1, so a chunk computing tokens [c, c + n) yields the
entries of tokens c + 1 .. c + n that lie in the prompt; token 0 has none (its entry is None,
as in vLLM). The rows already covered (a sequence recomputed after preemption) are skipped,
so chunked prefill and recompute each add every entry exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tideflow.outputs import Logprob
from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch
from tideflow.runtime.engine.sampler import logprob_dicts


@dataclass(frozen=True, slots=True)
class PromptRows:
    """The prompt rows of one step, per batch row that has some: its first packed row, the
    prompt position of that row and how many consecutive rows follow."""

    batch_rows: tuple[int, ...] = ()  # rows of the ScheduledBatch
    starts: tuple[int, ...] = ()  # packed row of each one's first prompt row
    positions: tuple[int, ...] = ()  # the token position of that row (it predicts position + 1)
    counts: tuple[int, ...] = ()

    @property
    def flat(self) -> list[int]:
        """Every packed row, in order."""
        return [s + k for s, n in zip(self.starts, self.counts) for k in range(n)]


def prompt_rows(batch: ScheduledBatch) -> PromptRows:
    """The packed rows of `batch` whose logits give prompt logprobs not computed yet."""
    rows, starts, positions, counts = [], [], [], []
    start = 0
    for i, (seq, n, c) in enumerate(zip(batch.seqs, batch.num_new_tokens, batch.num_computed_tokens)):
        if seq.wants_prompt_logprobs:
            done = len(seq.prompt_logprobs) - 1 if seq.prompt_logprobs else 0  # rows covered so far
            lo, hi = max(c, done), min(c + n, seq.num_prompt_tokens - 1)
            if lo < hi:
                rows.append(i)
                starts.append(start + lo - c)
                positions.append(lo)
                counts.append(hi - lo)
        start += n
    return PromptRows(tuple(rows), tuple(starts), tuple(positions), tuple(counts))


def prompt_entries(
    logits: torch.Tensor, rows: PromptRows, batch: ScheduledBatch, vocab_size: int
) -> dict[int, list[dict[int, Logprob]]]:
    """batch row -> the prompt logprob entries its rows add, from `logits` [len(rows.flat), >= vocab]:
    each holds the actual next prompt token and the top `prompt_logprobs` tokens."""
    raw = logits[:, :vocab_size]
    dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
    out: dict[int, list[dict[int, Logprob]]] = {}
    at = 0
    for i, pos, n in zip(rows.batch_rows, rows.positions, rows.counts):
        seq = batch.seqs[i]
        targets = torch.tensor(seq.token_ids[pos + 1 : pos + 1 + n], device=raw.device)
        num_top = [min(seq.params.prompt_logprobs, vocab_size)] * n
        out[i] = logprob_dicts(raw[at : at + n].to(dtype), targets, num_top)
        at += n
    return out
