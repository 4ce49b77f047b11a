"""One completion's grammar state: an llguidance matcher advanced over its output tokens."""

from __future__ import annotations


class SequenceMatcher:
    """A matcher that has consumed the first `num_tokens` output tokens of its sequence.

    `sync` brings it to the sequence's tokens: it consumes the ones it has not seen, and starts
    over from the grammar's start when there are fewer than it consumed (they were taken back).
    Being a pure function of the tokens, it needs no checkpoint of its own. Not thread-safe:
    the engine uses it from one thread at a time (the bitmask thread is joined before the
    sampler and the scheduler touch it)."""

    __slots__ = ("matcher", "num_tokens")

    def __init__(self, matcher):
        self.matcher = matcher  # llguidance.LLMatcher, at the start of its grammar
        self.num_tokens = 0  # output tokens consumed

    def sync(self, token_ids: list[int], start: int) -> None:
        """Consume the output tokens `token_ids[start:]` (prompt then output) not consumed yet."""
        num_output = len(token_ids) - start
        if num_output < self.num_tokens:
            self.matcher.reset()
            self.num_tokens = 0
        if num_output > self.num_tokens:
            self.matcher.consume_tokens(token_ids[start + self.num_tokens :])
            self.num_tokens = num_output

    @property
    def finished(self) -> bool:
        """Nothing but EOS may follow: the output is complete (or the matcher failed: `error`)."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str | None:
        """Why the matcher failed (a token its grammar rejects, a grammar too complex to go on), or None."""
        if not self.matcher.is_error():
            return None
        return self.matcher.get_error() or "the grammar matcher failed"

    def fill(self, row_pointer: int, num_bytes: int) -> None:
        """Write the tokens the grammar allows next as a bitmask of `num_bytes` at `row_pointer`
        (llguidance's layout, EOS allowed only where the grammar accepts). Drops the GIL."""
        self.matcher.unsafe_compute_mask_ptr(row_pointer, num_bytes)
