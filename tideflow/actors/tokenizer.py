"""The Tokenizer role: request rows (text, chat messages or token ids) -> token ids, through the
prompt front door (`PromptProcessor`). Rows that arrive with token ids (the server tokenized
them already) pass through untouched. It loads config.json and tokenizer.json without torch or
transformers (`PromptProcessor.load`), so its actor starts in a fraction of a model stage's time."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.runtime.edges import schemas


class Tokenizer(StageRole):
    consumes = schemas.REQUESTS
    produces = schemas.TOKENIZED
    routing = "least_loaded"
    requires_model = True
    takes_extra_options = False

    def __init__(self, context: StageContext):
        super().__init__(context)
        from tideflow.runtime.engine.prompt_processor import PromptProcessor

        self.prompts = PromptProcessor.for_model(context.config.model)
        self.pending: list[pa.RecordBatch] = []  # TOKENIZED batches to send

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        """Builds the TOKENIZED batch from the input's columns: request id, sampling, arrival
        time and images go on from their buffers, and so do token ids the server sent; only
        rows without ids are tokenized (their text or messages read one column at a time)."""
        ids = batch.column("prompt_token_ids")
        prompt = batch.column("prompt")
        errors = pa.nulls(batch.num_rows, pa.string())
        if ids.null_count:
            texts, made, failed = prompt.to_pylist(), [], []
            messages = batch.column("messages").to_pylist()
            valid = ids.is_valid().to_numpy(zero_copy_only=False)
            for i in range(batch.num_rows):
                if valid[i]:
                    made.append(None)
                    failed.append(None)
                    continue
                try:
                    texts[i], row_ids = self._encode(texts[i], messages[i])
                    made.append(row_ids)
                    failed.append(None)
                except (ValueError, TypeError, KeyError) as exc:
                    made.append([])
                    failed.append(f"{type(exc).__name__}: {exc}")
            ids = pa.compute.if_else(ids.is_valid(), ids, pa.array(made, pa.list_(pa.int32())))
            prompt, errors = pa.array(texts, pa.string()), pa.array(failed, pa.string())
        columns = {"request_id": batch.column("request_id"), "prompt": prompt, "prompt_token_ids": ids,
                   "sampling": batch.column("sampling"), "arrival_time": batch.column("arrival_time"),
                   "error": errors, "images": batch.column("images"),  # the engine expands image placeholders
                   "resume": pa.nulls(batch.num_rows, schemas.RESUME)}
        self.pending.append(pa.RecordBatch.from_arrays([columns[f.name] for f in self.produces], schema=self.produces))

    def _encode(self, text: str | None, messages: str | None) -> tuple[str | None, list[int]]:
        if messages is not None:
            return self.prompts.encode_chat(json.loads(messages))
        prompt = self.prompts.process(text or "")
        return prompt.text, prompt.token_ids

    def poll(self) -> list[Emission]:
        batches, self.pending = self.pending, []
        return [Emission(b) for b in batches]

    def has_work(self) -> bool:
        return bool(self.pending)

    def load(self) -> int:
        return sum(b.num_rows for b in self.pending)

    def snapshot(self) -> dict:
        return {"pending": [r for b in self.pending for r in b.to_pylist()]}

    def restore(self, state: dict) -> None:
        rows = state["pending"]
        self.pending = [pa.RecordBatch.from_pylist(rows, schema=self.produces)] if rows else []
