from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import UnsupportedShape
from bitalloc.kernels.layout import PLANES, layout_supports, to_layout
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
    assert all(
        p.dtype == torch.int32 and p.shape == (rows, shape[1] * b // 32)
        for p, b in zip(layout.planes, layout.plane_bits, strict=True)
    )


def test_one_plane_formats_share_the_stored_bytes():
    q = torch.randint(0, 16, (4, 64))
    cand = Candidate(QuantKind.RTN, 4, 32, True)
    qw = QuantizedWeight(cand, (4, 64), pack_codes(q, 4), torch.ones(4, 2).half(), None)
    assert to_layout(qw).planes[0].data_ptr() == qw.codes.data_ptr()


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
