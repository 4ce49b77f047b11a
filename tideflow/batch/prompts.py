"""The prompts of one Arrow batch: per row, the prompt's text and token ids, or why it has none.

The prompt column holds text (`string`) or token ids (`list<int>`); the messages column holds
chat conversations, as `list<struct<role, content>>` or as JSON text (csv). Text is tokenized
as `LLM.generate` does and conversations get the chat template as `LLM.chat` does, through the
same `PromptProcessor`; token id columns are sliced out of their Arrow buffers. A row that
cannot become a prompt (null, empty, the wrong type, a malformed conversation) gets an error
naming the column instead; only a missing column is a ValueError, since then no row can run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.batch.inputs import INPUT_ERROR
from tideflow.runtime.engine.prompt_processor import PromptProcessor


@dataclass(slots=True)
class BatchPrompts:
    """Per row of a batch (all three lists have one entry per row)."""

    texts: list[str | None]  # the prompt text, when the row's prompt is text or a conversation
    token_ids: list[list[int] | None]  # the prompt's token ids; None where the row has an error
    errors: list[str | None]  # why the row cannot run; None for a good row

    def fail(self, row: int, error: str) -> None:
        self.token_ids[row] = None
        self.errors[row] = error


def batch_prompts(batch: pa.Table, prompts: PromptProcessor, *, prompt_column: str | None = None,
                  messages_column: str | None = None) -> BatchPrompts:
    """The prompts of `batch` from exactly one of `prompt_column` / `messages_column`."""
    name = prompt_column or messages_column
    if name not in batch.column_names:
        field = "prompt_column" if prompt_column else "messages_column"
        raise ValueError(f"{field}: the input has no column {name!r} (its columns: {', '.join(batch.column_names)})")
    column = batch.column(name).combine_chunks()
    if prompt_column:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out = _text_prompts(column, name, prompts)
        elif _is_token_list(column.type):
            out = _token_id_prompts(column, name)
        else:
            out = _all_failed(len(column), f"{name}: expected text or a list of token ids, got {column.type}")
    else:
        out = _chat_prompts(column, name, prompts)
    if INPUT_ERROR in batch.column_names:
        for row, error in enumerate(batch.column(INPUT_ERROR).to_pylist()):
            if error is not None:
                out.fail(row, error)
    return out


def _all_failed(rows: int, error: str) -> BatchPrompts:
    return BatchPrompts([None] * rows, [None] * rows, [error] * rows)


def _is_token_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


def _text_prompts(column: pa.Array, name: str, prompts: PromptProcessor) -> BatchPrompts:
    texts = column.to_pylist()
    out = BatchPrompts(texts, [None] * len(texts), [None] * len(texts))
    good = []
    for row, text in enumerate(texts):
        if text is None:
            out.fail(row, f"{name}: the prompt is missing (null)")
        elif not text:
            out.fail(row, f"{name}: the prompt is empty")
        else:
            good.append(row)
    if good:  # one call: the fast tokenizer encodes the batch in Rust
        encoded = prompts.encode_texts([texts[r] for r in good])
        for row, ids in zip(good, encoded):
            out.token_ids[row] = list(ids)
    return out


def _token_id_prompts(column: pa.Array, name: str) -> BatchPrompts:
    """Each row's ids sliced out of the list column's values buffer at its offsets (numpy views
    of the Arrow buffers: no per-token Python loop, and no torch in a batch actor)."""
    rows = len(column)
    out = BatchPrompts([None] * rows, [None] * rows, [None] * rows)
    try:
        ids32 = column.cast(pa.list_(pa.int32()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # ids beyond int32
        return _all_failed(rows, f"{name}: token ids must fit int32 ({exc})")
    missing = ids32.is_null().to_numpy(zero_copy_only=False)
    if ids32.values.null_count:  # a null inside a list: fail the rows that hold one
        flat = pc.list_flatten(ids32)
        holders = np.unique(pc.filter(pc.list_parent_indices(ids32), pc.is_null(flat)).to_numpy())
        for row in holders:
            out.fail(int(row), f"{name}: the token ids hold a null")
        missing = missing.copy()
        missing[holders] = True
    offsets = ids32.offsets.to_numpy()  # this (possibly sliced) array's rows, into the whole values buffer
    values = pc.fill_null(ids32.values, 0).to_numpy(zero_copy_only=False)
    for row in range(rows):
        if missing[row]:
            out.errors[row] = out.errors[row] or f"{name}: the prompt is missing (null)"
        else:
            out.token_ids[row] = values[offsets[row] : offsets[row + 1]].tolist()
    return out


def _chat_prompts(column: pa.Array, name: str, prompts: PromptProcessor) -> BatchPrompts:
    values = column.to_pylist()
    out = BatchPrompts([None] * len(values), [None] * len(values), [None] * len(values))
    for row, conversation in enumerate(values):
        if isinstance(conversation, str):
            try:
                conversation = json.loads(conversation)
            except json.JSONDecodeError:
                out.fail(row, f"{name}: not a JSON list of messages")
                continue
        problem = _conversation_problem(conversation)
        if problem:
            out.fail(row, f"{name}: {problem}")
            continue
        try:
            out.texts[row], out.token_ids[row] = prompts.encode_chat(conversation)
        except Exception as exc:  # noqa: BLE001 (a template may raise anything; the row records it)
            out.fail(row, f"{name}: the chat template failed: {exc}")
    return out


def _conversation_problem(conversation) -> str | None:
    if conversation is None:
        return "the conversation is missing (null)"
    if not isinstance(conversation, list) or not conversation:
        return "expected a non-empty list of messages"
    for i, message in enumerate(conversation):
        if not isinstance(message, dict):
            return f"message {i} is not an object"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"message {i} has no string {key!r}"
    return None
