"""Ask L2 for bytes a later kernel will read (``prefetch.global.L2``, one per 128-byte line).

A batch-1 decode step is a chain of dependent launches, each of which starts by waiting a DRAM round trip for
weights that were known long before: the chain uses a third of the memory bandwidth and pays the latency
64 times. A GEMV given ``PrefetchRanges`` (the weights of a launch further down the step) asks L2 for them
once its own loads and sums are issued, split evenly over its programs; the DRAM stream then runs ahead of the
chain while the small kernels in between (attention, norms) execute. A prefetch is a hint: it moves nothing
into registers, blocks nothing and cannot change a result. Not under the Triton interpreter (no PTX there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.errors import InvalidInput

MAX_RANGES = 4  # a kernel layout's planes a and b, scales and mins
LINE = tl.constexpr(128)  # bytes per prefetch
PASS = tl.constexpr(512)  # line addresses a program computes at once (4 per thread at 4 warps)


@dataclass(frozen=True)
class PrefetchRanges:
    """Up to ``MAX_RANGES`` ``(address, bytes)`` spans of device memory, passed to a kernel as scalars."""

    spans: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.spans) > MAX_RANGES:
            raise InvalidInput(f"at most {MAX_RANGES} prefetch ranges per launch, got {len(self.spans)}")
        if any(size <= 0 or address <= 0 for address, size in self.spans):
            raise InvalidInput(f"prefetch ranges need positive addresses and sizes, got {self.spans}")

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor], cap_bytes: int) -> PrefetchRanges:
        """The storage spans of ``tensors`` (contiguous, on one CUDA device) in order, at most ``cap_bytes``
        in all (a span past the cap is cut; tensors after it are left out): L2 holds tens of MiB."""
        spans, left = [], cap_bytes
        for t in tensors[:MAX_RANGES]:
            if not t.is_contiguous():
                raise InvalidInput("prefetch ranges are taken from contiguous tensors")
            size = min(t.numel() * t.element_size(), left)
            if size <= 0:
                break
            spans.append((t.data_ptr(), size))
            left -= size
        return cls(tuple(spans))

    @property
    def nbytes(self) -> int:
        """Bytes asked for."""
        return sum(size for _, size in self.spans)

    def kernel_args(self) -> list[int]:
        """``[address0, bytes0, ..., address3, bytes3]``, unused spans as zeros (the kernel's ``RANGES``
        constexpr says how many it reads)."""
        padded = list(self.spans) + [(0, 0)] * (MAX_RANGES - len(self.spans))
        return [value for span in padded for value in span]


NO_PREFETCH = PrefetchRanges()


@triton.jit
def _ask_l2(ptrs):
    """``prefetch.global.L2`` of the line holding each address (a tensor of pointers or int64 addresses)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def prefetch_tile(ptr, row0, ROWS: tl.constexpr, col0, COLS: tl.constexpr, N):
    """Ask L2 for rows ``row0 + [0, ROWS)`` of columns ``col0 + [0, COLS)`` of a row-major ``(*, N)`` tensor:
    one address per line (columns clamped to the row)."""
    STEP: tl.constexpr = LINE // ptr.dtype.element_ty.primitive_bitwidth * 8
    LINES: tl.constexpr = COLS // STEP if COLS > STEP else 1
    cols = tl.minimum(col0 + tl.arange(0, LINES) * STEP, N - 1)  # (LINES,)
    _ask_l2(ptr + (row0 + tl.arange(0, ROWS))[:, None] * N + cols[None, :])  # (ROWS, LINES)


@triton.jit
def _prefetch_share(address, nbytes, program, programs):
    """This program's contiguous share of one span's lines (the last line of the share repeats to fill a
    pass: a second request for a line in flight costs nothing)."""
    lines = (nbytes.to(tl.int64) + LINE - 1) // LINE
    lo = program * lines // programs
    hi = (program + 1) * lines // programs
    for first in range(lo, hi, PASS):
        line = tl.minimum(first + tl.arange(0, PASS).to(tl.int64), hi - 1)  # (PASS,)
        _ask_l2(address + line * LINE)


@triton.jit
def prefetch_ranges(a0, n0, a1, n1, a2, n2, a3, n3, RANGES: tl.constexpr):
    """Issue this program's share (the grid's programs split each span evenly) of up to four spans."""
    programs = (tl.num_programs(0) * tl.num_programs(1)).to(tl.int64)
    program = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64)
    if RANGES > 0:
        _prefetch_share(a0, n0, program, programs)
    if RANGES > 1:
        _prefetch_share(a1, n1, program, programs)
    if RANGES > 2:
        _prefetch_share(a2, n2, program, programs)
    if RANGES > 3:
        _prefetch_share(a3, n3, program, programs)
