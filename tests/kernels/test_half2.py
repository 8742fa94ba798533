"""The inline PTX of the f16x2 GEMV, executed instruction by instruction by a small float16 emulator.

The Triton interpreter cannot run inline PTX (the CPU kernel tests take the float32 twin of this path), so
these tests check the generated assembly itself: every field of both halves is masked once, turned into
exactly ``q / R`` by its FMA constants, and multiplied by the right half of the right activation pair.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from bitalloc.kernels._half2 import _PAIR_SQUARES, word_asm


def _halves(reg: int) -> np.ndarray:
    return np.array([reg & 0xFFFF, reg >> 16], dtype=np.uint16).view(np.float16)


def _pack(h: np.ndarray) -> int:
    lo, hi = h.astype(np.float16).view(np.uint16).astype(np.int64)
    return int(lo) | (int(hi) << 16)


def run_ptx_regs(asm: str, inputs: list[int], outputs: int = 1) -> list:
    """Run the PTX subset our kernels emit: ``$0..$outputs-1`` are results, the next ``$i`` 32-bit inputs.
    Returns each output as float16 halves (a 32-bit result) or as a float32 (a ``.f32`` result)."""
    regs: dict[str, object] = {f"${outputs + i}": v for i, v in enumerate(inputs)}

    def val(tok: str) -> int:
        return int(tok, 16) if tok.startswith("0x") else regs[tok]  # type: ignore[return-value]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line[0] in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in re.split(r",(?![^{]*})", rest)]
        if op == "shr.u32":
            regs[args[0]] = val(args[1]) >> int(args[2])
        elif op == "shl.b32":
            regs[args[0]] = (val(args[1]) << int(args[2])) & 0xFFFFFFFF
        elif op == "lop3.b32":  # bit i of the table: the result for (a, b, c) bits with i = 4 a + 2 b + c
            a, b, c = (val(t) for t in args[1:4])
            table, full = int(args[4], 16), 0xFFFFFFFF
            regs[args[0]] = 0
            for i in range(8):
                if table >> i & 1:
                    terms = [x if i >> k & 1 else ~x & full for x, k in ((a, 2), (b, 1), (c, 0))]
                    regs[args[0]] |= terms[0] & terms[1] & terms[2]
        elif op == "mov.b32" and args[0].startswith("{"):
            lo, hi = (t.strip() for t in args[0].strip("{}").split(","))
            regs[lo], regs[hi] = _halves(val(args[1]))
        elif op == "mov.b32":
            regs[args[0]] = val(args[1])
        elif op in ("fma.rn.f16x2", "mul.rn.f16x2"):
            a, b = (_halves(val(t)).astype(np.float64) for t in args[1:3])
            c = _halves(val(args[3])).astype(np.float64) if op.startswith("fma") else 0.0
            regs[args[0]] = _pack((a * b + c).astype(np.float16))  # exact in float64, one rounding
        elif op == "cvt.f32.f16":
            regs[args[0]] = np.float32(regs[args[1]])
        elif op == "add.f32":
            regs[args[0]] = np.float32(regs[args[1]]) + np.float32(regs[args[2]])
        elif op == "mul.f32":
            regs[args[0]] = np.float32(regs[args[1]]) * np.float32(regs[args[2]])
        elif op == "fma.rn.f32":  # one rounding: exact in float64 for float16 inputs
            a, b, c = (np.float64(regs[t]) for t in args[1:4])
            regs[args[0]] = np.float32(a * b + c)
        else:
            raise AssertionError(f"unexpected PTX {line!r}")
    out = [regs[f"${i}"] for i in range(outputs)]
    return [o if isinstance(o, np.floating) else [float(h) for h in _halves(int(o))] for o in out]


def run_ptx(asm: str, inputs: list[int]) -> float:
    """Run ``word_asm``'s PTX: ``$1..`` are 32-bit inputs, ``$0`` the float32 result."""
    return float(run_ptx_regs(asm, inputs)[0])


@pytest.mark.parametrize(
    ("b", "r", "words", "width"), [(2, 4, 2, 0), (4, 16, 2, 0), (4, 16, 4, 3), (8, 256, 2, 0)]
)
def test_word_asm_computes_the_exact_field_dot(b, r, words, width):
    rng = np.random.default_rng(b * 100 + words + width)
    lane = 16 // b
    field_mask = (1 << (width or b)) - 1
    asm = word_asm(b, r, words, width)
    for _ in range(20):
        ws = [
            int(v) for v in rng.integers(0, 1 << 32, words, dtype=np.uint64)
        ]  # junk bits above 3-bit fields too
        pairs = rng.standard_normal((words, lane, 2)).astype(np.float16)
        got = run_ptx(asm, ws + [_pack(pairs[w, m]) for w in range(words) for m in range(lane)])
        ref = sum(
            ((ws[w] >> (16 * h + m * b)) & field_mask) / r * float(pairs[w, m, h])
            for w in range(words)
            for m in range(lane)
            for h in range(2)
        )
        scale = sum(field_mask / r * abs(float(v)) for v in pairs.ravel())
        assert abs(got - ref) <= 2e-3 * scale  # float16 accumulation of exact q/R x products


@pytest.mark.parametrize(("b", "r"), [(2, 4), (4, 16), (8, 256)])
def test_codes_become_exact_fractions(b, r):
    # one word whose fields all hold the same code, activation pairs (1, 0) then (0, 1): the halves separately
    lane = 16 // b
    for q in range(1 << b):
        word = sum(q << (m * b) for m in range(2 * lane))
        for half in range(2):
            pairs = [_pack(np.array([1.0, 0.0] if half == 0 else [0.0, 1.0])) for _ in range(lane)]
            assert run_ptx(word_asm(b, r), [word, *pairs]) == lane * q / r


@pytest.mark.parametrize("pair", [(0.5, -3.0), (300.0, -250.0), (60000.0, 1e-3), (0.0, 0.0)])
def test_pair_squares_sum_in_float32(pair):
    """A folded norm's sum of squares: float16 halves squared in float32 (300^2 overflows float16)."""
    lo, hi = (np.float64(np.float16(v)) for v in pair)
    got = float(run_ptx_regs(_PAIR_SQUARES.value, [_pack(np.array(pair))])[0])
    assert got == pytest.approx(lo * lo + hi * hi, rel=1e-6)
