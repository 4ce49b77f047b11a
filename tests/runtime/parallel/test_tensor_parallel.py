"""Tensor-parallel shards of the packed decoder: two gloo processes (no Ray) give the logits of
the unsharded forward, in float64, over packed steps that hold every kind of row."""

from __future__ import annotations

import pytest
import torch

from tideflow.models.loader import load_model
from tideflow.models.packed_decoder import PackedDecoder
from tideflow.models.loader import check_divisible
from tideflow.runtime.parallel.tensor_parallel import shard_decoder, shard_model
from tideflow.testing.tiny_models import tiny_config
from tideflow.runtime.engine.attention import PagedKVCache, attend_function, register_attention
from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch
from tideflow.runtime.engine.model_runner import ModelRunner
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams

WORLD = 2
BLOCK_SIZE = 4
NUM_BLOCKS = 16
BACKEND = "auto"


def _steps() -> list[ScheduledBatch]:
    """Two packed steps: a fresh prompt and a first chunk; then a decode row, a later chunk
    (paged prefill) and another fresh prompt."""
    g = torch.Generator().manual_seed(7)
    ids = lambda n: torch.randint(5, 500, (n,), generator=g).tolist()  # noqa: E731
    params = SamplingParams(max_tokens=4)
    a = Sequence("a", 0, ids(7), 7, params, 4, block_table=[0, 1])
    b = Sequence("b", 0, ids(13), 13, params, 4, block_table=[2, 3, 4, 5])
    c = Sequence("c", 0, ids(5), 5, params, 4, block_table=[6, 7])
    first = ScheduledBatch([a, b], [7, 6], [0, 0], [True, False])
    a_next = Sequence("a", 0, a.token_ids + ids(1), 7, params, 4, block_table=[0, 1])
    second = ScheduledBatch([a_next, b, c], [1, 7, 5], [7, 6, 0], [True, True, True])
    return [first, second]


def _head_dim(text) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _runner(model, decoder, kv_heads_per_rank: int) -> ModelRunner:
    text = model.config.get_text_config()
    cache = PagedKVCache.allocate(
        text.num_hidden_layers, NUM_BLOCKS, BLOCK_SIZE, kv_heads_per_rank, _head_dim(text), torch.float64, "cpu"
    )
    return ModelRunner(model, cache, sampler=None, packed=decoder)


def _load(path: str):
    model, config = load_model(path, dtype="float64", attn_implementation=register_attention(BACKEND), kernel_backend=BACKEND)
    return model, config.get_text_config()


# qwen2: q/k/v biases; qwen2_moe: a shared expert; qwen3: per-head q/k norms; gemma: its own norms
KINDS = ("llama", "qwen2", "mixtral", "qwen2_moe", "qwen3", "gemma")


def _rank(rank: int, paths: dict[str, str], port: int, out_dir: str) -> None:
    """One rank (a spawned process): for each model, its shard's logits of every step, saved
    for the parent. One process group serves all the models, one after the other."""
    from tideflow.runtime.parallel.shard_worker import all_reduce_over, join_group

    torch.set_num_threads(1)
    group = join_group("127.0.0.1", port, rank, WORLD, torch.device("cpu"), "127.0.0.1")
    for kind, path in paths.items():
        model, text = _load(path)
        decoder = shard_decoder(model, attend_function(BACKEND), rank, WORLD, all_reduce_over(group))
        runner = _runner(model, decoder, text.num_key_value_heads // WORLD)
        torch.save([runner.forward_only(step) for step in _steps()], f"{out_dir}/{kind}-rank{rank}.pt")


@pytest.fixture(scope="module")
def shard_logits(tiny_model_dir, tmp_path_factory):
    """kind -> rank -> the logits of every step, from two spawned gloo ranks (spawned once:
    starting a process is most of the cost)."""
    import torch.multiprocessing as mp

    from tideflow.runtime.parallel.shard_worker import host_store

    out = tmp_path_factory.mktemp("shards")
    store = host_store("127.0.0.1")
    mp.spawn(_rank, args=({k: tiny_model_dir(k) for k in KINDS}, store.port, str(out)), nprocs=WORLD, join=True)
    return {k: [torch.load(out / f"{k}-rank{r}.pt") for r in range(WORLD)] for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_two_gloo_ranks_give_the_unsharded_logits(kind, tiny_model_dir, shard_logits):
    model, text = _load(tiny_model_dir(kind))
    assert text.num_attention_heads % WORLD == 0 and text.num_key_value_heads % WORLD == 0
    reference = _runner(model, PackedDecoder(model, attend_function(BACKEND)), text.num_key_value_heads)
    expected = [reference.forward_only(step) for step in _steps()]
    for rank, got in enumerate(shard_logits[kind]):
        for step, (g, e) in enumerate(zip(got, expected)):
            assert g.shape == e.shape == (1 + 2 * step, text.vocab_size)
            torch.testing.assert_close(g, e, rtol=0, atol=1e-12, msg=f"{kind} rank {rank} step {step}")


@pytest.mark.parametrize("kind", KINDS)
def test_shards_hold_their_part_of_every_split_weight(kind, tiny_model_dir):
    full, text = _load(tiny_model_dir(kind))
    shard, _ = _load(tiny_model_dir(kind))
    shard_model(shard, 1, WORLD)
    d = _head_dim(text)
    fa, sa = full.model.layers[0].self_attn, shard.model.layers[0].self_attn
    q_rows = slice(text.num_attention_heads // WORLD * d, text.num_attention_heads * d)
    kv_rows = slice(text.num_key_value_heads // WORLD * d, text.num_key_value_heads * d)
    assert torch.equal(sa.q_proj.weight, fa.q_proj.weight[q_rows])
    assert torch.equal(sa.k_proj.weight, fa.k_proj.weight[kv_rows])
    assert torch.equal(sa.v_proj.weight, fa.v_proj.weight[kv_rows])
    assert torch.equal(sa.o_proj.weight, fa.o_proj.weight[:, q_rows])
    if sa.q_proj.bias is not None:
        assert torch.equal(sa.q_proj.bias, fa.q_proj.bias[q_rows])
        assert torch.equal(sa.v_proj.bias, fa.v_proj.bias[kv_rows])
    fm, sm = full.model.layers[0].mlp, shard.model.layers[0].mlp
    if hasattr(fm, "gate_proj"):  # a dense MLP
        inter = text.intermediate_size
        assert torch.equal(sm.gate_proj.weight, fm.gate_proj.weight[inter // 2 :])
        assert torch.equal(sm.down_proj.weight, fm.down_proj.weight[:, inter // 2 :])
    else:
        inter = fm.experts.gate_up_proj.shape[1] // 2
        half = slice(inter // 2, inter)
        up = slice(inter + inter // 2, 2 * inter)
        assert torch.equal(sm.experts.gate_up_proj, torch.cat([fm.experts.gate_up_proj[:, half], fm.experts.gate_up_proj[:, up]], 1))
        assert torch.equal(sm.experts.down_proj, fm.experts.down_proj[:, :, half])
        assert torch.equal(sm.gate.weight, fm.gate.weight)  # the router is replicated
        if kind == "qwen2_moe":
            shared = fm.shared_expert.gate_proj.out_features
            assert torch.equal(sm.shared_expert.up_proj.weight, fm.shared_expert.up_proj.weight[shared // 2 :])
            assert torch.equal(sm.shared_expert.down_proj.weight, fm.shared_expert.down_proj.weight[:, shared // 2 :])
            assert torch.equal(sm.shared_expert_gate.weight, fm.shared_expert_gate.weight)
    assert torch.equal(shard.lm_head.weight, full.lm_head.weight)
    assert torch.equal(shard.model.embed_tokens.weight, full.model.embed_tokens.weight)


@pytest.mark.parametrize(
    ("overrides", "world", "field"),
    [
        ({}, 3, "num_attention_heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, 2, "num_key_value_heads"),
        ({"intermediate_size": 129}, 2, "intermediate_size"),
    ],
)
def test_sizes_that_do_not_divide_raise_naming_the_field(overrides, world, field):
    with pytest.raises(ValueError, match=f"tensor_parallel_size \\({world}\\) must divide {field}"):
        check_divisible(tiny_config("llama", **overrides), world)


@pytest.mark.parametrize("world", [0, -1, 1.5])
def test_non_positive_sizes_raise(world):
    with pytest.raises(ValueError, match="tensor_parallel_size must be a positive integer"):
        check_divisible(tiny_config("llama"), world)


def test_a_fused_qkv_projection_is_refused_naming_it(tiny_model_dir):
    """Phi-3 runs on the packed decoder, but its fused qkv_proj has no split here yet."""
    model, _ = _load(tiny_model_dir("phi3"))
    with pytest.raises(ValueError, match="tensor_parallel_size > 1: .*Phi3Attention \\(a fused qkv_proj\\)"):
        shard_model(model, 0, WORLD)
