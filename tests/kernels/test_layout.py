from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import UnsupportedShape
from bitalloc.kernels.layout import PLANES, chunk_size, layout_supports, nested_layout, to_layout
from bitalloc.quantizers import nested
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packing import pack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from(sorted(PLANES)),
    group=st.sampled_from([32, 64, 128]),
    rows=st.integers(1, 9),
    groups=st.integers(1, 3),
    sym=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_layout_round_trips_codes_and_keeps_bytes(bits, group, rows, groups, sym, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (rows, group * groups)
    q = torch.randint(0, 1 << bits, shape, generator=gen)
    cand = Candidate(QuantKind.RTN, bits, group, sym)
    scales = torch.rand(rows, groups, generator=gen).half()
    mins = None if sym else torch.randn(rows, groups, generator=gen).half()
    layout = to_layout(QuantizedWeight(cand, shape, pack_codes(q, bits), scales, mins))
    assert torch.equal(layout.codes(), q.to(torch.int32))
    assert layout.nbytes == cand.nbytes(shape)
    widths = PLANES[bits]
    assert layout.a.dtype == torch.int32 and layout.a.shape == (1, shape[1] * widths[0] // 32, rows)
    if len(widths) > 1:
        assert layout.b is not None and layout.b.shape == (shape[1] * widths[1] // 32, rows)
    assert torch.equal(layout.scales, scales.t())
    assert torch.allclose(layout.dequantize(), layout_weight(q, scales, mins, group, bits))


def layout_weight(q, scales, mins, group, bits):
    scale = scales.float().repeat_interleave(group, dim=1)
    if mins is None:
        return scale * (q.float() - 2 ** (bits - 1))
    return scale * q.float() + mins.float().repeat_interleave(group, dim=1)


def test_interleave_order_is_the_documented_one():
    # chunk 32 at 4 bits: 4 words per chunk; word w holds inputs 2 (4 m + w) + h at bit 16 h + 4 m (m < 4)
    q = torch.arange(64).remainder(16).view(1, 64)
    cand = Candidate(QuantKind.RTN, 4, 32, True)
    layout = to_layout(QuantizedWeight(cand, (1, 64), pack_codes(q, 4), torch.ones(1, 2).half(), None))
    assert layout.chunk == 32
    word = int(layout.a[0, 1, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * j)) & 15 for j in range(8)] == [2, 10, 18 % 16, 26 % 16, 3, 11, 19 % 16, 27 % 16]


@pytest.mark.parametrize(("group", "in_features", "chunk"), [(32, 96, 32), (128, 576, 64), (64, 4096, 64)])
def test_chunk_sizes(group, in_features, chunk):
    assert chunk_size(group, in_features) == chunk


@pytest.mark.parametrize("name", ["nest-w8g32-asym", "nest-w2g64-sym", "nest-w5g128-asym"])
def test_nested_layout_reads_the_top_planes(name):
    cand = Candidate.parse(name)
    weight = torch.randn(6, 256, generator=torch.Generator().manual_seed(cand.bits))
    packed = nested.quantize_many(weight, [cand], None)[0]
    s = packed.stored
    layout = nested_layout(s["planes"], s["scales"], s.get("mins"), cand.group_size, (6, 256))
    assert layout.nbytes == packed.nbytes
    assert torch.equal(layout.dequantize(), nested.dequantize(packed))


@pytest.mark.parametrize(
    ("bits", "group", "in_features", "fragment"),
    [
        (7, 32, 64, "7-bit"),
        (4, 16, 64, "group size 16"),
        (4, 48, 96, "group size 48"),
        (4, 64, 96, "divisible"),
    ],
)
def test_unsupported_formats_are_named(bits, group, in_features, fragment):
    reason = layout_supports(bits, group, in_features)
    assert reason is not None and fragment in reason
    if in_features % group == 0:
        cand = Candidate(QuantKind.RTN, bits, group, True)
        qw = QuantizedWeight(
            cand,
            (2, in_features),
            pack_codes(torch.zeros(2, in_features, dtype=torch.int64) + 1, bits),
            torch.ones(2, in_features // group).half(),
            None,
        )
        with pytest.raises(UnsupportedShape, match="reference"):
            to_layout(qw)
