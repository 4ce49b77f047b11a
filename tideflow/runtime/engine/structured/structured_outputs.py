"""The engine's structured outputs: grammars checked at admission, one matcher per constrained
sequence, the scheduler's advance-and-stop hook, and each step's token bitmask.

Per step: the model runner calls `start(seqs)` before the forward; the bitmask of the rows that
sample is filled on a background thread while the forward runs (llguidance drops the GIL), and
the sampler takes it (`Future.result()`) right before it samples, applying it inside the
sampling kernel. After the step the scheduler calls `advance(seq)` for each constrained
sequence that appended a token: its matcher consumes the token, and a grammar with nothing
left but EOS ends the sequence ("stop"). Under `ignore_eos` the grammar is not offered EOS.

A sequence's matcher is rebuilt from its tokens wherever it is missing: on a decode replica
that adopted a prefilled sequence (prefill hands over the tokens and the request's params,
not the matcher: rebuilding from one token is microseconds, and llguidance's state does not
serialize), after a preemption, a replay or a restore. Exactly-once therefore holds for
structured requests as for any other: the same tokens give the same matcher, the same mask
and, with counter-based sampling, the same next token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.runtime.engine.structured.grammar_cache import DEFAULT_CAPACITY, GrammarCache
from tideflow.runtime.engine.structured.sequence_matcher import SequenceMatcher
from tideflow.sampling_params import StructuredOutputsParams

logger = logging.getLogger(__name__)


class StructuredOutputs:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int], capacity: int = DEFAULT_CAPACITY):
        """`tokenizer`: the engine's transformers tokenizer (a fast one); `vocab_size`: the
        model's logit width, which may exceed the tokenizer's (padded rows: never allowed under
        a grammar); `eos_token_ids`: every id that ends a sequence (a grammar that accepts
        allows them all)."""
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(sorted(eos_token_ids))
        self.capacity = capacity
        self._cache: GrammarCache | None = None
        self._token_words = 0  # int32 words of llguidance's mask (the tokenizer's vocabulary)
        self.words = 0  # int32 words per bitmask row: covers both vocabularies
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> GrammarCache:
        """The grammar cache, built with the first constrained request: converting a tokenizer
        for llguidance takes about a second for a large vocabulary, which no other request pays."""
        with self._lock:
            if self._cache is None:
                from llguidance.hf import from_tokenizer

                try:
                    tokenizer = from_tokenizer(self._hf_tokenizer, eos_token=list(self.eos_token_ids))
                except ValueError as exc:  # a slow (Python) tokenizer
                    raise ValueError(f"structured_outputs: this model's tokenizer cannot be used ({exc})") from None
                self._token_words = -(-tokenizer.vocab_size // 32)
                self.words = max(self._token_words, -(-self.vocab_size // 32))
                self._cache = GrammarCache(tokenizer, self.capacity)
            return self._cache

    # -- admission --------------------------------------------------------------------------
    def check(self, spec: StructuredOutputsParams) -> None:
        """Compile `spec`'s grammar (once; later calls hit the cache). ValueError naming the
        field when it does not compile."""
        self.cache.matcher(spec)

    # -- the scheduler's hook ---------------------------------------------------------------
    def advance(self, seq: Sequence) -> str | None:
        """After `seq` appended a token: consume it; "stop" when the grammar allows nothing but
        EOS now (the output is complete), "abort" when the matcher failed, else None."""
        matcher = self._matcher(seq)
        error = matcher.error
        if error is not None:
            logger.warning("request %s: structured output ended: %s", seq.request_id, error.splitlines()[0])
            return "abort"
        return "stop" if matcher.finished else None

    # -- the bitmask --------------------------------------------------------------------------
    def start(self, seqs: list[Sequence]) -> Future | None:
        """Start filling the bitmask of `seqs` (the rows a step samples) on the background
        thread; None when none is constrained. The future's result is `fill`'s."""
        rows = _constrained(seqs)
        if not rows:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tideflow-grammar")
        return self._pool.submit(self._fill, seqs, rows)

    def fill(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """[len(seqs), words] int32 bitmask of the tokens each row may sample next (every bit
        set in the rows of unconstrained sequences); None when none is constrained."""
        rows = _constrained(seqs)
        return self._fill(seqs, rows) if rows else None

    def _fill(self, seqs: list[Sequence], rows: list[int]) -> torch.Tensor:
        cache = self.cache  # built before the first mask: `words` is known from here on
        bitmask = torch.full((len(seqs), self.words), -1, dtype=torch.int32)
        words = bitmask.numpy()
        nbytes = 4 * self._token_words
        for i in rows:
            seq = seqs[i]
            matcher = self._matcher(seq, cache)
            if matcher.error is not None:  # left all-allowed: `advance` ends it after this step
                continue
            words[i] = 0  # ids past the tokenizer's (padded model rows) stay disallowed
            matcher.fill(words[i].ctypes.data, nbytes)
            if seq.params.ignore_eos:
                for eos in self.eos_token_ids:
                    if eos >> 5 < self._token_words:
                        words[i, eos >> 5] &= _CLEAR[eos & 31]
        return bitmask

    def _matcher(self, seq: Sequence, cache: GrammarCache | None = None) -> SequenceMatcher:
        """`seq`'s matcher, brought to its tokens (built from them when the sequence has none)."""
        matcher = seq.grammar
        if matcher is None:
            matcher = seq.grammar = SequenceMatcher((cache or self.cache).matcher(seq.params.structured_outputs))
        matcher.sync(seq.token_ids, seq.num_prompt_tokens)
        return matcher

    def stats(self) -> dict:
        """Grammars compiled and served from the cache, and the seconds compiling took."""
        cache = self._cache
        if cache is None:
            return {"grammars_compiled": 0, "grammar_cache_hits": 0, "grammar_compile_s": 0.0}
        return {"grammars_compiled": cache.misses, "grammar_cache_hits": cache.hits, "grammar_compile_s": cache.compile_s}


def _constrained(seqs: list[Sequence]) -> list[int]:
    return [i for i, s in enumerate(seqs) if s.params.structured_outputs is not None]


# word & _CLEAR[b] clears bit b of an int32 word (bit 31 is the sign bit: built in uint32)
_CLEAR = (~(np.uint32(1) << np.arange(32, dtype=np.uint32))).view(np.int32)
