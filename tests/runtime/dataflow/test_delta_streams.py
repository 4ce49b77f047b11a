"""Streams fed by one collector call per step: `CollectorActor.next_deltas` hands a subscriber
what all of its streams gained, and `DeltaStreams` routes each delta to its stream's queue.
Both run here without Ray (the actor is a plain class; a stand-in handle awaits its methods)."""

from __future__ import annotations

import asyncio

from tideflow.runtime.dataflow.collector_actor import CollectorActor
from tideflow.runtime.dataflow.delta_streams import DeltaStreams

from tests.runtime.dataflow.test_collector import batch, error_row, row


def test_one_call_brings_every_changed_stream_of_a_subscriber():
    async def scenario():
        c = CollectorActor()
        await c.register([("a", "p", 1), ("b", "p", 1), ("c", "p", 1)], "client-1")
        await c.register([("other", "p", 1)])  # no subscriber: streamed through next(), not here
        await c.push(batch(row("a", 0, [1], "x"), row("b", 0, [2], "y"), row("other", 0, [3], "z")))
        first = dict(await c.next_deltas("client-1"))
        assert set(first) == {"a", "b"}
        assert first["a"].completions[0].token_ids == [1] and not first["a"].finished
        # two pushes before the next call: one delta covering both, then the stream is done
        await c.push(batch(row("a", 1, [4], "w")))
        await c.push(batch(row("a", 2, [5], "v", finish="length")))
        await c.fail(["c"], "stage replica engine/0 died")
        await c.cancel("b")
        second = dict(await c.next_deltas("client-1"))
        assert second["a"].completions[0].token_ids == [4, 5] and second["a"].finished
        assert second["b"] is None  # cancelled
        assert "died" in second["c"]  # an error message, as next() gives it
        assert "a" not in c.subscriber_of and "c" not in c.subscriber_of  # finished streams are forgotten
        # the caller waits until something changes
        waiter = asyncio.ensure_future(c.next_deltas("client-1"))
        await asyncio.sleep(0)
        assert not waiter.done()
        await c.register([("d", "p", 1)], "client-1")
        await c.push(batch(error_row("d", "bad input")))
        assert dict(await waiter)["d"] == "request d: bad input"

    asyncio.run(scenario())


class _Remote:
    """`actor.method.remote(...)` for a local object: an awaitable, as Ray's ObjectRef is."""

    def __init__(self, method):
        self.method = method

    def remote(self, *args):
        return asyncio.ensure_future(self.method(*args))


class _Handle:
    def __init__(self, actor):
        self.next_deltas = _Remote(actor.next_deltas)


def test_each_delta_reaches_its_own_stream_and_closed_streams_are_skipped():
    async def scenario():
        c = CollectorActor()
        streams = DeltaStreams(_Handle(c), "client-1")
        qa, qb = streams.open("a"), streams.open("b")
        await c.register([("a", "p", 1), ("b", "p", 1)], "client-1")
        await c.push(batch(row("a", 0, [1], "x"), row("b", 0, [2], "y", finish="stop")))
        da, db = await asyncio.wait_for(qa.get(), 5), await asyncio.wait_for(qb.get(), 5)
        assert da.request_id == "a" and db.request_id == "b" and db.finished
        streams.close("b")
        await c.push(batch(row("a", 1, [3], "z", finish="length")))
        assert (await asyncio.wait_for(qa.get(), 5)).finished
        streams.close("a")
        assert streams.queues == {}

    asyncio.run(scenario())


def test_a_failed_collector_fails_every_open_stream():
    class _Dead:
        class next_deltas:  # noqa: N801  (the shape of an actor method)
            @staticmethod
            def remote(subscriber):
                async def fail():
                    raise RuntimeError("actor died")

                return fail()

    async def scenario():
        streams = DeltaStreams(_Dead(), "client-1")
        q = streams.open("a")
        message = await asyncio.wait_for(q.get(), 5)
        assert isinstance(message, str) and "collector failed" in message and "actor died" in message

    asyncio.run(scenario())
