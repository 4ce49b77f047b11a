"""Arrow `list<int32>` token ids -> packed model inputs (input ids, positions, cu_seqlens).

A batch of requests arrives as a RecordBatch whose token column is a list array: one offsets
buffer and one values buffer for all rows. The model wants the rows' not-yet-computed tokens
concatenated (padding-free), each token's position in its own row, and the row boundaries.
`pack_tokens` reads the two Arrow buffers in place (zero-copy numpy views, honouring a sliced
array's offset; null rows are an error) and packs with one kernel over rows, never a Python
loop over tokens.

- `pack_ref`: the torch reference over the same buffers (repeat_interleave + gather).
- `_pack_cpu`: numba, one pass over rows; `tideflow.kernels.cuda.arrow_pack` packs on a GPU
  (one thread per output token) after one host-to-device copy of each buffer.
- `list_buffers`: the zero-copy views; `pack_tokens`: the checked entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import torch

from tideflow.kernels.checks import check_backend


@dataclass(slots=True)
class PackedTokens:
    """The uncomputed tokens of R rows, packed."""

    input_ids: torch.Tensor  # [N] int64: row 0's tokens, then row 1's, ...
    positions: torch.Tensor  # [N] int64: each token's position within its own row
    cu_seqlens: torch.Tensor  # [R + 1] int64: row r owns input_ids[cu_seqlens[r]:cu_seqlens[r + 1]]


def list_buffers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [R + 1], values) of a `list<int32>` / `large_list<int32>` array as numpy views of
    its Arrow buffers (no copy): row r is values[offsets[r]:offsets[r + 1]]. Raises ValueError on
    other types and on null rows or null token ids."""
    if isinstance(column, pa.ChunkedArray):
        raise ValueError("pack_tokens: pass one Arrow array (a RecordBatch column), not a ChunkedArray")
    if not isinstance(column, (pa.ListArray, pa.LargeListArray)) or column.type.value_type != pa.int32():
        raise ValueError(f"pack_tokens: the column must be list<int32>, got {getattr(column, 'type', type(column))}")
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[:5].tolist()
        raise ValueError(f"pack_tokens: {column.null_count} null row(s) in the token column (rows {rows}...)")
    values = column.values  # the whole child array: offsets index into it, whatever the parent's slice
    if values.null_count:
        raise ValueError(f"pack_tokens: the token column holds {values.null_count} null token id(s)")
    offset_type = np.int32 if isinstance(column, pa.ListArray) else np.int64
    width = np.dtype(offset_type).itemsize
    offsets_buf, data_buf = column.buffers()[1], values.buffers()[1]
    if offsets_buf is None or len(column) == 0:
        offsets = np.zeros(len(column) + 1, dtype=offset_type)
    else:
        offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=len(column) + 1, offset=column.offset * width)
    if data_buf is None:
        return offsets, np.zeros(0, dtype=np.int32)
    data = np.frombuffer(data_buf, dtype=np.int32, count=values.offset + len(values))
    return offsets, data[values.offset :]


# -- torch reference ---------------------------------------------------------------------------
def pack_ref(offsets: torch.Tensor, values: torch.Tensor, starts: torch.Tensor) -> PackedTokens:
    """offsets [R + 1] int64, values int32, starts [R] int64 (tokens already computed per row)."""
    rows = starts.numel()
    lengths = offsets[1:] - offsets[:-1] - starts
    cu = torch.zeros(rows + 1, dtype=torch.int64, device=offsets.device)
    cu[1:] = lengths.cumsum(0)
    row = torch.repeat_interleave(torch.arange(rows, device=offsets.device), lengths)
    positions = torch.arange(row.numel(), device=offsets.device) - cu[row] + starts[row]
    return PackedTokens(values[offsets[row] + positions].to(torch.int64), positions, cu)


# -- numba CPU kernel ----------------------------------------------------------------------------
@numba.njit(cache=True)
def _pack_cpu(offsets, values, starts, cu, input_ids, positions):  # pragma: no cover (jitted)
    """Serial: a batch is ~1e5 tokens, a copy that finishes before a parallel region would start."""
    for r in range(starts.shape[0]):
        begin, first = offsets[r] + starts[r], cu[r]
        for j in range(cu[r + 1] - first):
            input_ids[first + j] = values[begin + j]
            positions[first + j] = starts[r] + j


# -- entry point ---------------------------------------------------------------------------------
def _row_starts(starts, rows: int) -> np.ndarray:
    if starts is None:
        return np.zeros(rows, dtype=np.int64)
    if isinstance(starts, torch.Tensor):
        starts = starts.cpu().numpy()
    out = np.asarray(starts)
    if out.shape != (rows,) or not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"pack_tokens: starts must hold one integer per row ({rows}), got {out.dtype} {out.shape}")
    return out.astype(np.int64, copy=False)


def pack_tokens(column: pa.Array, starts=None, *, device="cpu", backend: str = "auto") -> PackedTokens:
    """Packs the tokens of each row from `starts[r]` (default 0: the whole row) on `device`.
    CPU runs the numba kernel, CUDA the numba.cuda kernel, backend="torch" `pack_ref`."""
    check_backend("pack_tokens", backend)
    offsets, values = list_buffers(column)
    rows = len(column)
    first = _row_starts(starts, rows)
    lengths = np.diff(offsets) - first
    if rows and (first.min() < 0 or lengths.min() < 0):
        bad = int(np.flatnonzero((first < 0) | (lengths < 0))[0])
        raise ValueError(f"pack_tokens: row {bad} starts at {first[bad]} but has {offsets[bad + 1] - offsets[bad]} tokens")
    device = torch.device(device)
    if backend == "torch":
        return pack_ref(
            torch.from_numpy(offsets.astype(np.int64)).to(device), torch.from_numpy(values.copy()).to(device),
            torch.from_numpy(first).to(device),
        )
    cu = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    if device.type == "cuda":
        from tideflow.kernels.cuda.arrow_pack import pack_cuda

        return pack_cuda(offsets, values, first, cu, device)
    if device.type != "cpu":
        raise ValueError(f"pack_tokens: no kernel for device {device}; use backend='torch'")
    out = PackedTokens(torch.empty(int(cu[-1]), dtype=torch.int64), torch.empty(int(cu[-1]), dtype=torch.int64),
                       torch.from_numpy(cu))
    _pack_cpu(offsets, values, first, cu, out.input_ids.numpy(), out.positions.numpy())
    return out


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference): 256 rows x 512 prompt tokens, a prefill batch off an edge."""
    rng = np.random.default_rng(0)
    rows, length = 256, 512
    column = pa.array(list(rng.integers(0, 32000, (rows, length), dtype=np.int32)), type=pa.list_(pa.int32()))
    return [("arrow pack 256x512", lambda: pack_tokens(column), lambda: pack_tokens(column, backend="torch"))]
