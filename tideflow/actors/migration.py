"""The roles' side of request migration (docs/reliability.md fault 10).

When a replica of a migrating stage dies, the checkpoint coordinator
(`tideflow.runtime.recovery.migration`) asks a live replica of the same stage what the dead
one held, then hands the live replicas those requests again as rows of the stage's input
schema whose `resume` column (`schemas.PROGRESS`, one entry per completion) says what the sink
has of each: its rows and output tokens. This module is what the roles do with that:

- `held_completions` (Decode) and `held_requests` (Engine) read what a dead replica held from
  its last snapshot and the input it logged since, without a model: rows of the role's
  input schema, one per unit that can move (a completion for decode, a request for engine);
- `continue_from` turns a rebuilt sequence into the completion as the sink last saw it: its
  delivered tokens appended to the prompt (the engine recomputes their K/V: a re-prefill,
  with the prefix cache helping), its logprobs, its sampling seed, and its token stream at row
  `rows`, so the next row continues the sequence numbers and the sink's (request_id, seq)
  dedup sees one stream. A seeded (or greedy) completion draws the same tokens as without
  the death: the counter-based sampler keys each draw on (seed, tokens generated).
"""

from __future__ import annotations

import pyarrow as pa

from tideflow.runtime.edges.rows import TokenStream, decode_logprobs
from tideflow.runtime.engine.core.sequence import Sequence


def progress_of(row: dict, index: int) -> dict | None:
    """The `resume` entry of completion `index` of a row, when it had delivered rows (else None:
    the completion starts as a new one would)."""
    for p in row.get("resume") or ():
        if p["index"] == index and p.get("rows"):
            return p
    return None


def seed_of(row: dict, index: int) -> int | None:
    """The sampling seed the `resume` column of a row carries for completion `index`, if any."""
    for p in row.get("resume") or ():
        if p["index"] == index:
            return p.get("sampling_seed")
    return None


def continue_from(seq: Sequence, progress: dict, stream: TokenStream) -> None:
    """Make `seq` (its prompt set) the completion as the sink last saw it: `progress`'s
    delivered output tokens and logprobs, its sampling seed when it has one, and its stream at
    row `progress["rows"]`. The caller queues it for recompute."""
    outputs = [int(t) for t in progress["token_ids"] or ()]
    del seq.token_ids[seq.num_prompt_tokens:]
    seq.token_ids.extend(outputs)
    logprobs = decode_logprobs(progress.get("logprobs"))
    if logprobs is not None:
        seq.logprobs = logprobs
        seq.cumulative_logprob = sum(e[t].logprob for e, t in zip(logprobs, outputs) if t in e)
    if progress.get("sampling_seed") is not None:
        seq.sampling_seed = progress["sampling_seed"]
    stream.resume(seq.request_id, seq.index, int(progress["rows"]), len(outputs))


def _logged_rows(logged: list[pa.RecordBatch]):
    for batch in logged:
        yield from batch.to_pylist()


def held_completions(snapshot: dict | None, logged: list[pa.RecordBatch]) -> list[dict]:
    """What a dead decode replica held, as PREFILLED rows: the live sequences (and those waiting
    for adoption) of its last snapshot, then the handovers it logged since, each completion
    once and none it had finished. Rows from the snapshot carry no K/V and no first logprobs
    (their first row was sent before the snapshot)."""
    held: dict[tuple[str, int], dict] = {}
    done = set()
    if snapshot is not None:
        done = {tuple(k) for k in snapshot.get("done", ())}
        for s in snapshot.get("seqs", ()):
            key = (s["request_id"], s["index"])
            prompt = s["token_ids"][: s["num_prompt_tokens"]]
            outputs = s["token_ids"][s["num_prompt_tokens"]:]
            if s["finished"] or not outputs or key in done:
                continue
            held[key] = {
                "request_id": key[0], "index": key[1], "prompt_token_ids": prompt, "sampling": s["params"],
                "first_token_id": outputs[0], "sampling_seed": s["sampling_seed"], "finished": False,
            }
    for row in _logged_rows(logged):
        key = (row["request_id"], row["index"])
        if row["error"] or row["finished"] or key in done:
            continue
        held.setdefault(key, row)
    return list(held.values())


def held_requests(snapshot: dict | None, logged: list[pa.RecordBatch]) -> list[dict]:
    """What a dead engine replica held, as TOKENIZED rows: the requests of its last snapshot
    (with each completion's sampling seed), then the requests it logged since, none it had
    finished. Requests with images stay with the replica (a snapshot keeps their features, not
    the images a row needs), and so does anything it rejected."""
    held: dict[str, dict] = {}
    done = set()
    if snapshot is not None:
        done = set(snapshot.get("done", ()))
        for r in snapshot.get("requests", ()):
            seqs = r["seqs"]
            if r["request_id"] in done or any(s.get("images") is not None for s in seqs) or all(s["finished"] for s in seqs):
                continue
            held[r["request_id"]] = {
                "request_id": r["request_id"], "prompt": r["prompt"], "prompt_token_ids": r["prompt_token_ids"],
                "sampling": r["params"],
                "resume": [{"index": s["index"], "sampling_seed": s["sampling_seed"]} for s in seqs],
            }
    for row in _logged_rows(logged):
        if row["error"] or row.get("images") or row["request_id"] in done:
            continue
        held.setdefault(row["request_id"], row)
    return list(held.values())
