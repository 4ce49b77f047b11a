"""Arrow list<int32> token columns -> packed input ids / positions / cu_seqlens: the numba kernel
against the torch reference and against Arrow's own row conversion, on fresh random batches
(sliced arrays, offset children, empty rows, per-row start offsets), and its input checks.

Each randomised test draws its seed from os.urandom and names it in its assertion messages."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from tideflow.kernels.arrow_pack import _pack_cpu, list_buffers, pack_tokens


def _rng() -> tuple[np.random.Generator, int]:
    seed = int.from_bytes(os.urandom(4), "little")
    return np.random.default_rng(seed), seed


def _column(rng, rows: int, large: bool = False) -> pa.Array:
    """A token column with empty rows, sliced so that the array and its child both carry offsets."""
    lists = [rng.integers(0, 2**31 - 1, rng.integers(0, 40), dtype=np.int32).tolist() for _ in range(rows + 5)]
    lists[1] = []
    column = pa.array(lists, type=pa.large_list(pa.int32()) if large else pa.list_(pa.int32()))
    return column.slice(3, rows)


def _starts(rng, column: pa.Array) -> np.ndarray:
    lengths = np.array([len(r) for r in column.to_pylist()], dtype=np.int64)
    return rng.integers(0, lengths + 1)  # anything from nothing computed to everything computed


def _expected(column: pa.Array, starts: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Straight from Arrow's own conversion, row by row."""
    ids, positions, cu = [], [], [0]
    for row, start in zip(column.to_pylist(), starts):
        ids += row[start:]
        positions += list(range(start, len(row)))
        cu.append(len(ids))
    return ids, positions, cu


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("rows", [0, 1, 7, 200])
def test_pack_matches_reference_and_arrow(rows, large):
    rng, seed = _rng()
    column = _column(rng, rows, large)
    starts = _starts(rng, column)
    want = _expected(column, starts)
    msg = f"seed {seed}"
    for packed in (pack_tokens(column, starts), pack_tokens(column, starts, backend="torch")):
        got = (packed.input_ids.tolist(), packed.positions.tolist(), packed.cu_seqlens.tolist())
        assert got == want, msg
        assert packed.input_ids.dtype == packed.positions.dtype == packed.cu_seqlens.dtype == torch.int64, msg
    whole = pack_tokens(column)  # no starts: every token
    assert whole.input_ids.tolist() == [t for row in column.to_pylist() for t in row], msg


def test_buffers_are_zero_copy_views_and_child_offsets_count():
    values = pa.array(np.arange(100, dtype=np.int32)).slice(10)  # the child starts at 10
    column = pa.ListArray.from_arrays(pa.array([0, 3, 3, 7], type=pa.int32()), values)
    offsets, data = list_buffers(column)
    assert not data.flags.owndata and not offsets.flags.owndata
    assert data.ctypes.data == values.buffers()[1].address + 10 * 4
    assert pack_tokens(column).input_ids.tolist() == [10, 11, 12, 13, 14, 15, 16]


def test_kernel_writes_every_element():
    rng, seed = _rng()
    column = _column(rng, 50)
    starts = _starts(rng, column)
    offsets, values = list_buffers(column)
    want = _expected(column, starts)
    cu = np.asarray(want[2], dtype=np.int64)
    ids, positions = np.full(cu[-1], -9, dtype=np.int64), np.full(cu[-1], -9, dtype=np.int64)
    _pack_cpu(offsets, values, starts, cu, ids, positions)
    assert ids.tolist() == want[0] and positions.tolist() == want[1], f"seed {seed}"


def test_rejects_bad_columns_and_starts():
    column = pa.array([[1, 2], [3]], type=pa.list_(pa.int32()))
    with pytest.raises(ValueError, match=r"1 null row\(s\) in the token column \(rows \[1\]"):
        pack_tokens(pa.array([[1], None, [2]], type=pa.list_(pa.int32())))
    with pytest.raises(ValueError, match=r"holds 1 null token id"):
        pack_tokens(pa.array([[1, None]], type=pa.list_(pa.int32())))
    with pytest.raises(ValueError, match="must be list<int32>, got list<item: int64>"):
        pack_tokens(pa.array([[1, 2]], type=pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="not a ChunkedArray"):
        pack_tokens(pa.chunked_array([column]))
    with pytest.raises(ValueError, match="row 1 starts at 2 but has 1 tokens"):
        pack_tokens(column, [0, 2])
    with pytest.raises(ValueError, match=r"starts must hold one integer per row \(2\)"):
        pack_tokens(column, [0])
    with pytest.raises(ValueError, match="no kernel for device meta"):
        pack_tokens(column, device="meta")
    with pytest.raises(ValueError, match="backend must be one of"):
        pack_tokens(column, backend="cupy")
