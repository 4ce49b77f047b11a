"""What a request rules out or favours before sampling: `allowed_token_ids`, `bad_words` and
`logit_bias` (SamplingParams), applied to a step's logits, and the token ids of bad words.

As in vLLM, a bad word is banned in the forms the tokenizer gives it with and without a
leading space; a one-token word is never sampled, a longer one has its last token banned
whenever the completion's last tokens are the word's others.
"""

from __future__ import annotations

import torch

from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams


def constrains(params: SamplingParams) -> bool:
    """Whether a request's logits need `apply_constraints`."""
    return bool(params.logit_bias or params.allowed_token_ids is not None or params.bad_words)


def bad_words_token_ids(tokenizer, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """The token sequences of `words`, each with and without a leading space (the spaced form
    only where it tokenizes to as many tokens, so a lone space token is not banned)."""
    out: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        for ids in (plain, spaced):
            if ids and ids not in out and (ids is plain or len(ids) == len(plain)):
                out.append(ids)
    return tuple(out)


def apply_constraints(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place, row r for seqs[r]: tokens outside allowed_token_ids and banned bad-word
    tokens to -inf, then each logit_bias added."""
    vocab, dev = logits.shape[1], logits.device
    for r, seq in enumerate(seqs):
        p = seq.params
        if p.allowed_token_ids is not None:
            keep = torch.zeros(vocab, dtype=torch.bool, device=dev)
            keep[torch.tensor([t for t in p.allowed_token_ids if t < vocab], dtype=torch.long, device=dev)] = True
            logits[r].masked_fill_(~keep, float("-inf"))
        banned = banned_tokens(seq)
        if banned:
            logits[r, torch.tensor(sorted(t for t in banned if t < vocab), dtype=torch.long, device=dev)] = float("-inf")
        if p.logit_bias:
            ids = [t for t in p.logit_bias if t < vocab]
            logits[r, torch.tensor(ids, dtype=torch.long, device=dev)] += torch.tensor(
                [p.logit_bias[t] for t in ids], dtype=logits.dtype, device=dev
            )


def banned_tokens(seq: Sequence) -> set[int]:
    """The bad-word tokens `seq` may not sample next (its generated tokens end a word's prefix)."""
    out = seq.output_token_ids
    banned = set()
    for ids in seq.bad_words_ids:
        prefix = ids[:-1]
        if not prefix or (len(out) >= len(prefix) and tuple(out[len(out) - len(prefix) :]) == prefix):
            banned.add(ids[-1])
    return banned
