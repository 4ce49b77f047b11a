"""One role class per stage of a graph: tokenizer, engine (colocated), prefill, decode,
detokenizer; plus the router that picks a replica. Classes import lazily: use the names
here or the registry keys in `base.ROLES`."""

from __future__ import annotations

from tideflow.actors.base import ROLES, AbortUpstream, Emission, StageContext, StageRole, resolve_role, role_key

__all__ = ["ROLES", "AbortUpstream", "Emission", "StageContext", "StageRole", "resolve_role", "role_key"]
