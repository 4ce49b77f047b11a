"""Each grammar compiled once per engine: an LRU of llguidance matchers keyed by the constraint.

Building a matcher compiles the grammar's lexer against the tokenizer (milliseconds for a
schema, up to a second for a large one); copying a built one is microseconds. The cache keeps
one built, never-advanced matcher per grammar and hands every sequence its own copy. Bounded,
so a server fed a new schema per request does not grow without end.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from tideflow.runtime.engine.structured.grammar import compile_grammar, grammar_key
from tideflow.sampling_params import StructuredOutputsParams

DEFAULT_CAPACITY = 256  # grammars kept per engine


class GrammarCache:
    """(kind, text) -> a built matcher prototype. Thread-safe: admission (the engine's thread)
    and the bitmask thread both ask it for matchers."""

    def __init__(self, tokenizer, capacity: int = DEFAULT_CAPACITY):
        """`tokenizer`: the `llguidance.LLTokenizer` of the engine's tokenizer."""
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.tokenizer = tokenizer
        self.capacity = capacity
        self._built: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # matchers copied from a cached grammar
        self.misses = 0  # grammars compiled
        self.compile_s = 0.0  # seconds spent compiling them

    def matcher(self, spec: StructuredOutputsParams):
        """A fresh `llguidance.LLMatcher` for `spec`, at the start of its grammar. ValueError
        naming the field when the grammar does not compile."""
        key = grammar_key(spec)
        with self._lock:
            proto = self._built.get(key)
            if proto is not None:
                self._built.move_to_end(key)
                self.hits += 1
                return proto.deep_copy()
        proto = self._build(spec)  # outside the lock: another grammar may compile meanwhile
        with self._lock:
            self._built[key] = proto
            self._built.move_to_end(key)
            while len(self._built) > self.capacity:
                self._built.popitem(last=False)
        return proto.deep_copy()

    def _build(self, spec: StructuredOutputsParams):
        from llguidance import LLMatcher

        start = time.perf_counter()
        matcher = LLMatcher(self.tokenizer, compile_grammar(spec), log_level=0)
        if matcher.is_error():  # a grammar valid on its own that this tokenizer cannot serve
            raise ValueError(f"structured_outputs.{spec.kind}: {matcher.get_error().splitlines()[0]}")
        with self._lock:
            self.misses += 1
            self.compile_s += time.perf_counter() - start
        return matcher

    def __len__(self) -> int:
        return len(self._built)
