"""Roles for executor tests (importable by Ray workers through PYTHONPATH)."""

from __future__ import annotations

import time

from tideflow.actors.detokenizer import Detokenizer


class SlowDetokenizer(Detokenizer):
    """A detokenizer that takes one input batch per poll and is slow at it: the stage that
    must push back on the engine upstream."""

    def accepting(self) -> bool:
        return not self.has_work()  # one batch at a time

    def poll(self):
        out = super().poll()
        if out:
            time.sleep(0.02)  # the slowness under test, not a wait for an event
        return out
