"""Batch inference over datasets with Ray Data.

- `run(dataset, model_or_graph, ...)`: a Ray Dataset with generated columns added (lazy).
- `run_job(input, output_dir, model_or_graph, ...)`: parquet/jsonl/csv files in, parquet out,
  resumable after a crash; what `tideflow batch` runs. Returns a `BatchSummary`.
"""

from __future__ import annotations

from tideflow.batch.generator import OUTPUT_FIELDS, OUTPUT_NAMES
from tideflow.batch.job import BatchSummary, run_job
from tideflow.batch.run import run

__all__ = ["run", "run_job", "BatchSummary", "OUTPUT_FIELDS", "OUTPUT_NAMES"]
