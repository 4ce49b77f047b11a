"""numba.cuda MoE kernels: routing, the stable expert-contiguous permutation, the combine.

The permutation is a stable counting sort in three launches, none of which depends on the
order in which atomics land: (1) each block ranks its chunk of assignments among equal
experts inside the chunk and counts them per expert; (2) one block turns the per-chunk counts
into per-chunk bases (expert offset + earlier chunks' counts) and the expert offsets; (3) each
assignment lands at base + rank. Then the rows are copied. Out-of-range expert ids are skipped
(never written through), not reported: reporting would need a device sync.
"""

from __future__ import annotations

from numba import cuda, int64

from tideflow.kernels.moe import route_token

THREADS = 256  # threads per block, and assignments per chunk of the counting sort


@cuda.jit(cache=True)
def _route_kernel(logits, renormalize, weights, experts):  # pragma: no cover (device code)
    t = cuda.grid(1)
    if t < logits.shape[0]:
        route_token(logits, t, renormalize, weights, experts)


@cuda.jit(cache=True)
def _rank_kernel(experts, num_experts, ranks, chunk_counts):  # pragma: no cover (device code)
    """ranks[a]: earlier assignments of a's expert within a's chunk; chunk_counts[chunk, e] += 1."""
    chunk_experts = cuda.shared.array(THREADS, int64)
    top_k = experts.shape[1]
    total = experts.shape[0] * top_k
    tid, chunk = cuda.threadIdx.x, cuda.blockIdx.x
    a = chunk * cuda.blockDim.x + tid
    e = experts[a // top_k, a % top_k] if a < total else -1
    chunk_experts[tid] = e
    cuda.syncthreads()
    if 0 <= e < num_experts:
        rank = 0
        for i in range(tid):
            if chunk_experts[i] == e:
                rank += 1
        ranks[a] = rank
        cuda.atomic.add(chunk_counts, (chunk, e), 1)


@cuda.jit(cache=True)
def _bases_kernel(chunk_counts, offsets):  # pragma: no cover (device code)
    """One block: expert offsets (exclusive prefix sum of the totals), then chunk_counts[c, e]
    becomes the first permuted row of chunk c's assignments to expert e."""
    num_chunks, num_experts = chunk_counts.shape
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    for e in range(tid, num_experts, nt):
        total = 0
        for c in range(num_chunks):
            total += chunk_counts[c, e]
        offsets[e + 1] = total
    cuda.syncthreads()
    if tid == 0:
        offsets[0] = 0
        for e in range(num_experts):
            offsets[e + 1] += offsets[e]
    cuda.syncthreads()
    for e in range(tid, num_experts, nt):
        base = offsets[e]
        for c in range(num_chunks):
            count = chunk_counts[c, e]
            chunk_counts[c, e] = base
            base += count


@cuda.jit(cache=True)
def _place_kernel(experts, num_experts, ranks, chunk_bases, source, dest):  # pragma: no cover (device code)
    a = cuda.grid(1)
    top_k = experts.shape[1]
    if a >= experts.shape[0] * top_k:
        return
    t, j = a // top_k, a % top_k
    e = experts[t, j]
    if 0 <= e < num_experts:
        row = chunk_bases[a // THREADS, e] + ranks[a]
        dest[t, j] = row
        source[row] = t
    else:
        dest[t, j] = -1


@cuda.jit(cache=True)
def _gather_kernel(hidden, source, out):  # pragma: no cover (device code)
    i = cuda.grid(1)
    width = out.shape[1]
    if i < out.shape[0] * width:
        p, h = i // width, i % width
        src = source[p]
        if 0 <= src < hidden.shape[0]:
            out[p, h] = hidden[src, h]


@cuda.jit(cache=True)
def _combine_kernel(expert_out, dest, weights, out):  # pragma: no cover (device code)
    i = cuda.grid(1)
    width = out.shape[1]
    if i < out.shape[0] * width:
        t, h = i // width, i % width
        acc = 0.0
        for j in range(dest.shape[1]):
            row = dest[t, j]
            if 0 <= row < expert_out.shape[0]:
                acc += weights[t, j] * expert_out[row, h]
        out[t, h] = acc


def _blocks(n: int) -> int:
    return max(1, -(-n // THREADS))


# -- launches on arrays numba.cuda accepts (device arrays, or numpy in the simulator) -----------
def launch_route(logits, renormalize, weights, experts, stream=0) -> None:
    _route_kernel[_blocks(logits.shape[0]), THREADS, stream](logits, renormalize, weights, experts)


def launch_permute(hidden, experts, num_experts, offsets, source, dest, out, ranks, chunk_counts, stream=0) -> None:
    """ranks: [T * k] int64 scratch; chunk_counts: [ceil(T * k / THREADS), E] int64, zeroed."""
    total = experts.shape[0] * experts.shape[1]
    chunks = _blocks(total)
    _rank_kernel[chunks, THREADS, stream](experts, num_experts, ranks, chunk_counts)
    _bases_kernel[1, THREADS, stream](chunk_counts, offsets)
    _place_kernel[chunks, THREADS, stream](experts, num_experts, ranks, chunk_counts, source, dest)
    _gather_kernel[_blocks(total * out.shape[1]), THREADS, stream](hidden, source, out)


def launch_combine(expert_out, dest, weights, out, stream=0) -> None:
    _combine_kernel[_blocks(out.shape[0] * out.shape[1]), THREADS, stream](expert_out, dest, weights, out)


# -- torch CUDA tensors, checked by the entry points in tideflow.kernels.moe ---------------------
def route_cuda(logits, renormalize, weights, experts) -> None:
    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    arrays = [device_array(t) for t in (logits, weights, experts)]
    with on_device(logits.device):
        launch_route(arrays[0], renormalize, *arrays[1:], stream=current_stream(logits.device))


def permute_cuda(hidden, experts, offsets, source, dest, out) -> None:
    import torch

    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    total = experts.numel()
    ranks = torch.empty(total, dtype=torch.int64, device=hidden.device)
    chunk_counts = torch.zeros((_blocks(total), offsets.numel() - 1), dtype=torch.int64, device=hidden.device)
    arrays = [device_array(t) for t in (hidden, experts)]
    rest = [device_array(t) for t in (offsets, source, dest, out, ranks, chunk_counts)]
    with on_device(hidden.device):
        launch_permute(*arrays, offsets.numel() - 1, *rest, stream=current_stream(hidden.device))


def combine_cuda(expert_out, dest, weights, out) -> None:
    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    with on_device(out.device):
        launch_combine(*(device_array(t) for t in (expert_out, dest, weights, out)), stream=current_stream(out.device))
