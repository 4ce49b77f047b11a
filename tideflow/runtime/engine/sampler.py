"""Turns one step's logits into next tokens, batched over the rows.

Order, as in vLLM v1: allowed tokens, bad words and logit bias (logit_constraints) -> penalties -> min_tokens suppression -> (logprobs, from the raw logits) ->
grammar bitmask -> temperature -> top-k -> top-p -> min-p -> sample. Greedy rows take the argmax of the penalised
logits and are never perturbed. Random rows, and greedy rows under a grammar (structured
outputs; at top_k=1, the best allowed token), go through `tideflow.kernels.sampling.sample`,
which applies the grammar's bitmask inside the draw, and whose
draws are a pure function of (the row's seed, its counter, its logits): the counter is the
number of tokens the sequence has generated, so its draws never depend on the batch around it,
and a preempted, migrated or replayed sequence draws exactly the same tokens again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from tideflow.kernels.sampling import sample, to_int64
from tideflow.outputs import Logprob
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.runtime.engine.logit_constraints import apply_constraints, constrains
from tideflow.runtime.engine.structured.structured_outputs import StructuredOutputs

_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class SamplerOutput:
    """What one sampling step produced."""

    token_ids: list[int]  # row -> sampled token id
    logprobs: list[dict[int, Logprob] | None]  # row -> {token_id: Logprob} (sampled + top-n); None unless asked
    # batch row -> the prompt logprob entries its step adds (rows of requests asking prompt_logprobs)
    prompt_logprobs: dict[int, list[dict[int, Logprob]]] = field(default_factory=dict)
    pooled: dict[int, tuple[list[float], int]] = field(default_factory=dict)  # batch row -> (hidden sum, rows)


class Sampler:
    """Samples one token per row. Reads `seq.params` and the token ids; the only state it writes
    is `seq.sampling_seed`, fixed at a row's first random draw (and, through `structured`, the
    grammar matchers of constrained rows)."""

    def __init__(self, vocab_size: int, eos_token_ids: Iterable[int], seed: int = 0, kernel_backend: str = "auto",
                 structured: StructuredOutputs | None = None):
        """`kernel_backend`: "auto" samples with tideflow's kernel for the logits' device,
        "torch" with its torch reference (the same tokens). `structured`: the engine's
        structured outputs (grammar bitmasks); None refuses constrained rows."""
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.kernel_backend = kernel_backend
        self.structured = structured
        self.generator = torch.Generator()  # draws the seeds of rows without their own
        self.generator.manual_seed(seed & _MASK64)

    def start_masks(self, seqs: list[Sequence]) -> Future | None:
        """Start computing the grammar bitmask of `seqs` (the rows about to sample) on the
        background thread, to pass to `__call__`; None when no row is constrained."""
        return self.structured.start(seqs) if self.structured is not None else None

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], masks: Future | None = None) -> SamplerOutput:
        """logits: [len(seqs), >= vocab_size], row i is the next-token distribution of seqs[i].
        `masks`: `start_masks(seqs)` started before the forward (computed here when None)."""
        raw = logits[:, : self.vocab_size]
        random_rows, penalty_rows, min_tokens_rows, logprob_rows, constrained_rows = [], [], [], [], []
        grammar_rows = []
        for i, seq in enumerate(seqs):
            p = seq.params
            if not p.greedy:
                random_rows.append(i)
            if p.structured_outputs is not None:
                grammar_rows.append(i)
            if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
                penalty_rows.append(i)
            if seq.num_output_tokens < p.min_tokens:
                min_tokens_rows.append(i)
            if p.logprobs is not None:
                logprob_rows.append(i)
            if constrains(p):
                constrained_rows.append(i)
        if not (random_rows or penalty_rows or min_tokens_rows or logprob_rows or constrained_rows or grammar_rows):
            return SamplerOutput(raw.argmax(dim=-1).tolist(), [None] * len(seqs))
        bitmask = self._bitmask(seqs, masks) if grammar_rows else None

        dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
        dev = raw.device
        work = raw.to(dtype, copy=bool(penalty_rows or min_tokens_rows or constrained_rows))  # never modify the caller's logits
        if constrained_rows:
            idx = torch.tensor(constrained_rows, device=dev)
            rows = work[idx]
            apply_constraints(rows, [seqs[i] for i in constrained_rows])
            work[idx] = rows
        if penalty_rows:
            idx = torch.tensor(penalty_rows, device=dev)
            work[idx] = apply_penalties(work[idx], [seqs[i] for i in penalty_rows])
        if min_tokens_rows:
            self._suppress_stop_tokens(work, [(i, seqs[i]) for i in min_tokens_rows])

        tokens = work.argmax(dim=-1)
        kernel_rows = sorted(set(random_rows).union(grammar_rows))
        if kernel_rows:
            idx = torch.tensor(kernel_rows, device=dev)
            rows_mask = None if bitmask is None else bitmask[idx.cpu()].to(dev)
            tokens[idx] = self._sample_random(work[idx], [seqs[i] for i in kernel_rows], rows_mask)

        token_list = tokens.tolist()
        logprobs: list[dict[int, Logprob] | None] = [None] * len(seqs)
        if logprob_rows:
            idx = torch.tensor(logprob_rows, device=dev)
            num_top = [min(seqs[i].params.logprobs, self.vocab_size) for i in logprob_rows]
            rows = logprob_dicts(raw[idx].to(dtype), tokens[idx], num_top)
            for i, d in zip(logprob_rows, rows):
                logprobs[i] = d
        return SamplerOutput(token_list, logprobs)

    def _suppress_stop_tokens(self, logits: torch.Tensor, rows: list[tuple[int, Sequence]]) -> None:
        """Sets the EOS (unless ignore_eos) and stop-token columns of the given rows to -inf, in place."""
        row_idx, col_idx = [], []
        for i, seq in rows:
            ids = set(seq.params.stop_token_ids)
            if not seq.params.ignore_eos:
                ids.update(self.eos_token_ids)
            ids = [t for t in ids if t < self.vocab_size]
            row_idx += [i] * len(ids)
            col_idx += ids
        if col_idx:
            dev = logits.device
            logits[torch.tensor(row_idx, device=dev), torch.tensor(col_idx, device=dev)] = float("-inf")

    def _bitmask(self, seqs: list[Sequence], masks: Future | None) -> torch.Tensor:
        """[len(seqs), W] int32: the grammar bitmask of every row (all bits set where unconstrained)."""
        if masks is not None:
            return masks.result()
        if self.structured is None:
            raise ValueError("structured_outputs: this sampler has no grammar support (build it with `structured`)")
        return self.structured.fill(seqs)

    def _sample_random(self, logits: torch.Tensor, seqs: list[Sequence], bitmask: torch.Tensor | None) -> torch.Tensor:
        """logits: [R, V] penalised logits of non-greedy rows and of greedy rows under a grammar
        (`bitmask` [R, W]: the tokens each row may draw) -> [R] sampled token ids. A greedy
        row draws at top_k=1: the best allowed token, whatever its seed."""
        dev = logits.device
        params = [s.params for s in seqs]
        random = [s for s in seqs if not s.params.greedy]
        seeds = iter(self._seeds(random))

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype, device=dev)

        return sample(
            logits,
            column([1.0 if p.greedy else p.temperature for p in params], torch.float64),
            column([1 if p.greedy else p.top_k for p in params], torch.int64),
            column([1.0 if p.greedy else p.top_p for p in params], torch.float64),
            column([0.0 if p.greedy else p.min_p for p in params], torch.float64),
            column([0 if p.greedy else next(seeds) for p in params], torch.int64),
            column([s.num_output_tokens for s in seqs], torch.int64),
            bitmask=bitmask,
            backend=self.kernel_backend,
        )

    def _seeds(self, seqs: list[Sequence]) -> list[int]:
        """Each row's sampling seed, fixed on first use: the request's seed mixed with the
        completion index, or one drawn from the sampler's generator for unseeded requests."""
        fresh = [s for s in seqs if s.sampling_seed is None and s.params.seed is None]
        if fresh:
            drawn = torch.empty(len(fresh), dtype=torch.int64).random_(generator=self.generator).tolist()
            for seq, seed in zip(fresh, drawn):
                seq.sampling_seed = seed
        for seq in seqs:
            if seq.sampling_seed is None:
                seq.sampling_seed = to_int64(derive_seed(seq.params.seed, seq.index))
        return [s.sampling_seed for s in seqs]


def derive_seed(seed: int, index: int) -> int:
    """The sampling seed of completion `index` of a request seeded with `seed`: the seed itself for
    index 0, a splitmix64 mix of (seed, index) for the others, so n > 1 completions differ."""
    if index == 0:
        return seed & _MASK64
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """logits: [R, V], row r belonging to seqs[r] -> penalised copy.

    repetition (HF, over prompt + output): logit > 0 -> logit / p, else logit * p;
    then frequency and presence (OpenAI, over output): logit -= frequency * count, then -= presence * (count > 0).
    """
    params = [s.params for s in seqs]
    dtype, dev = logits.dtype, logits.device
    counts = _token_counts([s.output_token_ids for s in seqs], logits.shape[1], dtype, dev)
    if any(p.repetition_penalty != 1.0 for p in params):
        seen = _token_counts([s.token_ids[: s.num_prompt_tokens] for s in seqs], logits.shape[1], dtype, dev) > 0
        seen |= counts > 0
        rep = torch.tensor([p.repetition_penalty for p in params], dtype=dtype, device=dev).unsqueeze(1)
        rep = torch.where(seen, rep, 1.0)
        logits = torch.where(logits > 0, logits / rep, logits * rep)
    if any(p.frequency_penalty for p in params):
        freq = torch.tensor([p.frequency_penalty for p in params], dtype=dtype, device=dev).unsqueeze(1)
        logits = logits - freq * counts
    if any(p.presence_penalty for p in params):
        pres = torch.tensor([p.presence_penalty for p in params], dtype=dtype, device=dev).unsqueeze(1)
        logits = logits - pres * (counts > 0).to(dtype)
    return logits


def _token_counts(token_lists: list[list[int]], vocab: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[R, vocab] tensor: how often each token id occurs in token_lists[r] (ids >= vocab are ignored)."""
    counts = torch.zeros((len(token_lists), vocab + 1), dtype=dtype, device=device)
    flat = torch.tensor(list(itertools.chain.from_iterable(token_lists)), dtype=torch.long)
    if flat.numel():
        rows = torch.repeat_interleave(torch.arange(len(token_lists)), torch.tensor([len(t) for t in token_lists]))
        flat.clamp_(max=vocab)  # out-of-range ids land in the spare column
        counts.index_put_(
            (rows.to(device), flat.to(device)), torch.ones((), dtype=dtype, device=device), accumulate=True
        )
    return counts[:, :vocab]


def logprob_dicts(raw: torch.Tensor, tokens: torch.Tensor, num_top: list[int]) -> list[dict[int, Logprob]]:
    """raw: [R, V] unprocessed logits, tokens: [R] sampled ids, num_top[r]: top-n asked for by row r."""
    logprobs = raw.log_softmax(dim=-1)
    sampled = logprobs.gather(1, tokens.unsqueeze(1))
    ranks = ((logprobs > sampled).sum(dim=-1) + 1).tolist()
    sampled = sampled.squeeze(1).tolist()
    max_top = max(num_top)
    top_vals, top_ids = logprobs.topk(max_top, dim=-1) if max_top else (None, None)
    top_vals = top_vals.tolist() if max_top else None
    top_ids = top_ids.tolist() if max_top else None
    out = []
    for r, (token, n) in enumerate(zip(tokens.tolist(), num_top)):
        d = {token: Logprob(sampled[r], ranks[r])}
        for j in range(n):  # a sampled token inside the top-n takes its top-n rank
            d[top_ids[r][j]] = Logprob(top_vals[r][j], j + 1)
        out.append(d)
    return out
