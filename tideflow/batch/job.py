"""`run_job`: files in, parquet out, resumable; what `tideflow batch` runs.

The job reads its input in Ray Data read tasks (`tideflow.batch.inputs`), drops the rows whose
ids the output directory already holds, generates on the actor pool of `run`, and has each
actor commit its batches (`tideflow.batch.output`). Started again on the same output
directory after a crash, it generates only what is missing; it ends with one output row per
input row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tideflow.batch import inputs, output
from tideflow.batch.generator import OUTPUT_NAMES
from tideflow.batch.run import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCHES_PER_ACTOR,
    check_pool_args,
    generator_spec,
    map_generator,
)
from tideflow.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one run of a job did, and what its output directory holds afterwards."""

    output_dir: str
    rows: int  # rows generated (or failed) by this run
    skipped: int  # rows found already written when this run started
    errors: int  # rows of this run with an error
    prompt_tokens: int  # this run's prompt tokens
    generated_tokens: int  # this run's generated tokens
    wall_s: float  # this run's generation time (reading, generating, writing)
    output_rows: int  # rows in the output directory at the end
    duplicates: int  # output rows whose row id another output row also has (0 unless runs overlapped)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def format(self) -> str:
        return (
            f"rows: {self.rows} generated, {self.skipped} already done, {self.errors} with errors; "
            f"tokens: {self.prompt_tokens} prompt, {self.generated_tokens} generated "
            f"({self.tokens_per_s:.1f} generated tokens/s over {self.wall_s:.1f} s); "
            f"output: {self.output_rows} rows in {self.output_dir}"
            + (f" ({self.duplicates} DUPLICATED)" if self.duplicates else "")
        )


def run_job(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_or_graph,
    *,
    prompt_column: str | None = None,
    messages_column: str | None = None,
    id_column: str = inputs.ROW_ID,
    sampling_params: SamplingParams | None = None,
    max_tokens_column: str | None = None,
    structured_outputs_column: str | None = None,
    concurrency: int | tuple[int, int] = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batches_per_actor: int = DEFAULT_BATCHES_PER_ACTOR,
    engine_options: dict | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    rows_per_read: int = inputs.ROWS_PER_UNIT,
) -> BatchSummary:
    """Generate for every row of `input` (a parquet/jsonl/csv file, a directory or a glob)
    that `output_dir` does not hold yet, writing parquet parts there. Rows are keyed by
    `id_column` when the input has it, else by file and row index. Arguments as in `run`;
    ValueError names a bad one before anything starts."""
    import ray

    spec = generator_spec(model_or_graph, prompt_column=prompt_column, messages_column=messages_column,
                          sampling_params=sampling_params, max_tokens_column=max_tokens_column,
                          structured_outputs_column=structured_outputs_column, engine_options=engine_options)
    if not isinstance(id_column, str) or not id_column:
        raise ValueError(f"id_column must be a non-empty column name, got {id_column!r}")
    check_pool_args(concurrency, batch_size, batches_per_actor, num_cpus, num_gpus)
    out_dir = Path(output_dir).resolve()
    files = [(path, key) for path, key in inputs.expand_input(input) if not Path(path).is_relative_to(out_dir)]
    if not files:
        raise ValueError(f"input: no files in {input} outside the output directory {out_dir}")
    text_field = "prompt_column" if spec.prompt_column else "messages_column"
    columns = {text_field: spec.prompt_column or spec.messages_column}
    if id_column != inputs.ROW_ID:
        columns["id_column"] = id_column
    if max_tokens_column is not None:
        columns["max_tokens_column"] = max_tokens_column
    if structured_outputs_column is not None:
        columns["structured_outputs_column"] = structured_outputs_column
    inputs.check_columns(files, columns, reserved=OUTPUT_NAMES)
    units = inputs.plan_units(files, rows_per_read)
    out_dir.mkdir(parents=True, exist_ok=True)
    output.check_manifest(out_dir, _manifest(input, spec, id_column))
    before = output.scan_output(out_dir)

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    start = time.perf_counter()
    text_column = spec.prompt_column or spec.messages_column
    rows = ray.data.from_items(inputs.unit_rows(units), override_num_blocks=len(units)).map_batches(
        _read_units, batch_size=1, batch_format="pyarrow", num_cpus=0,  # light: leaves the cores to the actors
        fn_kwargs={"text_column": text_column, "id_column": id_column, "done": before.row_ids},
    )
    stats = map_generator(rows, dataclasses.replace(spec, output_dir=str(out_dir)), concurrency=concurrency,
                          batch_size=batch_size, batches_per_actor=batches_per_actor, num_cpus=num_cpus,
                          num_gpus=num_gpus)
    totals = dict.fromkeys(output.STATS.names, 0)
    for batch in stats.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in totals:
            totals[name] += sum(batch.column(name).to_pylist())
    wall = time.perf_counter() - start
    after = output.scan_output(out_dir)
    return BatchSummary(
        str(out_dir), totals["rows"], len(before.row_ids), totals["errors"], totals["prompt_tokens"],
        totals["generated_tokens"], wall, after.rows, after.duplicates,
    )


def _read_units(batch: pa.Table, *, text_column: str, id_column: str, done: pa.Array):
    """Read task: the rows of each unit in `batch` whose ids are not in `done`."""
    import pyarrow.compute as pc

    for text in batch.column("unit").to_pylist():
        table = inputs.read_unit(inputs.unit_from_row(text), text_column=text_column, id_column=id_column)
        if len(done):
            table = table.filter(pc.invert(pc.is_in(table.column(inputs.ROW_ID), value_set=done)))
        if table.num_rows:
            yield table


def _manifest(input, spec, id_column: str) -> dict:
    """The fields that define a job's rows and outputs (a resumed run must match them)."""
    # through JSON, as the manifest file holds it: tuples (stop, a choice's strings) become lists
    params = json.loads(json.dumps(dataclasses.asdict(spec.sampling_params)))
    return {
        "input": os.path.abspath(os.fspath(input)),
        "model": spec.model,
        "prompt_column": spec.prompt_column,
        "messages_column": spec.messages_column,
        "id_column": id_column,
        "max_tokens_column": spec.max_tokens_column,
        "structured_outputs_column": spec.structured_outputs_column,
        "sampling_params": params,
    }
