"""Batch inputs without Ray: which files a job reads, how they split into read units, and the
row ids that key rows across runs (parquet, jsonl, csv)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tideflow.batch.inputs import INPUT_ERROR, ROW_ID, check_columns, expand_input, plan_units, read_unit


def _write_inputs(root):
    (root / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(10)]}), root / "a.parquet", row_group_size=3)
    (root / "sub" / "b.jsonl").write_text("\n".join(json.dumps({"prompt": f"j{i}", "n": i}) for i in range(4)) + "\n")
    (root / "c.csv").write_text("prompt,n\nc0,0\n,1\n42,2\n")
    (root / "_skipped.csv").write_text("prompt\nx\n")
    (root / "notes.txt").write_text("not an input")


def test_expand_input_finds_directory_glob_and_file_inputs(tmp_path):
    _write_inputs(tmp_path)
    assert [k for _, k in expand_input(tmp_path)] == ["a.parquet", "c.csv", "sub/b.jsonl"]
    assert [k for _, k in expand_input(str(tmp_path / "**" / "*.jsonl"))] == ["sub/b.jsonl"]
    assert [k for _, k in expand_input(tmp_path / "c.csv")] == ["c.csv"]
    with pytest.raises(ValueError, match="input: no such file"):
        expand_input(tmp_path / "missing")
    with pytest.raises(ValueError, match="input: .*notes.txt is not a"):
        expand_input(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="input: no parquet, jsonl or csv files"):
        expand_input(str(tmp_path / "*.txt"))


def test_row_ids_are_file_and_index_and_stable_across_unit_splits(tmp_path):
    _write_inputs(tmp_path)
    files = expand_input(tmp_path)
    fine, coarse = plan_units(files, rows_per_unit=3), plan_units(files, rows_per_unit=1000)
    assert [u.first_row for u in fine if u.format == "parquet"] == [0, 3, 6, 9]
    assert len([u for u in coarse if u.format == "parquet"]) == 1

    def ids(units):
        return [rid for u in units for rid in read_unit(u, text_column="prompt").column(ROW_ID).to_pylist()]

    expected = [f"a.parquet:{i}" for i in range(10)] + [f"c.csv:{i}" for i in range(3)] + [f"sub/b.jsonl:{i}" for i in range(4)]
    assert ids(fine) == ids(coarse) == expected
    parquet_rows = [read_unit(u, text_column="prompt").column("prompt").to_pylist() for u in fine if u.format == "parquet"]
    assert sum(parquet_rows, []) == [f"p{i}" for i in range(10)]
    csv = read_unit(next(u for u in fine if u.format == "csv"), text_column="prompt")
    assert csv.column("prompt").to_pylist() == ["c0", "", "42"]  # the prompt column stays text


def test_an_id_column_keys_rows_and_must_have_no_nulls(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b"], "key": [7, 9]}), tmp_path / "k.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"], "key": [7, None]}), tmp_path / "nulls.parquet")
    (unit,) = plan_units([(str(tmp_path / "k.parquet"), "k.parquet")])
    assert read_unit(unit, id_column="key").column(ROW_ID).to_pylist() == ["7", "9"]
    (bad,) = plan_units([(str(tmp_path / "nulls.parquet"), "nulls.parquet")])
    with pytest.raises(ValueError, match="key: 1 row"):
        read_unit(bad, id_column="key")
    files = [(str(tmp_path / "k.parquet"), "k.parquet")]
    with pytest.raises(ValueError, match="id_column: k.parquet has no column 'id'"):
        check_columns(files, {"prompt_column": "prompt", "id_column": "id"})
    with pytest.raises(ValueError, match="messages_column: k.parquet has no column 'messages'"):
        check_columns(files, {"messages_column": "messages"})
    with pytest.raises(ValueError, match=r"input: k.parquet has columns \['key'\]"):
        check_columns(files, {"prompt_column": "prompt"}, reserved=("key",))


def test_jsonl_with_a_non_string_prompt_marks_that_row(tmp_path):
    rows = [{"prompt": "fine", "meta": "x"}, {"prompt": 42, "meta": 5}, {"prompt": None}, {"prompt": ["a"], "meta": {"k": 1}}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (unit,) = plan_units(expand_input(path))
    table = read_unit(unit, text_column="prompt")
    assert table.column("prompt").to_pylist() == ["fine", None, None, None]
    assert table.column(INPUT_ERROR).to_pylist() == [
        None, "prompt: expected a string, got number", None, "prompt: expected a string, got array"]
    assert table.column("meta").to_pylist() == ["x", "5", None, '{"k": 1}']  # other mixed columns: JSON text
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (broken,) = plan_units(expand_input(tmp_path / "broken.jsonl"))
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_unit(broken, text_column="prompt")
