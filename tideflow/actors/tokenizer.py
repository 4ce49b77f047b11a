"""The Tokenizer role: request rows (text, chat messages or token ids) -> token ids, through the
prompt front door (`PromptProcessor`). Rows that arrive with token ids (the server tokenized
them already) pass through untouched."""

from __future__ import annotations

import json

import pyarrow as pa

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.runtime.edges import schemas


class Tokenizer(StageRole):
    consumes = schemas.REQUESTS
    produces = schemas.TOKENIZED
    routing = "least_loaded"

    def __init__(self, context: StageContext):
        super().__init__(context)
        from tideflow.runtime.engine.prompt_processor import PromptProcessor

        opts = context.options
        self.prompts = PromptProcessor.load(
            opts["model"], tokenizer=opts.get("tokenizer"), max_model_len=opts.get("max_model_len"),
            trust_remote_code=opts.get("trust_remote_code", False),
        )
        self.pending: list[dict] = []

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in batch.to_pylist():
            out = {k: row[k] for k in ("request_id", "prompt", "sampling", "arrival_time")}
            out["images"] = row.get("images")  # placeholders are expanded by the engine, which knows the model
            try:
                out["prompt"], out["prompt_token_ids"] = self._encode(row)
            except (ValueError, TypeError, KeyError) as exc:
                out["prompt_token_ids"], out["error"] = [], f"{type(exc).__name__}: {exc}"
            self.pending.append(out)

    def _encode(self, row: dict) -> tuple[str | None, list[int]]:
        if row["prompt_token_ids"] is not None:
            return row["prompt"], row["prompt_token_ids"]
        if row["messages"] is not None:
            return self.prompts.encode_chat(json.loads(row["messages"]))
        prompt = self.prompts.process(row["prompt"] or "")
        return prompt.text, prompt.token_ids

    def poll(self) -> list[Emission]:
        if not self.pending:
            return []
        rows, self.pending = self.pending, []
        return [Emission(pa.RecordBatch.from_pylist(rows, schema=self.produces))]

    def has_work(self) -> bool:
        return bool(self.pending)

    def load(self) -> int:
        return len(self.pending)

    def snapshot(self) -> dict:
        return {"pending": list(self.pending)}

    def restore(self, state: dict) -> None:
        self.pending = list(state["pending"])
