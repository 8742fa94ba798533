"""GGUF palette: exact block bytes, our k-quant encoders against gguf's decoder, exact candidate packing."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import UnsupportedShape
from bitalloc.export.common import ExportError
from bitalloc.export.gguf_types import GGUF_PALETTE, GgufType, candidate_type, pack_candidate
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.rtn import quantize_rtn

# relative RMS error of a Gaussian matrix after a round trip; measured values in comments
MAX_REL_ERROR = {
    "Q2_K": 0.36,  # 0.33
    "Q3_K": 0.18,  # 0.16
    "Q4_K": 0.09,  # 0.079
    "Q5_K": 0.045,  # 0.038
    "Q6_K": 0.022,  # 0.019
    "IQ4_NL": 0.09,  # 0.079
    "Q4_0": 0.10,  # 0.087
    "Q4_1": 0.09,  # 0.079
    "Q5_0": 0.05,  # 0.043
    "Q5_1": 0.045,  # 0.038
    "Q8_0": 0.007,  # 0.0052
}


@pytest.mark.parametrize("name", GGUF_PALETTE)
def test_round_trip_sizes_and_error(name):
    gtype = GgufType.of(name)
    assert (gtype.block_size, gtype.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 512)) * 0.02).astype(np.float32)
    data = gtype.encode(x)
    assert data.dtype == np.uint8 and data.nbytes == gtype.nbytes(x.shape)
    y = gtype.decode(data, x.shape)
    assert np.linalg.norm(y - x) / np.linalg.norm(x) < MAX_REL_ERROR[name]


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"])
def test_our_encoders_reach_the_grid_extremes(name):
    """A one-hot row must decode with its spike kept (sign and scale) and zeros elsewhere near zero."""
    gtype = GgufType.of(name)
    x = np.zeros((2, 256), np.float32)
    x[0, 7], x[1, 200] = 1.0, -0.5
    y = gtype.decode(gtype.encode(x), x.shape)
    assert y[0, 7] == pytest.approx(1.0, rel=0.1) and y[1, 200] == pytest.approx(-0.5, rel=0.1)
    y[0, 7] = y[1, 200] = 0
    assert np.abs(y).max() < 0.1


def test_shapes_that_do_not_split_into_blocks_are_refused():
    assert not GgufType.of("Q4_K").supports((10, 576)) and GgufType.of("Q5_0").supports((10, 576))
    with pytest.raises(UnsupportedShape, match="blocks of 256"):
        GgufType.of("Q4_K").nbytes((10, 576))
    with pytest.raises(ExportError, match="not in the palette"):
        GgufType.of("Q7_X")


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from([4, 5, 8]),
    sym=st.booleans(),
    rows=st.integers(1, 4),
    blocks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 10.0),
)
def test_group32_candidates_pack_into_legacy_blocks_bit_for_bit(bits, sym, rows, blocks, seed, scale):
    if bits == 8 and not sym:
        sym = True
    w = torch.randn(rows, 32 * blocks, generator=torch.Generator().manual_seed(seed)) * scale
    qweight = quantize_rtn(w, Candidate.parse(f"rtn-w{bits}g32-{'sym' if sym else 'asym'}"))
    gtype, data = pack_candidate(qweight)
    assert data.nbytes == qweight.nbytes == gtype.nbytes(qweight.shape)
    np.testing.assert_array_equal(gtype.decode(data, qweight.shape), qweight.dequantize().numpy())


def test_candidates_without_a_gguf_type_are_refused():
    assert candidate_type(Candidate.parse("gptq-w4g32-asym")).name == "Q4_1"
    for name in ("rtn-w4g64-sym", "rtn-w3g32-sym", "rtn-w8g32-asym"):
        with pytest.raises(ExportError, match="no GGUF type"):
            candidate_type(Candidate.parse(name))
