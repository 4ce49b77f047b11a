"""Runs a transformers model over packed, padding-free batches with the paged KV cache.

`execute(batch)` turns a `ScheduledBatch` into model inputs (token ids, per-token positions,
slot mapping, block tables), runs one forward pass with the `tideflow` attention function,
computes logits only at the rows that sample (and at the prompt rows of requests asking
prompt logprobs), and samples them. The grammar bitmask of structured-output rows is computed
on a background thread while the forward runs (`Sampler.start_masks`).
"""

from __future__ import annotations

import numpy as np
import torch

from tideflow.models.packed_decoder import PackedDecoder
from tideflow.runtime.engine.attention import AttentionMetadata, DecodeGroup, PagedKVCache, PagedPrefill
from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch
from tideflow.runtime.engine.core.block_manager import RELEASED
from tideflow.runtime.engine.pooling import pool_rows, pooled_parts
from tideflow.runtime.engine.prompt_logprobs import prompt_entries, prompt_rows
from tideflow.runtime.engine.sampler import Sampler, SamplerOutput

_EMPTY = SamplerOutput(token_ids=[], logprobs=[])


class ModelRunner:
    def __init__(
        self, model, kv_cache: PagedKVCache, sampler: Sampler, device: str = "cpu", decode_group_rows: int | None = None,
        packed: PackedDecoder | None = None,
    ):
        """`decode_group_rows`: decode rows attended per call, sorted by context length (None: all at once).
        `packed`: tideflow's own forward of `model` (None: transformers' forward with the
        `tideflow` attention function)."""
        self.model = model
        self.packed = packed
        self.decode_group_rows = decode_group_rows
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.device = torch.device(device)
        self.block_size = kv_cache.block_size

    def execute(self, batch: ScheduledBatch) -> SamplerOutput:
        if not batch.seqs:
            return _EMPTY
        masks = self.sampler.start_masks(batch.sampled_seqs)  # overlaps the forward
        pooling = pool_rows(batch)
        if pooling.batch_rows:
            logits, hidden = self.forward_pooled(batch, pooling.flat)
        else:
            logits, hidden = self.forward_only(batch), None
        if logits.shape[0] == 0 and hidden is None:
            return _EMPTY
        num_sampled = sum(batch.sample)
        out = self.sampler(logits[:num_sampled], batch.sampled_seqs, masks) if num_sampled else SamplerOutput([], [])
        if logits.shape[0] > num_sampled:
            out.prompt_logprobs = prompt_entries(logits[num_sampled:], prompt_rows(batch), batch, self.sampler.vocab_size)
        if hidden is not None:
            out.pooled = pooled_parts(hidden, pooling)
        return out

    def read_kv(self, block_table: list[int], num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """The K and V of a sequence's first `num_tokens` tokens (see `PagedKVCache.read`)."""
        return self.kv_cache.read(block_table, num_tokens)

    def write_kv(self, block_table: list[int], k: np.ndarray, v: np.ndarray) -> None:
        """Write K/V read by `read_kv` (possibly on another replica) into this cache's blocks."""
        self.kv_cache.write(block_table, k, v)

    def _decode_groups(self, num_new, context, cu, tables) -> list[DecodeGroup]:
        """Decode rows sorted by context length, `decode_group_rows` at a time, each group's
        block tables cut to its longest context."""
        dev, bs = self.device, self.block_size
        decode = np.flatnonzero(num_new == 1)
        decode = decode[np.argsort(context[decode], kind="stable")]
        per_group = self.decode_group_rows or max(decode.size, 1)
        groups = []
        for start in range(0, decode.size, per_group):
            rows = decode[start : start + per_group]
            num_blocks = -(-int(context[rows[-1]]) // bs)  # sorted: the last row is the longest
            groups.append(
                DecodeGroup(
                    token_idx=torch.from_numpy(cu[rows]).to(dev),
                    block_tables=torch.from_numpy(np.ascontiguousarray(tables[rows, :num_blocks])).to(dev),
                    context_lens=torch.from_numpy(context[rows]).to(dev),
                )
            )
        return groups

    def _paged_prefill(self, num_new, computed, context, cu, tables) -> PagedPrefill | None:
        """Prefill rows with a cached context (chunks after the first, prefix hits), packed."""
        rows = np.flatnonzero((num_new > 1) & (computed > 0))
        if rows.size == 0:
            return None
        dev = self.device
        q_lens = num_new[rows]
        cu_q = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(q_lens, out=cu_q[1:])
        token_idx = np.repeat(cu[rows], q_lens) + np.arange(cu_q[-1]) - np.repeat(cu_q[:-1], q_lens)
        num_blocks = -(-int(context[rows].max()) // self.block_size)
        return PagedPrefill(
            token_idx=torch.from_numpy(token_idx).to(dev),
            block_tables=torch.from_numpy(np.ascontiguousarray(tables[rows, :num_blocks])).to(dev),
            cu_seqlens_q=torch.from_numpy(cu_q).to(dev),
            context_lens=torch.from_numpy(context[rows]).to(dev),
        )

    def forward_only(self, batch: ScheduledBatch) -> torch.Tensor:
        """The logits of the rows that sample, then of the prompt rows (`prompt_rows`),
        [rows, vocab]: the forward pass without sampling (benchmarks also measure engine
        overhead against it)."""
        input_ids, positions, meta, sample_idx = self.prepare(batch)
        images = self.image_rows(batch)
        if self.packed is not None:
            if images is not None:
                return self.packed(input_ids, positions, meta, sample_idx, images=images)
            return self.packed(input_ids, positions, meta, sample_idx)
        return self._transformers_forward(input_ids, positions, meta, images, logits_to_keep=sample_idx).logits[0]

    def forward_pooled(self, batch: ScheduledBatch, hidden_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_only`'s logits and the final hidden states (after the last norm) of the
        packed rows `hidden_rows`: one forward pass. Unsharded runners only."""
        input_ids, positions, meta, sample_idx = self.prepare(batch)
        images = self.image_rows(batch)
        hidden_idx = torch.tensor(hidden_rows, dtype=torch.int64, device=self.device)
        if self.packed is not None:
            return self.packed(input_ids, positions, meta, sample_idx, images=images, hidden_rows=hidden_idx)
        out = self._transformers_forward(input_ids, positions, meta, images, logits_to_keep=sample_idx,
                                         output_hidden_states=True)
        return out.logits[0], out.hidden_states[-1][0][hidden_idx]

    def _transformers_forward(self, input_ids, positions, meta, images, **options):
        """transformers' forward of the packed batch with the `tideflow` attention function."""
        with torch.inference_mode():
            if images is None:
                inputs = {"input_ids": input_ids[None]}
            else:  # a multimodal model: image features replace the embeddings of their tokens
                embeds = self.model.get_input_embeddings()(input_ids)
                embeds[images[0]] = images[1].to(embeds.dtype)
                inputs = {"inputs_embeds": embeds[None]}
            return self.model(**inputs, position_ids=positions[None], tideflow_meta=meta, use_cache=False, **options)

    def image_rows(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step's image tokens: their rows in the packed batch [k] and the image features
        that replace their embeddings [k, hidden]; None when the step computes none. A prompt
        chunk may cut an image anywhere: each token takes its own feature row."""
        rows, features = [], []
        start = 0
        for seq, n, c in zip(batch.seqs, batch.num_new_tokens, batch.num_computed_tokens):
            images = seq.images
            if images is not None and c < images.spans[-1][1]:
                for (s, e), f in zip(images.spans, images.features):
                    lo, hi = max(s, c), min(e, c + n)
                    if lo < hi:
                        rows.append(torch.arange(start + lo - c, start + hi - c))
                        features.append(f[lo - s : hi - s])
            start += n
        if not rows:
            return None
        return torch.cat(rows).to(self.device), torch.cat(features).to(self.device)

    def prepare(self, batch: ScheduledBatch):
        """Packed inputs of one step: input ids [T], positions [T], the attention metadata and
        the rows to compute logits at (those that sample, then the prompt rows whose logprobs
        are asked for); built with array ops per token."""
        bs = self.block_size
        num_new = np.asarray(batch.num_new_tokens, dtype=np.int64)
        computed = np.asarray(batch.num_computed_tokens, dtype=np.int64)
        rows = len(num_new)
        cu = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(num_new, out=cu[1:])
        row_of_token = np.repeat(np.arange(rows), num_new)
        positions = np.arange(cu[-1]) - cu[:-1][row_of_token] + computed[row_of_token]

        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = np.zeros((rows, max_blocks), dtype=np.int64)
        ids: list[int] = []
        for i, (seq, n, c) in enumerate(zip(batch.seqs, batch.num_new_tokens, batch.num_computed_tokens)):
            tables[i, : len(seq.block_table)] = seq.block_table
            ids.extend(seq.token_ids[c : c + n])
        slots = tables[row_of_token, positions // bs] * bs + positions % bs
        context = computed + num_new

        dev = self.device
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=torch.from_numpy(slots).to(dev),
            decode_groups=self._decode_groups(num_new, context, cu, tables),
            paged_prefill=self._paged_prefill(num_new, computed, context, cu, tables),
            fresh_prefills=[(int(cu[i]), int(num_new[i])) for i in np.flatnonzero((num_new > 1) & (computed == 0))],
        )
        sample_idx = cu[1:][np.asarray(batch.sample, dtype=bool)] - 1
        prompt = prompt_rows(batch).flat
        if prompt:
            sample_idx = np.concatenate([sample_idx, np.asarray(prompt, dtype=np.int64)])
        sample_idx = torch.from_numpy(sample_idx).to(dev)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        return input_ids, torch.from_numpy(positions).to(dev), meta, sample_idx
