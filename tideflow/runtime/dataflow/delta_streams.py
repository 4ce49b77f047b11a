"""The client side of streaming: every stream a graph handle copy runs, fed by one call.

Each streaming request used to wait on its own `collector.next` call, so a step that grew N
streams cost N actor calls into the collector and N replies, all competing with the engine
for the same cores. `DeltaStreams` keeps one `collector.next_deltas(subscriber)` call in
flight for all of this process's streams: one call per step brings every stream's delta, and
each goes to its stream's queue here. The pump runs while any stream is open.
"""

from __future__ import annotations

import asyncio


class DeltaStreams:
    """Open a stream (`open`) before the request is registered under `subscriber`, read its
    deltas from the returned queue (an `OutputDelta`, an error message, or None once cancelled),
    and `close` it when done."""

    def __init__(self, collector, subscriber: str):
        self.collector = collector
        self.subscriber = subscriber
        self.queues: dict[str, asyncio.Queue] = {}
        self.pump: asyncio.Task | None = None

    def open(self, request_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = queue
        if self.pump is None or self.pump.done() or self.pump.get_loop() is not asyncio.get_running_loop():
            self.pump = asyncio.get_running_loop().create_task(self._run())
        return queue

    def close(self, request_id: str) -> None:
        self.queues.pop(request_id, None)

    async def _run(self) -> None:
        try:
            while self.queues:
                for request_id, delta in await self.collector.next_deltas.remote(self.subscriber):
                    queue = self.queues.get(request_id)
                    if queue is not None:
                        queue.put_nowait(delta)
        except Exception as exc:  # noqa: BLE001  (the collector is gone: every open stream fails)
            for queue in self.queues.values():
                queue.put_nowait(f"the graph's collector failed: {type(exc).__name__}: {exc}")
