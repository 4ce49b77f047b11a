"""A batch job's output directory: committed parquet parts, what they hold, the job's manifest.

Each generated batch is committed as one file, `part-{digest}.parquet`: written under a
temporary name, then renamed, so a file with the final name is always complete. The digest
is taken over the batch's row ids, so a batch that Ray Data retries (its actor died) writes
the same name again instead of a second copy. A restarted job scans the directory: temporary
leftovers are removed, an unreadable part is set aside as `_corrupt-*.corrupt`, and the row ids
found are the rows to skip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tideflow.batch.inputs import ROW_ID

logger = logging.getLogger(__name__)

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
TMP_PREFIX, TMP_SUFFIX = "_tmp-", ".tmp"
CORRUPT_PREFIX, CORRUPT_SUFFIX = "_corrupt-", ".corrupt"  # "_" and a non-parquet suffix: pyarrow and Ray skip it
MANIFEST = "_tideflow_job.json"
STATS = pa.schema([  # one row per committed batch: what the job's summary adds up
    ("rows", pa.int64()), ("errors", pa.int64()), ("prompt_tokens", pa.int64()), ("generated_tokens", pa.int64()),
])


def part_name(row_ids: pa.Array) -> str:
    digest = hashlib.sha1()
    for rid in row_ids.to_pylist():
        digest.update(rid.encode())
        digest.update(b"\0")
    return f"{PART_PREFIX}{digest.hexdigest()[:20]}{PART_SUFFIX}"


def batch_stats(table: pa.Table) -> pa.Table:
    """The STATS row of one output batch."""
    import pyarrow.compute as pc

    def total(name: str) -> int:
        return int(pc.sum(table.column(name)).as_py() or 0)

    row = {"rows": table.num_rows, "errors": table.num_rows - table.column("error").null_count,
           "prompt_tokens": total("num_prompt_tokens"), "generated_tokens": total("num_generated_tokens")}
    return pa.Table.from_pylist([row], schema=STATS)


def committed(output_dir: str, row_ids: pa.Array) -> Path | None:
    """The part that already holds exactly these rows (a retried batch), or None."""
    path = Path(output_dir) / part_name(row_ids)
    return path if path.is_file() else None


def commit(table: pa.Table, output_dir: str) -> Path:
    """Write one output batch as a part file: temporary name, then an atomic rename."""
    import pyarrow.parquet as pq

    name = part_name(table.column(ROW_ID).combine_chunks())
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{TMP_PREFIX}{name}.{os.getpid()}{TMP_SUFFIX}"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


@dataclass(slots=True)
class OutputScan:
    """What an output directory holds."""

    row_ids: pa.Array  # string: the distinct row ids of its parts
    rows: int  # rows over all parts (rows - len(row_ids) are duplicates)
    parts: int  # readable part files
    set_aside: list[str]  # unreadable parts renamed to _corrupt-*.corrupt by this scan

    @property
    def duplicates(self) -> int:
        return self.rows - len(self.row_ids)


def scan_output(output_dir: str | os.PathLike) -> OutputScan:
    """Clean up after a killed run (temporary files, unreadable parts) and list the row ids
    already written."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(output_dir)
    for tmp in root.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
    chunks, rows, parts, aside = [], 0, 0, []
    for part in sorted(root.glob(f"{PART_PREFIX}*{PART_SUFFIX}")):
        try:
            ids = pq.read_table(part, columns=[ROW_ID]).column(ROW_ID)
        except (OSError, pa.ArrowException, KeyError) as exc:
            corrupt = part.with_name(f"{CORRUPT_PREFIX}{part.name}{CORRUPT_SUFFIX}")
            os.replace(part, corrupt)
            aside.append(str(corrupt))
            logger.warning("batch output: %s is unreadable (%s); set aside as %s", part, exc, corrupt.name)
            continue
        chunks.extend(ids.cast(pa.string()).chunks)
        rows += len(ids)
        parts += 1
    all_ids = pa.chunked_array(chunks, pa.string()).combine_chunks() if chunks else pa.array([], pa.string())
    return OutputScan(pc.unique(all_ids), rows, parts, aside)


def check_manifest(output_dir: str | os.PathLike, manifest: dict) -> None:
    """Record the job's definition in a new output directory; in one that has it, refuse a
    different job (its rows would be skipped as if done)."""
    path = Path(output_dir) / MANIFEST
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        if changed:
            raise ValueError(
                f"output_dir: {output_dir} holds the output of a different job ({', '.join(changed)} differ); "
                "use a new directory to run this one"
            )
        return
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
