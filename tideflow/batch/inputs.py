"""A batch job's input: which files, split into read units, read with a stable row id per row.

Inputs are parquet, jsonl (or .json lines) and csv files, given as one file, a directory
(searched recursively; names starting with "." or "_" are skipped) or a glob. The format
comes from each file's extension, so one directory may mix formats.

Every row gets a `row_id` string that names it across runs: the value of the input's own id
column when it has one, else `"{file}:{index}"` (the file's path relative to the input root,
and the row's index within the file). Ray Data's readers do not expose a row's index within
its file, so the job reads files in its own read tasks: a unit is a whole jsonl/csv file or
a run of parquet row groups (whose first row index comes from the file's metadata).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

ROW_ID = "row_id"  # the key column: an input column of that name is used as is
INPUT_ERROR = "_tideflow_input_error"  # set by the reader for a text value it could not keep
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
ROWS_PER_UNIT = 50_000  # parquet row groups are grouped into read units of about this many rows


@dataclass(frozen=True, slots=True)
class ReadUnit:
    """One read task's share of the input."""

    path: str  # absolute path of the file
    key: str  # the file's path relative to the input root: row ids are f"{key}:{index}"
    format: str  # "parquet" | "jsonl" | "csv"
    row_groups: tuple[int, ...] | None  # parquet: the row groups to read; None: the whole file
    first_row: int  # index within the file of the unit's first row


def expand_input(spec: str | os.PathLike) -> list[tuple[str, str]]:
    """(absolute path, key) of every input file, sorted by key. Raises ValueError naming the
    input when nothing matches or a named file has an unknown extension."""
    text = os.fspath(spec)
    if glob.has_magic(text):
        matches = sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
        root = Path(_glob_root(text))
        files = [Path(p) for p in matches if Path(p).suffix.lower() in FORMATS]
    elif Path(text).is_dir():
        root = Path(text)
        files = sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in FORMATS
            and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        )
    elif Path(text).is_file():
        root, files = Path(text).parent, [Path(text)]
        if Path(text).suffix.lower() not in FORMATS:
            raise ValueError(f"input: {text} is not a {', '.join(sorted(FORMATS))} file")
    else:
        raise ValueError(f"input: no such file, directory or glob match: {text}")
    if not files:
        raise ValueError(f"input: no parquet, jsonl or csv files in {text}")
    root = root.resolve()
    return [(str(f.resolve()), f.resolve().relative_to(root).as_posix()) for f in files]


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return str(Path(*fixed)) if fixed else "."


def plan_units(files: list[tuple[str, str]], rows_per_unit: int = ROWS_PER_UNIT) -> list[ReadUnit]:
    """Read units over `files`: jsonl/csv whole, parquet by runs of row groups."""
    import pyarrow.parquet as pq

    units = []
    for path, key in files:
        fmt = FORMATS[Path(path).suffix.lower()]
        if fmt != "parquet":
            units.append(ReadUnit(path, key, fmt, None, 0))
            continue
        meta = pq.ParquetFile(path).metadata
        group, first, rows = [], 0, 0
        for i in range(meta.num_row_groups):
            group.append(i)
            rows += meta.row_group(i).num_rows
            if rows >= rows_per_unit or i == meta.num_row_groups - 1:
                units.append(ReadUnit(path, key, fmt, tuple(group), first))
                group, first, rows = [], first + rows, 0
        if meta.num_row_groups == 0:
            units.append(ReadUnit(path, key, fmt, (), 0))
    return units


def read_unit(unit: ReadUnit, *, text_column: str | None = None, id_column: str = ROW_ID) -> pa.Table:
    """The unit's rows with a `row_id` string column (see the module docstring). `text_column`
    is the prompt or messages column: in a jsonl file whose values of it differ in type, the
    values that are not strings (lists for messages) are read as null, each with a reason in
    the `INPUT_ERROR` column. Raises ValueError when the id column has nulls."""
    if unit.format == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups))
    elif unit.format == "csv":
        import pyarrow.csv as pcsv

        types = {text_column: pa.string()} if text_column else {}
        table = pcsv.read_csv(unit.path, convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False))
    else:
        table = _read_jsonl(unit.path, text_column)
    return _with_row_ids(table, unit, id_column)


def check_columns(files: list[tuple[str, str]], columns: dict[str, str], reserved: tuple[str, ...] = ()) -> None:
    """Before anything runs: every file has the `columns` (argument name -> column name, e.g.
    {"prompt_column": "prompt"}) and none has a `reserved` (output) column. Reads only schemas
    (parquet) or each file's first block (jsonl, csv). Raises ValueError naming the argument."""
    for path, key in files:
        names = file_columns(path)
        for field, column in columns.items():
            if column not in names:
                raise ValueError(f"{field}: {key} has no column {column!r} (its columns: {', '.join(names)})")
        clash = [n for n in reserved if n in names]
        if clash:
            raise ValueError(f"input: {key} has columns {clash} that the output would overwrite; rename them")


def file_columns(path: str) -> list[str]:
    """The column names of one input file, from its schema or its first block."""
    fmt = FORMATS[Path(path).suffix.lower()]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if fmt == "csv":
        import pyarrow.csv as pcsv

        with pcsv.open_csv(path) as reader:
            return reader.schema.names
    import pyarrow.json as pjson

    try:
        with pjson.open_json(path) as reader:
            return reader.schema.names
    except pa.ArrowInvalid:  # mixed types early on: the line-by-line reader copes
        return _read_jsonl(path, None).column_names


def _with_row_ids(table: pa.Table, unit: ReadUnit, id_column: str) -> pa.Table:
    names = table.column_names
    if id_column not in names:
        if id_column != ROW_ID:
            raise ValueError(f"id_column: {unit.key} has no column {id_column!r}")
        index = pc.cast(pa.array(range(unit.first_row, unit.first_row + table.num_rows), pa.int64()), pa.string())
        return table.append_column(ROW_ID, pc.binary_join_element_wise(unit.key, index, ":"))
    ids = table.column(id_column)
    if ids.null_count:
        raise ValueError(f"{id_column}: {ids.null_count} row(s) of {unit.key} have no id")
    ids = ids.cast(pa.string())
    if id_column == ROW_ID:
        return table.set_column(names.index(ROW_ID), ROW_ID, ids)
    if ROW_ID in names:
        raise ValueError(f"id_column: {unit.key} has both {id_column!r} and a {ROW_ID!r} column; name one of them")
    return table.append_column(ROW_ID, ids)


def _read_jsonl(path: str, text_column: str | None) -> pa.Table:
    import pyarrow.json as pjson

    try:
        return pjson.read_json(path)
    except pa.ArrowInvalid:
        pass  # e.g. a column whose values differ in type: parse line by line
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"input: {path} line {number} is not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"input: {path} line {number} is not a JSON object")
            rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns, errors = {}, [None] * len(rows)
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        if name == text_column:
            keep = list if any(isinstance(v, list) for v in values) and not any(isinstance(v, str) for v in values) else str
            for i, v in enumerate(values):
                if v is not None and not isinstance(v, keep):
                    errors[i] = f"{name}: expected a {'list' if keep is list else 'string'}, got {_json_type(v)}"
                    values[i] = None
            columns[name] = pa.array(values)
        else:  # a column that is not the text: values that are not strings are kept as JSON text
            columns[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
    if any(errors):
        columns[INPUT_ERROR] = pa.array(errors, pa.string())
    return pa.table(columns)


def _json_type(value) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def unit_rows(units: list[ReadUnit]) -> list[dict]:
    """The units as plain rows for `ray.data.from_items`."""
    return [{"unit": json.dumps(asdict(u))} for u in units]


def unit_from_row(text: str) -> ReadUnit:
    data = json.loads(text)
    groups = data["row_groups"]
    return ReadUnit(data["path"], data["key"], data["format"], None if groups is None else tuple(groups), data["first_row"])
