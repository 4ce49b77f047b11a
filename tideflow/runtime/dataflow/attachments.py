"""Large payloads that ride beside an Arrow batch (prefill's KV, encoded images).

They never go into Arrow columns: the sender puts each in the Ray object store once and the
batch travels with a dict of object references keyed "request_id/index"; every replica a
batch is split to gets the references of its rows; the receiver resolves them (zero-copy
numpy on the same node).
"""

from __future__ import annotations


def put(attachments: dict | None) -> dict | None:
    """key -> ObjectRef of each payload (None: none)."""
    import ray

    return {k: ray.put(v) for k, v in attachments.items()} if attachments else None


def subset(refs: dict | None, batch) -> dict | None:
    """The attachment refs of the rows in `batch` (keys are "request_id/index")."""
    if not refs:
        return None
    rids = batch.column("request_id").to_pylist()
    index = batch.column("index").to_pylist() if "index" in batch.schema.names else [0] * len(rids)
    keys = (f"{r}/{i}" for r, i in zip(rids, index))
    return {k: refs[k] for k in keys if k in refs} or None


def resolve(refs: dict | None) -> dict | None:
    """Fetch a batch's attachments. One whose object is lost (its producer died before this
    replica fetched it: `OwnerDiedError` and the rest of Ray's `ObjectLostError`s) is left
    out, and the role recomputes what it held: decode re-prefills from the tokens, the
    engine encodes the images itself (docs/reliability.md fault 5)."""
    import ray

    if not refs:
        return None
    try:
        return dict(zip(refs, ray.get(list(refs.values()))))
    except ray.exceptions.ObjectLostError:
        found = {}
        for key, ref in refs.items():
            try:
                found[key] = ray.get(ref)
            except ray.exceptions.ObjectLostError:
                pass
        return found
