"""The graph's sink as an async Ray actor: collects outputs for waiting clients and watches
every stage replica, failing in-flight requests with an explicit error when one dies."""

from __future__ import annotations

import asyncio

from tideflow.runtime.dataflow.collector import OutputCollector, RequestError


class _Subscriber:
    """A streaming client's side of the collector: the requests it registered whose output
    changed since its last `next_deltas` call, and an event set when one does."""

    __slots__ = ("dirty", "event")

    def __init__(self):
        self.dirty: set[str] = set()
        self.event = asyncio.Event()


class CollectorActor:
    def __init__(self):
        self.out = OutputCollector()
        self.changed: dict[str, asyncio.Event] = {}  # request id -> set when its output grew
        self.subscribers: dict[str, _Subscriber] = {}  # subscriber id -> its changed requests
        self.subscriber_of: dict[str, _Subscriber] = {}  # request id -> the subscriber streaming it
        self.dead: list[str] = []  # replicas that died
        self.closing = False

    async def register(self, entries: list[tuple[str, str | None, int]], subscriber: str | None = None) -> None:
        """Expect these requests. With `subscriber`, their deltas go out through
        `next_deltas(subscriber)`: one call for all of that client's streams."""
        sub = None if subscriber is None else self.subscribers.setdefault(subscriber, _Subscriber())
        for request_id, prompt, n in entries:
            self.out.register(request_id, prompt, n)
            self.changed[request_id] = asyncio.Event()
            if sub is not None:
                self.subscriber_of[request_id] = sub

    def _touch(self, rid: str) -> None:
        """The request's output changed (grew, failed or was cancelled): wake whoever waits on it."""
        event = self.changed.get(rid)
        if event is not None:
            event.set()
        sub = self.subscriber_of.get(rid)
        if sub is not None:
            sub.dirty.add(rid)
            sub.event.set()

    async def push(self, batch, attachments=None) -> int:
        for rid in self.out.add(batch):
            self._touch(rid)
        return 0

    async def next_deltas(self, subscriber: str) -> list[tuple[str, object]]:
        """What every stream of `subscriber` gained since its last call, once one has grown:
        (request id, `OutputDelta` | error message | None when cancelled) pairs, in no order
        across requests. Per step this is one call for all of a client's streams, where `next`
        is one per stream."""
        sub = self.subscribers.setdefault(subscriber, _Subscriber())
        while not sub.dirty:
            await sub.event.wait()
            sub.event.clear()
        changed, sub.dirty = sub.dirty, set()
        out = []
        for rid in changed:
            pending = self.out.pending.get(rid)
            if pending is None:  # cancelled
                self.subscriber_of.pop(rid, None)
                out.append((rid, None))
                continue
            if not pending.dirty:
                continue
            try:
                delta = self.out.delta(rid)
            except RequestError as exc:
                delta = str(exc)
            if self.out.finished(rid):
                self._forget(rid)
            out.append((rid, delta))
        return out

    async def collect(self, request_ids: list[str]) -> list:
        """Wait for these requests; each comes back as a RequestOutput or an error message."""
        results = []
        for rid in request_ids:
            while not self.out.finished(rid):
                await self._wait(rid)
            results.append(self._pop(rid))
        return results

    async def next(self, request_id: str):
        """What the request's output gained since the last call, once it has grown: an
        `OutputDelta` covering every row that arrived meanwhile (the last one finished), an
        error message, or None once the request was cancelled."""
        while True:
            pending = self.out.pending.get(request_id)
            if pending is None:
                return None
            if pending.dirty:
                break
            await self._wait(request_id)
        try:
            delta = self.out.delta(request_id)
        except RequestError as exc:
            delta = str(exc)
        if self.out.finished(request_id):  # its last word (a failed request is finished too)
            self._forget(request_id)
        return delta

    async def fail(self, request_ids: list[str], message: str) -> None:
        """These requests cannot go on (a stage found the replica it sends to dead)."""
        for rid in self.out.fail(message, request_ids):
            self._touch(rid)

    async def progress(self, request_ids: list[str]) -> dict[str, list[dict] | None]:
        """request id -> how far it got (`OutputCollector.progress`), for request migration."""
        return {rid: self.out.progress(rid) for rid in request_ids}

    async def cancel(self, request_id: str) -> None:
        """Forget a request whose client left; a `next` call still waiting on it returns None."""
        self.out.pending.pop(request_id, None)
        self._touch(request_id)
        self.changed.pop(request_id, None)

    async def watch(self, runs: dict) -> None:
        """`runs`: replica name -> [ObjectRef of its run()]. Returns when all have ended."""
        futures = {asyncio.ensure_future(_ended(ref[0])): name for name, ref in runs.items()}
        while futures:
            done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                name = futures.pop(fut)
                error = fut.result()
                if error is not None and not self.closing:
                    self.dead.append(name)
                    for rid in self.out.fail(f"stage replica {name} died: {error}"):
                        self._touch(rid)

    async def close(self) -> None:
        self.closing = True

    async def status(self) -> dict:
        return {"in_flight": len(self.out.unfinished()), "dead": list(self.dead)}

    async def _wait(self, rid: str) -> None:
        event = self.changed.get(rid)
        if event is None:
            return
        await event.wait()
        event.clear()

    def _forget(self, rid: str) -> None:
        self.changed.pop(rid, None)
        self.out.pending.pop(rid, None)
        self.subscriber_of.pop(rid, None)

    def _pop(self, rid: str):
        self.changed.pop(rid, None)
        self.subscriber_of.pop(rid, None)
        try:
            return self.out.pop(rid)
        except RequestError as exc:
            return str(exc)


async def _ended(ref) -> str | None:
    """None when run() returned normally; the error's text when the replica died."""
    try:
        await ref
        return None
    except Exception as exc:  # noqa: BLE001  (any failure of a replica fails its requests)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
