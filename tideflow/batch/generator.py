"""The `map_batches` callable: each actor of the pool builds one backend and turns input
batches into output batches (or, in a job, commits them and returns their statistics).

An output batch is the input batch (every column, `row_id` included) plus the columns of
`OUTPUT_FIELDS`. A row that cannot run gets its reason in `error` and nulls in the generated
columns; the rest of its batch runs as usual.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

import pyarrow as pa

from tideflow.batch.inputs import INPUT_ERROR, ROW_ID
from tideflow.batch.prompts import batch_prompts
from tideflow.sampling_params import SamplingParams

OUTPUT_FIELDS = (
    pa.field("generated_text", pa.string()),  # the completion's text (null on error)
    pa.field("generated_token_ids", pa.list_(pa.int32())),  # the completion's token ids
    pa.field("num_prompt_tokens", pa.int32()),  # prompt length in tokens (null when it has none)
    pa.field("num_generated_tokens", pa.int32()),  # completion length in tokens (null on error)
    pa.field("finish_reason", pa.string()),  # "stop" | "length" (null on error)
    pa.field("error", pa.string()),  # why the row did not run; null for a generated row
)
OUTPUT_NAMES = tuple(f.name for f in OUTPUT_FIELDS)


@dataclass(frozen=True)
class GeneratorSpec:
    """What every actor of the pool builds and how it reads rows."""

    model: str  # model directory (the graph's, for a graph)
    sampling_params: SamplingParams
    prompt_column: str | None = None  # text or token ids; exactly one of the two columns is set
    messages_column: str | None = None  # chat conversations
    engine_options: dict = field(default_factory=dict)  # LLM(...) options for an in-process engine
    graph_handle: object = None  # a deployed GraphHandle: generate through it instead of an in-process LLM
    output_dir: str | None = None  # commit each output batch here and return its STATS row instead
    max_tokens_column: str | None = None  # per-row max_tokens (null: sampling_params.max_tokens)
    # per-row output constraint, as JSON text ('{"json": {schema}}', '{"regex": "..."}' ...) or a
    # struct with those fields (null: sampling_params.structured_outputs)
    structured_outputs_column: str | None = None


def row_seed(seed: int, row_id: str) -> int:
    """A row's sampling seed: fixed by the job's seed and the row's id, whatever batch it lands in."""
    return (seed * 1_000_003 + zlib.crc32(row_id.encode())) % (1 << 63)


class BatchGenerator:
    """One per actor: `__call__(pyarrow.Table) -> pyarrow.Table`."""

    def __init__(self, spec: GeneratorSpec, backend=None):
        """`backend`: one to share (tests); by default the actor builds its own from `spec`."""
        from tideflow.batch.backends import EngineBackend, GraphBackend

        self.spec = spec
        if backend is not None:
            self.backend = backend
        elif spec.graph_handle is not None:
            self.backend = GraphBackend(spec.graph_handle, spec.model, spec.engine_options)
        else:
            self.backend = EngineBackend(spec.model, spec.engine_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out_dir = self.spec.output_dir
        if out_dir is None:
            return self.generate(batch)
        from tideflow.batch import output

        done = output.committed(out_dir, batch.column(ROW_ID).combine_chunks())
        if done is not None:  # a retried batch that was committed before its actor died
            import pyarrow.parquet as pq

            return output.batch_stats(pq.read_table(done))
        result = self.generate(batch)
        output.commit(result, out_dir)
        return output.batch_stats(result)

    def generate(self, batch: pa.Table) -> pa.Table:
        """The batch with the generated columns added."""
        clash = [n for n in OUTPUT_NAMES if n in batch.column_names]
        if clash:
            raise ValueError(f"input: columns {clash} would be overwritten by the output; rename them")
        spec = self.spec
        prompts = batch_prompts(batch, self.backend.prompts, prompt_column=spec.prompt_column,
                                messages_column=spec.messages_column)
        params = self._params(batch, prompts.errors)
        for row, ids in enumerate(prompts.token_ids):
            if ids is None:
                continue
            if params[row] is None:  # an invalid per-row max_tokens; its reason is in prompts.errors
                prompts.fail(row, prompts.errors[row])
            elif error := self.backend.check(ids, params[row]):
                prompts.fail(row, error)
        good = [row for row, ids in enumerate(prompts.token_ids) if ids is not None]
        results = self._generate(
            [{"prompt": prompts.texts[r], "prompt_token_ids": prompts.token_ids[r]} for r in good],
            [params[r] for r in good],
        )
        outputs, errors = [None] * batch.num_rows, list(prompts.errors)
        for row, result in zip(good, results):
            if isinstance(result, str):
                errors[row] = result
            else:
                outputs[row] = result
        if INPUT_ERROR in batch.column_names:
            batch = batch.drop_columns([INPUT_ERROR])
        return _append_outputs(batch, prompts.token_ids, outputs, errors)

    def _params(self, batch: pa.Table, errors: list[str | None]) -> list[SamplingParams | None]:
        """Each row's sampling parameters: its own seed (from the job's seed and the row id),
        max_tokens (from `max_tokens_column`) and output constraint (from
        `structured_outputs_column`); None where the row's value is invalid (its reason goes
        into `errors`)."""
        sp, spec = self.spec.sampling_params, self.spec
        params: list[SamplingParams | None] = [sp] * batch.num_rows
        if sp.seed is not None and not sp.greedy and ROW_ID in batch.column_names:
            params = [sp.replace(seed=row_seed(sp.seed, rid)) for rid in batch.column(ROW_ID).to_pylist()]
        for name, field, parse in ((spec.max_tokens_column, "max_tokens", _max_tokens),
                                   (spec.structured_outputs_column, "structured_outputs", _constraint)):
            if name is None:
                continue
            if name not in batch.column_names:
                raise ValueError(f"{field}_column: the input has no column {name!r}")
            for row, value in enumerate(batch.column(name).to_pylist()):
                if value is None or params[row] is None:
                    continue
                try:
                    params[row] = params[row].replace(**{field: parse(value)})
                except (ValueError, TypeError) as exc:
                    errors[row] = errors[row] or f"{name}: {exc}"
                    params[row] = None
        return params

    def _generate(self, prompts: list[dict], params: list[SamplingParams]) -> list:
        """Outputs in order; where the backend rejects the batch (ValueError), each row is run
        alone so that only the rows at fault get an error (their message, a str)."""
        if not prompts:
            return []
        try:
            return self.backend.generate(prompts, params)
        except ValueError:
            if len(prompts) == 1:
                raise
        results = []
        for prompt, sp in zip(prompts, params):
            try:
                results.append(self.backend.generate([prompt], [sp])[0])
            except ValueError as exc:
                results.append(str(exc))
        return results


def _max_tokens(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _constraint(value) -> dict:
    """A row's constraint: JSON text of {kind: value}, or a struct (its null fields dropped)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"not JSON: {value[:60]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected an object such as {{\"json\": {{...}}}}, got {type(value).__name__}")
    return {k: v for k, v in value.items() if v is not None}


def _append_outputs(batch: pa.Table, token_ids: list, outputs: list, errors: list[str | None]) -> pa.Table:
    completions = [o.outputs[0] if o is not None else None for o in outputs]
    columns = {
        "generated_text": [c.text if c else None for c in completions],
        "generated_token_ids": [c.token_ids if c else None for c in completions],
        "num_prompt_tokens": [len(ids) if ids is not None else None for ids in token_ids],
        "num_generated_tokens": [len(c.token_ids) if c else None for c in completions],
        "finish_reason": [c.finish_reason if c else None for c in completions],
        "error": errors,
    }
    for f in OUTPUT_FIELDS:
        batch = batch.append_column(f, pa.array(columns[f.name], f.type))
    return batch
