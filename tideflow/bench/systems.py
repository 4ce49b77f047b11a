"""The systems the offline benchmark compares, string-keyed in `SYSTEMS`.

Each generates exactly each request's `max_tokens`, greedy, EOS ignored:

- `hf-static`: `model.generate` over static, left-padded batches of `batch_size` requests
  in trace order, each batch running to its longest request. Tokens past a request's own
  `max_tokens` are waste: throughput counts only the useful ones.
- `hf-cb`: transformers' continuous batching manager (what `model.generate_batch` drives),
  with per-request `max_new_tokens` (see `HFContinuous`).
- `tideflow`: the in-process engine, `LLM.generate`; `tideflow-auto` the same with
  `cpu_bind="auto"` (computes on the cores idle when it loads: the contention benchmark).
- `vllm-default`, `vllm-2t`: vLLM's CPU build in its own environment, in its default
  configuration and on both cores (`tideflow.bench.peer_vllm`); `vllm` names both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from tideflow.bench.workloads import TraceRequest

KV_CACHE_BYTES = 1 << 30  # KV pool of tideflow and hf-cb alike
MAX_BATCH_TOKENS = 2048  # per-step token budget of tideflow and hf-cb alike
MAX_SEQS = 64  # concurrent sequences of tideflow and hf-cb alike


@dataclass(slots=True)
class Generation:
    """What one system produced for a trace."""

    token_ids: list[list[int]]  # request (trace order) -> its max_tokens generated ids
    generated_tokens: int  # every token the system generated, waste included
    wall_s: float | None = None  # the system's own timing of the trace (a peer in a subprocess), else timed here


class System(Protocol):
    """A loaded system. `generate` runs a whole trace and blocks; `close` frees what it holds.
    A system running in subprocesses also has `cpu_s()`: their CPU seconds so far."""

    def generate(self, trace: list[TraceRequest]) -> Generation: ...

    def close(self) -> None: ...


def _load_hf(model_dir: str, dtype: str, attn_implementation: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
    return model.eval()


class HFStatic:
    """`model.generate` on left-padded batches (with attention_mask) in trace order, each with
    `max_new_tokens` = `min_new_tokens` = the batch's largest `max_tokens`. EOS is switched off
    with `eos_token_id=None`, so nothing stops early and EOS may still be sampled, exactly like
    tideflow's `ignore_eos`. (With an EOS id, `min_new_tokens` alone would mask EOS out of the
    logits and change the greedy tokens; without one it has nothing to mask.)"""

    def __init__(self, model_dir: str, dtype: str, batch_size: int):
        self.model = _load_hf(model_dir, dtype, "sdpa")
        self.batch_size = batch_size
        config = self.model.config
        pad = self.model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else (config.pad_token_id or 0)

    def generate(self, trace: list[TraceRequest]) -> Generation:
        import torch

        token_ids, generated = [], 0
        for start in range(0, len(trace), self.batch_size):
            batch = trace[start : start + self.batch_size]
            width = max(len(r.prompt_token_ids) for r in batch)
            new = max(r.max_tokens for r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, r in enumerate(batch):
                ids[row, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
                mask[row, width - len(r.prompt_token_ids) :] = 1
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                    do_sample=False, eos_token_id=None, pad_token_id=self.pad_id,
                )
            out = out[:, width:]
            generated += out.numel()
            token_ids += [out[row, : r.max_tokens].tolist() for row, r in enumerate(batch)]
        return Generation(token_ids, generated)

    def close(self) -> None:
        self.model = None


class HFContinuous:
    """transformers' continuous batching. `model.generate_batch(inputs, generation_config)`
    takes one `max_new_tokens` for all inputs, so this drives the manager it wraps directly
    (`model.continuous_batching_context_manager`, as `generate_batch` does) and submits each
    request with `manager.add_request(ids, max_new_tokens=its max_tokens, eos_token_id=-1)`
    (-1: no EOS). Attention is "sdpa" (flash is unavailable on CPU; `auto_switch_to_flash`
    off). KV capacity, step token budget and batch size match tideflow's; the cache holds
    pages of 256 tokens (transformers' default). Prefix sharing stays on, as in tideflow.
    With sdpa, transformers preallocates one attention mask of [max_batch_tokens, KV capacity
    + max_batch_tokens] and slices it to the tokens each step reads."""

    def __init__(self, model_dir: str, dtype: str, attn_implementation: str = "sdpa"):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = _load_hf(model_dir, dtype, attn_implementation)
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # KV capacity in tokens, sized by tideflow's rule: the byte budget, capped at what
        # MAX_SEQS sequences of the full context length can use
        bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * self.model.dtype.itemsize
        capacity = min(KV_CACHE_BYTES // bytes_per_token, MAX_SEQS * cfg.max_position_embeddings)
        page = 256
        cb_config = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=max(1, -(-capacity // page)),
            max_batch_tokens=MAX_BATCH_TOKENS,
            max_requests_per_batch=MAX_SEQS,
            auto_switch_to_flash=False,
            seed=0,
        )
        gen_config = GenerationConfig(do_sample=False, max_new_tokens=1, eos_token_id=-1, pad_token_id=cfg.pad_token_id)
        self._stack = contextlib.ExitStack()
        self.manager = self._stack.enter_context(
            self.model.continuous_batching_context_manager(
                generation_config=gen_config, continuous_batching_config=cb_config, warmup=False
            )
        )

    def generate(self, trace: list[TraceRequest]) -> Generation:
        ids = [
            self.manager.add_request(list(r.prompt_token_ids), max_new_tokens=r.max_tokens, eos_token_id=-1)
            for r in trace
        ]
        results = {}
        while len(results) < len(ids):
            result = self.manager.get_result(timeout=1)
            if result is None:
                if not self.manager.is_running():
                    raise RuntimeError("transformers' continuous batching thread stopped early")
                continue
            if result.is_finished():
                if result.error is not None:
                    raise RuntimeError(f"hf-cb request {result.request_id} failed: {result.error}")
                results[result.request_id] = result
        token_ids = [list(results[i].generated_tokens) for i in ids]
        return Generation(token_ids, sum(map(len, token_ids)))

    def close(self) -> None:
        self._stack.close()
        self.manager = self.model = None


class Tideflow:
    """The in-process engine, with its defaults (64 sequences, 2048 tokens a step, 1 GiB KV);
    `cpu_bind` as the engine option (`tideflow-auto`: "auto", the cores idle at load)."""

    def __init__(self, model_dir: str, dtype: str, cpu_bind: str | None = None):
        from tideflow import LLM
        from tideflow.runtime.engine.cpu_binding import binding_state

        self.binding = binding_state() if cpu_bind is not None else None  # the bench process goes on after
        self.llm = LLM(
            model_dir, dtype=dtype, kv_cache_memory_bytes=KV_CACHE_BYTES, max_num_seqs=MAX_SEQS,
            max_num_batched_tokens=MAX_BATCH_TOKENS, cpu_bind=cpu_bind,
        )

    def generate(self, trace: list[TraceRequest]) -> Generation:
        from tideflow import SamplingParams

        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in trace]
        params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in trace]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        token_ids = [list(o.outputs[0].token_ids) for o in outputs]
        return Generation(token_ids, sum(map(len, token_ids)))

    def close(self) -> None:
        self.llm = None
        if self.binding is not None:
            from tideflow.runtime.engine.cpu_binding import restore_binding

            restore_binding(self.binding)


def _vllm(config: str):
    def load(model_dir, dtype, batch_size, vllm_env=None):
        from tideflow.bench.peer_vllm import VllmOffline

        return VllmOffline(model_dir, dtype, config, vllm_env)

    return load


SYSTEMS = {  # name -> (model_dir, dtype, batch_size, vllm_env=None) -> System
    "hf-static": lambda model_dir, dtype, batch_size, vllm_env=None: HFStatic(model_dir, dtype, batch_size),
    "hf-cb": lambda model_dir, dtype, batch_size, vllm_env=None: HFContinuous(model_dir, dtype),
    "tideflow": lambda model_dir, dtype, batch_size, vllm_env=None: Tideflow(model_dir, dtype),
    "tideflow-auto": lambda model_dir, dtype, batch_size, vllm_env=None: Tideflow(model_dir, dtype, cpu_bind="auto"),
    "vllm-default": _vllm("default"),
    "vllm-2t": _vllm("2t"),
}
GROUPS = {"vllm": ("vllm-default", "vllm-2t")}  # a name that stands for several systems
PEERS = ("vllm-default", "vllm-2t")  # systems that run in another environment


def expand_systems(names: list[str]) -> list[str]:
    """`names` with each group replaced by its members, duplicates dropped, order kept; raises
    ValueError on an unknown name."""
    out: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            if member not in SYSTEMS:
                raise ValueError(f"systems: expected names from {sorted([*SYSTEMS, *GROUPS])}, got {names}")
            if member not in out:
                out.append(member)
    if not out:
        raise ValueError(f"systems: expected names from {sorted([*SYSTEMS, *GROUPS])}, got {names}")
    return out
