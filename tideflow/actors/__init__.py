"""One role class per stage of a graph: tokenizer, engine (colocated), prefill, decode,
detokenizer, encoder (a multimodal model's vision tower); plus the router that picks a replica. Classes import lazily: use the names
here or the registry keys in `base.ROLES`. `experts.Experts` is no stage role: an
engine-owning role starts those expert actors itself (`expert_actors=K`)."""

from __future__ import annotations

from tideflow.actors.base import ROLES, AbortUpstream, Emission, StageContext, StageRole, resolve_role, role_key

__all__ = ["ROLES", "AbortUpstream", "Emission", "StageContext", "StageRole", "resolve_role", "role_key"]
