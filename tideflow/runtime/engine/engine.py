"""The in-process engine: admits requests and advances them one step at a time.

`Engine.step()` is schedule -> execute -> update and returns an `EngineOutput`. Everything
else here is construction (decided once), request admission (validated before anything is
queued) and the members `EngineAPI` declares (tideflow.runtime.engine.api): the only ones
code outside this package uses. Callers step it through `EngineDriver` (driver.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
import time

from tideflow.config import EngineConfig
from tideflow.models.image_spec import ImagePromptSpec
from tideflow.runtime.engine.api import ExpertDispatch
from tideflow.runtime.engine.core.outputs import EngineOutput, EngineStats
from tideflow.runtime.engine.core.sequence import Request, Sequence, check_prompt_ids
from tideflow.runtime.engine.logit_constraints import bad_words_token_ids
from tideflow.runtime.engine.prompt_images import PromptImages
from tideflow.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, *, detokenize: bool = True, sharded_runner: Callable | None = None):
        """`detokenize=False` leaves text and stop strings to a downstream stage (graphs).
        `sharded_runner(config, model, kv_cache, sampler, num_blocks, decode_group_rows)`
        starts the runner of a tensor-parallel engine (tensor_parallel_size > 1): it lives a
        layer up, in tideflow.runtime.parallel, whose `create_engine` passes it."""
        if config.parallel.tensor_parallel_size > 1 and sharded_runner is None:
            raise ValueError(
                "tensor_parallel_size > 1 needs the sharded runner: build the engine with "
                "tideflow.runtime.parallel.create_engine"
            )
        import torch

        from tideflow.models.generation_defaults import generation_defaults
        from tideflow.models.loader import eos_token_ids, load_model, load_tokenizer, model_max_len, uniform_sliding_window
        from tideflow.runtime.engine.attention import PagedKVCache, attend_function, attention_kernels, register_attention
        from tideflow.runtime.engine.detokenizer import Detokenizer
        from tideflow.runtime.engine.core.block_manager import BlockManager
        from tideflow.runtime.engine.model_runner import ModelRunner
        from tideflow.runtime.engine.sampler import Sampler
        from tideflow.runtime.engine.core.scheduler import Scheduler
        from tideflow.runtime.engine.structured.structured_outputs import StructuredOutputs

        mc = config.model
        if torch.device(config.parallel.device).type == "cpu":
            from tideflow.runtime.engine.cpu_binding import bind_compute_threads

            bind_compute_threads(config.parallel.cpu_bind)
        attn = register_attention(config.kernel_backend)
        self.model, self.hf_config = load_model(
            mc.model, dtype=mc.dtype, device=config.parallel.device, attn_implementation=attn,
            kernel_backend=config.kernel_backend,
            trust_remote_code=mc.trust_remote_code,
        )
        self.tokenizer = load_tokenizer(mc.tokenizer or mc.model, trust_remote_code=mc.trust_remote_code)
        self.max_model_len = mc.max_model_len or model_max_len(self.hf_config)
        self.vocab_size = self.hf_config.get_text_config().vocab_size
        # the generation config's eos ids stop a sequence as the model's own do (vLLM adds them as
        # stop tokens); which file names them follows `generation_config`
        generation = generation_defaults(mc)
        self.eos_token_ids = frozenset(eos_token_ids(self.hf_config, None, self.tokenizer)) | set(generation.eos_token_ids)
        self.config = config = self._resolve(config)

        hf = self.hf_config.get_text_config()
        num_layers = hf.num_hidden_layers
        kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
        tp = config.parallel.tensor_parallel_size
        if tp > 1:
            from tideflow.models.loader import check_divisible

            check_divisible(self.hf_config, tp)
            if ImagePromptSpec.from_config(self.hf_config) is not None:  # its shards would get no image features
                raise ValueError("tensor_parallel_size > 1 cannot run a multimodal model yet")
            kv_heads //= tp  # each rank caches the kv heads of its shard
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        cc = config.cache
        bytes_per_block = 2 * num_layers * cc.block_size * kv_heads * head_dim * dtype.itemsize
        self.num_blocks = cc.num_blocks or max(
            1,
            min(
                cc.kv_cache_memory_bytes // bytes_per_block,
                config.scheduler.max_num_seqs * -(-self.max_model_len // cc.block_size),
            ),
        )
        kv_cache = PagedKVCache.allocate(
            num_layers, self.num_blocks, cc.block_size, kv_heads, head_dim, dtype, config.parallel.device
        )
        self.blocks = BlockManager(
            self.num_blocks, cc.block_size, cc.enable_prefix_caching, sliding_window=uniform_sliding_window(self.hf_config)
        )
        self.detokenizer = Detokenizer(self.tokenizer) if detokenize else None
        self.structured = StructuredOutputs(self.tokenizer, self.vocab_size, self.eos_token_ids)
        self.scheduler = Scheduler(
            config.scheduler, self.blocks, eos_token_ids=self.eos_token_ids, max_model_len=self.max_model_len,
            stop_checker=self.detokenizer, grammar=self.structured, clock=time.time,
        )
        sampler = Sampler(self.vocab_size, self.eos_token_ids, seed=mc.seed, kernel_backend=config.kernel_backend,
                          structured=self.structured)
        decode_group_rows = attention_kernels(config.kernel_backend).decode_group_rows
        if tp > 1:
            self.runner = sharded_runner(config, self.model, kv_cache, sampler, self.num_blocks, decode_group_rows)
            logger.info("%s: packed decoder, tensor parallel over %d ranks", type(self.model).__name__, tp)
        else:
            self.runner = ModelRunner(
                self.model, kv_cache, sampler, device=config.parallel.device, decode_group_rows=decode_group_rows,
                packed=_packed_decoder(self.model, mc.model_impl, attend_function(config.kernel_backend),
                                       fused=config.kernel_backend == "auto" and dtype == torch.float32
                                       and torch.device(config.parallel.device).type == "cpu"),
            )
        self.requests: dict[str, Request] = {}
        self.images = PromptImages(self.hf_config, self.model, mc.model, mc.trust_remote_code)
        self.experts: ExpertDispatch | None = None  # set by attach_experts when MoE experts run on expert actors
        torch.manual_seed(mc.seed)
        from tideflow.runtime.engine.warmup import warm_up

        warm_up(self)  # every kernel compiled (or loaded) now, not in the first request

    def _resolve(self, config: EngineConfig) -> EngineConfig:
        sc = config.scheduler
        if sc.max_num_batched_tokens is None:  # chunking off and no budget named: the whole context
            sc = dataclasses.replace(sc, max_num_batched_tokens=max(2048, self.max_model_len))
        if not sc.enable_chunked_prefill and sc.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({sc.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when chunked prefill is off"
            )
        return dataclasses.replace(
            config, model=dataclasses.replace(config.model, max_model_len=self.max_model_len), scheduler=sc
        )

    # -- requests -----------------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, prompt: str | None = None,
        images=None, image_features=None,
    ) -> Request:
        """Validate and queue a request. Raises ValueError (naming the field) and queues nothing
        when the request can never run. `images` (PIL images or encoded bytes) go with a
        multimodal model's prompt: one placeholder image token (or an expanded run) each;
        `image_features` are their features when an encoder stage computed them already."""
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        ids, image_inputs = self.images.prepare(list(prompt_token_ids), images, image_features)
        ids = check_prompt_ids(ids, self.vocab_size, self.max_model_len)
        now = time.time()  # wall clock, as every request metric (comparable across processes)
        seqs = [self.new_sequence(request_id, i, ids, params, arrival_time=now) for i in range(params.n)]
        self.images.encode(image_inputs, images)
        for seq in seqs:
            seq.images = image_inputs
        request = Request(request_id, prompt, list(ids), params, seqs, arrival_time=now)
        self.requests[request_id] = request
        for seq in seqs:
            self.scheduler.add(seq)
        return request

    def new_sequence(self, request_id: str, index: int, ids: list[int], params: SamplingParams, arrival_time=0.0) -> Sequence:
        """A sequence for completion `index` of a request, its output limit resolved. Raises
        ValueError when prompt plus max_tokens can never fit the KV pool, or naming the field
        when its structured-output grammar does not compile (compiled once per engine)."""
        if params.ranks_completions:  # the engine samples completions; choosing the best is its caller's
            raise ValueError("best_of: an engine runs params.sampled_params(); LLM and the server pick the best")
        if params.pooling is not None and self.config.parallel.tensor_parallel_size > 1:
            raise ValueError("pooling: embeddings are not computed with tensor_parallel_size > 1 yet")
        max_tokens = self.max_model_len - len(ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        needed = self.blocks.blocks_needed(len(ids) + max_tokens)
        if window := self.blocks.sliding_window:  # blocks behind the window are given back as it moves
            step_tokens = self.config.scheduler.max_num_batched_tokens
            needed = min(needed, self.blocks.blocks_needed(window + step_tokens) + 1)
        if needed > self.num_blocks:
            raise ValueError(
                f"prompt_token_ids: prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) needs {needed} KV "
                f"blocks, more than the cache holds ({self.num_blocks})"
            )
        if params.structured_outputs is not None:
            self.structured.check(params.structured_outputs)
        seq = Sequence(request_id, index, list(ids), len(ids), params, max_tokens, arrival_time=arrival_time)
        if params.bad_words:
            seq.bad_words_ids = bad_words_token_ids(self.tokenizer, params.bad_words)
        return seq

    def check_request(self, prompt_token_ids, params: SamplingParams, images=None) -> list[int]:
        """Whether a request could ever run here, without queueing it: the prompt's ids as a
        list (image placeholders expanded), or ValueError naming the field (empty prompt, ids
        outside the vocabulary, a prompt as long as the context, prompt plus max_tokens beyond
        the KV pool, images the model cannot take or the prompt does not place)."""
        ids, _ = self.images.prepare(list(prompt_token_ids), images)
        ids = check_prompt_ids(ids, self.vocab_size, self.max_model_len)
        self.new_sequence("check", 0, ids, params)
        return ids

    def abort_request(self, request_id: str, index: int | None = None) -> bool:
        """Stop a request's completions (all of them, or completion `index`) and free their
        blocks; the request is dropped once none of its completions runs. Returns whether this
        engine held the request."""
        request = self.requests.get(request_id)
        if request is None:
            return False
        self.scheduler.abort(request.seqs if index is None else [s for s in request.seqs if s.index == index])
        if request.finished:
            del self.requests[request_id]
        return True

    def pop_finished(self, request_id: str) -> Request:
        """Drop a finished request and return it (KeyError when it is not held)."""
        return self.requests.pop(request_id)

    def has_request(self, request_id: str) -> bool:
        """Whether a request admitted here is still held (running, queued, or finished and not popped)."""
        return request_id in self.requests

    def sequence(self, request_id: str, index: int) -> Sequence:
        """Completion `index` of a held request (its prompt, params and sampling state)."""
        return self.requests[request_id].seqs[index]

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    @property
    def num_unfinished(self) -> int:
        """Sequences running or queued here: the engine's load."""
        return self.scheduler.num_unfinished

    # -- completions that move between engines ------------------------------------------------
    def adopt(self, seq: Sequence, k, v) -> bool:
        """Continue a sequence prefilled elsewhere: `k`/`v` hold the K/V of its first
        `k.shape[1]` tokens. Returns False, holding nothing, when blocks or sequence slots are
        short (the caller retries later or queues the sequence for recompute)."""
        num_tokens = k.shape[1]
        if len(self.scheduler.running) >= self.config.scheduler.max_num_seqs:
            return False
        if not self.blocks.allocate(seq, num_tokens):
            return False
        self.runner.write_kv(seq.block_table, k, v)
        seq.num_computed_tokens = num_tokens
        self.blocks.publish_full_blocks(seq)
        return self.scheduler.adopt(seq)

    def recompute(self, seq: Sequence) -> None:
        """Queue a sequence whose K/V is not here (replayed, restored, or not adoptable) to be
        computed again from its tokens, then continue."""
        seq.num_computed_tokens = 0
        self.scheduler.add(seq)

    def read_kv(self, seq: Sequence):
        """The K/V of a sequence's computed tokens, as numpy arrays [layers, tokens, kv_heads, head_dim]."""
        return self.runner.read_kv(seq.block_table, seq.num_computed_tokens)

    def release(self, seqs: list[Sequence]) -> list[str]:
        """Stop sequences that leave this engine (handed off or aborted) and free their blocks.
        Requests left with no running completion are dropped; returns their ids."""
        self.scheduler.abort(seqs)
        dropped = []
        for seq in seqs:
            request = seq.request
            if request is not None and request.finished and self.requests.get(seq.request_id) is request:
                del self.requests[seq.request_id]
                dropped.append(seq.request_id)
        return dropped

    # -- the step -----------------------------------------------------------------------------
    def step(self) -> EngineOutput:
        batch = self.scheduler.schedule()
        output = self.runner.execute(batch)
        return self.scheduler.update(batch, output)

    # -- state for stats and checkpoints ------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            num_requests_running=len(self.scheduler.running),
            num_requests_waiting=len(self.scheduler.waiting),
            kv_cache_usage_perc=self.blocks.usage,
            prefix_cache_queries=self.blocks.stats.queries,
            prefix_cache_hits=self.blocks.stats.hits,
            num_preemptions=self.scheduler.num_preemptions,
            images_encoded=self.images.num_encoded,
        )

    def held_requests(self) -> list[Request]:
        """The requests held here, in admission order (read-only: for snapshots)."""
        return list(self.requests.values())

    def restore_request(self, request: Request) -> None:
        """Hold a request rebuilt from a snapshot: its unfinished sequences are queued to be
        recomputed from their tokens (prompt plus output so far), then continue."""
        self.requests[request.request_id] = request
        for seq in request.seqs:
            if not seq.finished:
                self.scheduler.add(seq)

    def generator_state(self) -> bytes:
        """The sampler's random generator (the seeds of unseeded requests come from it)."""
        return bytes(self.runner.sampler.generator.get_state().numpy().tobytes())

    def restore_generator(self, state: bytes) -> None:
        import torch

        self.runner.sampler.generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))

    # -- expert parallelism -------------------------------------------------------------------
    def attach_experts(self, experts: ExpertDispatch) -> None:
        """Record that this engine's MoE experts run elsewhere (the model's experts modules are
        already bound to `experts`' dispatch); its stats then report theirs."""
        self.experts = experts

    def expert_stats(self) -> dict:
        """The expert actors' per-expert token counts, placement and dispatch cost, and each
        actor's own counts (`expert_actor_stats`: one round trip to the actors); {} when the
        experts run here."""
        if self.experts is None:
            return {}
        return {**self.experts.stats(), "expert_actor_stats": self.experts.actor_stats()}


def _packed_decoder(model, model_impl: str, attend, fused: bool = False):
    """tideflow's own forward of `model` as `model_impl` asks (None: transformers' forward).
    Logs which of the two the model takes, and why when it is transformers'. `fused`: float32
    on CPU with tideflow's kernels (see `PackedDecoder`)."""
    from tideflow.models.packed_decoder import PackedDecoder, unsupported_reason

    name = type(model).__name__
    if model_impl == "transformers":
        logger.info("%s: transformers forward (model_impl='transformers')", name)
        return None
    reason = unsupported_reason(model)
    if reason is None:
        decoder = PackedDecoder(model, attend, fused=fused)
        logger.info("%s: packed decoder%s", name, ", fused norms and rotary" if decoder.fused else "")
        return decoder
    if model_impl == "tideflow":
        raise ValueError(f"model_impl='tideflow' cannot run this model: {reason}")
    logger.info("%s: transformers forward (%s)", name, reason)
    return None
