"""Warm-up at load: the first request finds every kernel compiled, and the engine it meets looks
freshly built (no requests, no cached prefixes, no counted hits, the seed generator untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from tideflow import LLM, SamplingParams

# A fresh process (no kernel specialised yet), a fresh numba cache directory (nothing to load
# from disk): builds an LLM, snapshots every tideflow numba kernel's specialisations, runs a
# first batch of requests that takes every CPU path (dense and paged prefill, a prefix hit, a
# chunked prompt, greedy and top-k/top-p sampling of one row and of several, decode), and prints what the batch added.
_FIRST_REQUEST = textwrap.dedent(
    """
    import json, sys
    from numba.core import event
    from numba.core.registry import CPUDispatcher
    if sys.argv[2] == "off":
        import tideflow.runtime.engine.warmup as warmup
        warmup.warm_up = lambda engine: 0.0
    import tideflow.kernels.cache_write, tideflow.kernels.paged_decode, tideflow.kernels.paged_prefill
    import tideflow.kernels.norm_rope, tideflow.kernels.sampling
    from tideflow import LLM, SamplingParams

    def kernels():
        found = {}
        for module in (tideflow.kernels.cache_write, tideflow.kernels.paged_decode,
                       tideflow.kernels.paged_prefill, tideflow.kernels.sampling, tideflow.kernels.norm_rope):
            for name, obj in vars(module).items():
                if isinstance(obj, CPUDispatcher):
                    found[f"{module.__name__}.{name}"] = len(obj.signatures)
        return found

    llm = LLM(sys.argv[1], dtype="float32", max_num_batched_tokens=64, max_num_seqs=8)
    before = kernels()
    compiled = []

    class Listener(event.Listener):
        def on_start(self, ev):
            compiled.append(str(ev.data["dispatcher"].py_func.__name__))

        def on_end(self, ev):
            pass

    event.register("numba:compile", Listener())
    shared = list(range(5, 45))
    prompts = [{"prompt_token_ids": shared + [7, 8]}, {"prompt_token_ids": shared + [9]},
               {"prompt_token_ids": list(range(5, 105))}]
    params = [SamplingParams(temperature=0, max_tokens=4),
              SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=1, n=2, max_tokens=4),
              SamplingParams(temperature=0, max_tokens=4)]
    llm.generate(prompts[:1], params[:1], use_tqdm=False)  # publishes the shared prefix
    llm.generate(prompts[1:], params[1:], use_tqdm=False)
    after = kernels()
    print(json.dumps({"new": {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
                      "compiled": compiled, "hits": llm.engine.stats().prefix_cache_hits}))
    """
)


def _first_request(model_dir: str, warmup: str, cache_dir) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_REQUEST, model_dir, warmup], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_request_compiles_no_kernel(tiny_model_dir, tmp_path):
    result = _first_request(tiny_model_dir("llama"), "on", tmp_path / "numba")
    assert result["hits"] > 0  # the batch did take the prefix-hit path
    assert result["new"] == {} and result["compiled"] == []


def test_without_warm_up_the_first_request_would_compile(tiny_model_dir, tmp_path):
    """The control: the check above can fail. With warm-up switched off, the same first batch
    specialises the attention, norm, rotary and sampling kernels itself."""
    result = _first_request(tiny_model_dir("llama"), "off", tmp_path / "numba")
    assert {"_rope_and_cache_cpu", "_add_rms_norm_cpu", "_paged_decode_cpu", "_paged_prefill_cpu",
            "_sample_cpu"} <= set(result["compiled"])
    assert result["new"]


def test_the_engine_after_warm_up_looks_freshly_built(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float32", seed=3)
    engine = llm.engine
    assert engine.requests == {}
    stats = engine.stats()
    assert (stats.num_requests_running, stats.num_requests_waiting, stats.kv_cache_usage_perc) == (0, 0, 0.0)
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits, stats.num_preemptions) == (0, 0, 0)
    # unseeded requests draw their seeds from a generator the warm-up did not touch
    fresh = torch.Generator()
    fresh.manual_seed(3)
    assert engine.generator_state() == bytes(fresh.get_state().numpy().tobytes())
    # nothing the warm-up computed is left to hit: its prompts start at token 1, so does this one
    llm.generate([{"prompt_token_ids": list(range(1, 40))}], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    assert engine.stats().prefix_cache_hits == 0


def test_an_engine_whose_context_cannot_hold_the_warm_up_prompts_still_loads_and_runs(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float32", max_model_len=4)
    out = llm.generate([{"prompt_token_ids": [5, 6]}], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2 and llm.engine.requests == {}
