"""Ask L2 for bytes a program will read later (``prefetch.global.L2``, one address per 128-byte line).

With programmatic dependent launch a batch-1 GEMV starts while the kernel before it still runs: it loads its
first step's words and then waits. ``GemvConfig.l2_slice`` fills that wait: each program asks L2 for the rest
of its own slice (words, scales, offsets), so the later steps find their lines in L2 or on their way. A
prefetch is a hint: it moves nothing into registers, blocks nothing and cannot change a result. Not under the
Triton interpreter (no PTX there). Asking for a later launch's weights instead was measured slower
(BENCHMARKS.md, session 19).
"""

from __future__ import annotations

import triton
import triton.language as tl

LINE = tl.constexpr(128)  # bytes per prefetch


@triton.jit
def _ask_l2(ptrs):
    """``prefetch.global.L2`` of the line holding each address (a tensor of pointers)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def prefetch_tile(ptr, row0, ROWS: tl.constexpr, col0, COLS: tl.constexpr, N):
    """Ask L2 for rows ``row0 + [0, ROWS)`` of columns ``col0 + [0, COLS)`` of a row-major ``(*, N)`` tensor:
    one address per 128 bytes from ``col0`` (columns clamped to the row), so a tile that does not start on a
    line boundary leaves its last line to the demand load. A tile narrower than a line is asked for by every
    thread holding a copy (repeats of a line in flight cost an issue slot, nothing more)."""
    STEP: tl.constexpr = LINE // ptr.dtype.element_ty.primitive_bitwidth * 8
    LINES: tl.constexpr = COLS // STEP if COLS > STEP else 1
    cols = tl.minimum(col0 + tl.arange(0, LINES) * STEP, N - 1)  # (LINES,)
    _ask_l2(ptr + (row0 + tl.arange(0, ROWS))[:, None] * N + cols[None, :])  # (ROWS, LINES)
