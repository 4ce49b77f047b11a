"""The output directory without Ray: committed parts, cleanup after a killed run, and the
manifest that keeps a different job from resuming into it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tideflow.batch.output import MANIFEST, batch_stats, check_manifest, commit, committed, scan_output


def _batch(ids, errors=None):
    n = len(ids)
    return pa.table({
        "row_id": ids, "num_prompt_tokens": [3] * n, "num_generated_tokens": [4] * n,
        "error": errors or [None] * n,
    })


def test_commit_is_named_by_its_rows_and_a_rerun_overwrites(tmp_path):
    first = commit(_batch(["a:0", "a:1"]), str(tmp_path))
    assert committed(str(tmp_path), pa.array(["a:0", "a:1"])) == first
    assert committed(str(tmp_path), pa.array(["a:0"])) is None
    assert commit(_batch(["a:0", "a:1"]), str(tmp_path)) == first  # a retried batch: same file
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    stats = batch_stats(_batch(["x", "y", "z"], errors=[None, "bad", None])).to_pylist()
    assert stats == [{"rows": 3, "errors": 1, "prompt_tokens": 9, "generated_tokens": 12}]


def test_scan_cleans_up_after_a_killed_run(tmp_path):
    commit(_batch(["a:0", "a:1"]), str(tmp_path))
    commit(_batch(["a:2"]), str(tmp_path))
    pq.write_table(_batch(["a:1"]), tmp_path / "part-duplicate.parquet")
    (tmp_path / "_tmp-part-x.parquet.123.tmp").write_bytes(b"PAR1 half written")
    (tmp_path / "part-truncated.parquet").write_bytes(b"PAR1 no footer")
    scan = scan_output(tmp_path)
    assert sorted(scan.row_ids.to_pylist()) == ["a:0", "a:1", "a:2"]
    assert (scan.rows, scan.parts, scan.duplicates) == (4, 3, 1)
    assert [p.split("/")[-1] for p in scan.set_aside] == ["_corrupt-part-truncated.parquet.corrupt"]
    assert not list(tmp_path.glob("_tmp-*")) and not (tmp_path / "part-truncated.parquet").exists()
    assert pq.read_table(tmp_path).num_rows == 4  # what is left reads as one table


def test_manifest_refuses_a_different_job(tmp_path):
    job = {"model": "/m", "sampling_params": {"max_tokens": 8}}
    check_manifest(tmp_path, job)
    check_manifest(tmp_path, dict(job))  # the same job resumes
    assert (tmp_path / MANIFEST).is_file()
    with pytest.raises(ValueError, match=r"output_dir: .* \(sampling_params differ\)"):
        check_manifest(tmp_path, {**job, "sampling_params": {"max_tokens": 9}})
