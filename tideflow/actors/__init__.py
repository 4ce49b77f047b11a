"""One role class per stage of a graph: tokenizer, engine (colocated), prefill, decode,
detokenizer, encoder (a multimodal model's vision tower); plus the router that picks a replica. Classes import lazily: use the names
here or the registry keys in `registry.ROLES`. The expert actors of an expert-parallel engine are no stage
role: an engine-owning role starts them itself (`expert_actors=K`, tideflow.runtime.parallel)."""

from __future__ import annotations

from tideflow.actors.registry import ROLES, resolve_role, role_key
from tideflow.runtime.dataflow.role import AbortUpstream, Emission, StageContext, StageRole

__all__ = ["ROLES", "AbortUpstream", "Emission", "StageContext", "StageRole", "resolve_role", "role_key"]
