"""The records that cross from the scheduler to the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from tideflow.runtime.engine.core.sequence import Sequence


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: which sequences run and how many of their tokens are computed."""

    seqs: list[Sequence] = field(default_factory=list)  # row -> sequence
    num_new_tokens: list[int] = field(default_factory=list)  # row -> tokens computed this step
    num_computed_tokens: list[int] = field(default_factory=list)  # row -> tokens in the cache before this step
    sample: list[bool] = field(default_factory=list)  # row -> the step reaches the last token, so a token is sampled
    preempted: list[Sequence] = field(default_factory=list)  # sequences evicted this step (recomputed later)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.num_computed_tokens.append(seq.num_computed_tokens)
        self.sample.append(seq.num_computed_tokens + num_new_tokens == seq.num_tokens)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def sampled_seqs(self) -> list[Sequence]:
        return [s for s, keep in zip(self.seqs, self.sample) if keep]

    def __len__(self) -> int:
        return len(self.seqs)
