"""What Ray's control plane (the GCS) knows about actors, read from it directly.

Two questions the runtime asks that Ray's public API answers slowly or not at all:

- Which actors still wait for resources (no node has taken them yet)? A deploy the cluster
  cannot place is then reported, naming them, instead of hanging (`unplaced`). An actor
  whose constructor runs is placed: it has a worker process.
- Which actors are restarting (`restarting`)? A call in flight to an actor that died fails
  only after its caller has waited about a second for the death to be confirmed (measured on
  Ray 2.60), while the GCS marks the actor RESTARTING within some 30 ms; request migration
  (`tideflow.runtime.recovery.migration`) must not wait that second.

Both read Ray's global state accessor (`ray._private.state`), the one private Ray API tideflow
uses. Where it is missing or fails (another Ray version) the answer is None, "unknown", and
callers fall back on public signals: a failed call, a plain timeout.
"""

from __future__ import annotations

# GCS actor states of an actor no worker runs yet
_WAITING = ("DEPENDENCIES_UNREADY", "PENDING_CREATION")


def _global_state():
    try:
        from ray._private.state import state

        return state
    except (ImportError, AttributeError):  # pragma: no cover - another Ray version
        return None


def actor_id(handle) -> str:
    """The hex id of an actor handle."""
    return handle._actor_id.hex()


def unplaced(handles: list) -> list[int] | None:
    """The positions in `handles` of actors waiting for resources: created but not yet given a
    worker on any node (an actor running its constructor is placed). None when unknown."""
    state = _global_state()
    if state is None:
        return None
    waiting = []
    try:
        for i, handle in enumerate(handles):
            info = state.actor_table(actor_id(handle))
            if info.get("State") in _WAITING and not info.get("Pid"):
                waiting.append(i)
    except Exception:  # noqa: BLE001 - an unreadable table is "unknown", never a failure
        return None
    return waiting


def restarting() -> set[str] | None:
    """The hex ids of every actor of the cluster that Ray is restarting now (one GCS call,
    filtered there: usually an empty answer). None when unknown."""
    state = _global_state()
    if state is None:
        return None
    try:
        return set(state.actor_table(None, actor_state_name="RESTARTING"))
    except Exception:  # noqa: BLE001 - see `unplaced`
        return None
