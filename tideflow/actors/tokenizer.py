"""The Tokenizer role: request rows (text, chat messages or token ids) -> token ids."""

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
        from tideflow.models import load_tokenizer

        opts = context.options
        self.tokenizer = load_tokenizer(opts.get("tokenizer") or opts["model"], opts.get("trust_remote_code", False))
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
            messages = json.loads(row["messages"])
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, self.tokenizer.encode(text, add_special_tokens=False)
        if row["prompt"]:
            return row["prompt"], self.tokenizer.encode(row["prompt"])
        raise ValueError("prompt: the prompt is empty")

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
