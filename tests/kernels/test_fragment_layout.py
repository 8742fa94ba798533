"""The fragment layout and the tensor-core kernel's dequantizing PTX, checked on the CPU.

The words are decoded lane by lane as the GPU does it: the kernel's PTX (``codes_asm``) runs on the float16
emulator of ``test_half2.py``, its outputs are placed by the operand-A fragment map of ``mma.m16n8k16`` as the
PTX ISA gives it (written here independently of the packing code), the activations by the operand-B map from
the contiguous runs the kernel loads, and the per-group products must equal ``(codes + qoff) @ x`` exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bitalloc.errors import UnsupportedShape
from bitalloc.kernels.fragment_layout import fragment_supports, to_fragment_layout, word_bits
from bitalloc.kernels.mma import codes_asm
from bitalloc.kernels.reference import reference_linear
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from tests.kernels.helpers import random_qweight
from tests.kernels.test_half2 import run_ptx_regs

CASES = list(itertools.product((2, 4, 8), (32, 64, 128), (True, False)))
CASES += list(itertools.product((3,), (64, 128), (True, False)))


def _cpu_qweight(bits: int, group: int, sym: bool, shape: tuple[int, int], gen) -> QuantizedWeight:
    """The helpers' random weight, on the CPU even where a GPU is present (these tests emulate the GPU)."""
    qw = random_qweight(bits, group, sym, shape, gen)
    mins = None if qw.mins is None else qw.mins.cpu()
    return QuantizedWeight(qw.candidate, qw.shape, qw.codes.cpu(), qw.scales.cpu(), mins)


def _a_position(i: int, lane: int) -> tuple[int, int]:
    """Operand A of m16n8k16 (float16): register element i of lane -> (row, k) in the 16x16 tile."""
    g, t = lane // 4, lane % 4
    return g + 8 * ((i // 2) % 2), 2 * t + i % 2 + 8 * (i // 4)


def _b_position(i: int, lane: int) -> tuple[int, int]:
    """Operand B of m16n8k16: register element i (0-3) of lane -> (k, n) in the 16x8 tile."""
    g, t = lane // 4, lane % 4
    return 2 * t + i % 2 + 8 * (i // 2), g


@pytest.mark.parametrize(("bits", "group", "sym"), CASES)
def test_lane_fragments_multiply_to_the_exact_codes_dot(bits, group, sym):
    gen = torch.Generator().manual_seed(bits * 1000 + group + sym)
    shape = (32, 2 * group)
    qw = _cpu_qweight(bits, group, sym, shape, gen)
    fl = to_fragment_layout(qw)
    assert torch.equal(fl.dequantize(), reference_linear(torch.eye(shape[1]), qw).t().float())
    x = torch.randint(-3, 4, (8, shape[1]), generator=gen).double()  # (n, in), small integers: exact sums
    asm = codes_asm(bits, fl.qoff)
    per_word = 32 // word_bits(bits)
    words = fl.words.view(shape[0] // 16, shape[1] // group, -1, 32, fl.vec)  # (tile, group, atom, lane, v)
    if bits == 3:
        high = fl.high.view(shape[0] // 16, shape[1] // group, -1, 32, fl.vec // 2)
    codes = fl.codes().double() + fl.qoff
    kt_count = group // 16
    for tile, grp in itertools.product(range(shape[0] // 16), range(shape[1] // group)):
        a = np.zeros((kt_count, 16, 16))
        b = np.zeros((kt_count, 16, 8))
        for lane in range(32):
            elems = []
            for atom, v in itertools.product(range(words.shape[2]), range(fl.vec)):
                w = int(words[tile, grp, atom, lane, v]) & 0xFFFFFFFF
                inputs = [w] * per_word
                if bits == 3:  # the high word of the pair, shifted to this low word's bits
                    inputs += [(int(high[tile, grp, atom, lane, v // 2]) & 0xFFFFFFFF) >> (v % 2)] * per_word
                regs = run_ptx_regs(asm, inputs, outputs=per_word // 2)
                elems += [h for r in regs for h in r]  # float16 halves, low first
            for e, value in enumerate(elems):
                row, k = _a_position(e % 8, lane)
                a[e // 8, row, k] = value
            t = lane % 4
            for kt, i in itertools.product(range(kt_count), range(4)):
                k, n = _b_position(i, lane)
                b[kt, k, n] = x[n, grp * group + 4 * kt_count * t + 4 * kt + 2 * (i // 2) + i % 2]
        got = sum(a[kt] @ b[kt] for kt in range(kt_count))  # (16, 8)
        rows = slice(16 * tile, 16 * tile + 16)
        cols = slice(grp * group, grp * group + group)
        want = (codes[rows, cols] @ x[:, cols].t()).numpy()
        assert np.array_equal(got, want), (tile, grp)


def test_fragment_layout_holds_the_stored_bytes():
    gen = torch.Generator().manual_seed(7)
    for bits, group, sym in CASES:
        qw = _cpu_qweight(bits, group, sym, (48, 256), gen)
        fl = to_fragment_layout(qw)
        assert fl.nbytes == qw.candidate.nbytes(qw.shape)
        assert torch.equal(fl.codes(), fl.codes())  # deterministic decode
        assert fl.words.shape == (3, 256 // fl.atom, 32, fl.vec)


@pytest.mark.parametrize(
    ("bits", "group", "shape", "fragment"),
    [
        (3, 32, (32, 256), "3-bit codes in groups of 32"),
        (4, 16, (32, 256), "group size 16"),
        (4, 128, (40, 256), "multiple of 16"),
        (4, 128, (32, 192), "not divisible"),
    ],
)
def test_unsupported_formats_are_named(bits, group, shape, fragment):
    reason = fragment_supports(bits, group, shape)
    assert reason is not None and fragment in reason
    if group >= 32 and shape[1] % group == 0:
        gen = torch.Generator().manual_seed(1)
        with pytest.raises(UnsupportedShape, match=fragment):
            to_fragment_layout(_cpu_qweight(bits, group, True, shape, gen))
