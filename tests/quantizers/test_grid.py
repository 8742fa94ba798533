"""Group grids: Q4_1 weights are lossless, symmetric extremes are exact, error falls with bits."""

from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.grid import asymmetric_params, group_grid, symmetric_scale
from bitalloc.quantizers.rtn import quantize_rtn


def q4_1_weights(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """Weights as llama.cpp dequantizes Q4_1: ``d * q + m`` in float32, float16 d and m, blocks of 32."""
    gen = torch.Generator().manual_seed(seed)
    blocks = in_features // 32
    d = torch.exp(torch.empty(out_features, blocks, 1).uniform_(-11, -2, generator=gen)).half().float()
    m = (-d * torch.empty(out_features, blocks, 1).uniform_(0, 15, generator=gen)).half().float()
    m[0] = torch.randn(blocks, 1, generator=gen).half().float()  # offsets far from the block's span
    q = torch.randint(0, 16, (out_features, blocks, 32), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 15  # every block reaches both ends of its grid...
    q = q[..., torch.randperm(32, generator=gen)]  # ...at varying positions
    return (d * q + m).reshape(out_features, in_features)


def test_q4_1_weights_are_lossless_at_4_bits_group_32_asym() -> None:
    w = q4_1_weights(64, 256)
    qw = quantize_rtn(w, Candidate(QuantKind.RTN, 4, 32, symmetric=False))
    assert torch.equal(qw.dequantize(), w)


def test_q4_1_grid_params_are_recovered() -> None:
    gen = torch.Generator().manual_seed(1)
    d = torch.rand(128, 1, generator=gen).half().float() * 0.01 + 1e-4
    d = d.half().float()
    m = (torch.randn(128, 1, generator=gen) * 0.05).half().float()
    q = torch.randint(0, 16, (128, 32), generator=gen).float()
    q[:, :2] = torch.tensor([0.0, 15.0])
    scale, low = asymmetric_params(d * q + m, 4)
    assert torch.equal(scale, d.squeeze(1))
    assert torch.equal(low, m.squeeze(1))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_symmetric_extreme_lands_exactly_on_most_negative_level(bits: int, sign: float) -> None:
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 64, generator=gen) * 0.1
    w[:, 5] = sign * (w.abs().amax(dim=1) + 0.5).half().float()  # the extreme, float16-representable
    grid = group_grid(w, bits, symmetric=True)
    q = grid.quantize(w)
    assert torch.all(q[:, 5] == 0)
    assert torch.equal(grid.dequantize(q)[:, 5], w[:, 5])
    assert torch.equal(symmetric_scale(w, bits), grid.scale)
    assert torch.all(torch.sign(grid.scale) == -sign)


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_and_constant_groups_stay_finite_and_exact(symmetric: bool) -> None:
    w = torch.zeros(4, 32)
    w[1] = 0.375
    w[2] = -1.5
    w[3, :] = 2.0**-30  # below float16's range: scale underflows
    grid = group_grid(w, 4, symmetric)
    deq = grid.fake_quantize(w)
    assert torch.isfinite(grid.scale).all() and torch.all(grid.scale != 0)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq[:3], w[:3])
    assert (deq[3] - w[3]).abs().max() <= 2.0**-30


@pytest.mark.parametrize("symmetric", [True, False])
def test_error_decreases_with_bits(symmetric: bool) -> None:
    w = torch.randn(256, 128, generator=torch.Generator().manual_seed(3))
    errors = []
    for bits in range(1, 9):
        qw = quantize_rtn(w, Candidate(QuantKind.RTN, bits, 32, symmetric))
        errors.append(float((qw.dequantize() - w).pow(2).mean()))
    assert all(a > 1.5 * b for a, b in itertools.pairwise(errors)), errors


def test_asymmetric_error_is_at_most_half_a_step() -> None:
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    grid = group_grid(w, 3, symmetric=False)
    err = (grid.fake_quantize(w) - w).abs()
    # float16 rounding of min and scale can push the ends out; interior points stay within half a step
    assert torch.all(err <= grid.scale[:, None] * 0.5 + 1e-2 * grid.scale[:, None])


def test_mixed_rows_match_per_setting_grids() -> None:
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    bits = torch.tensor([2, 3, 4, 8, 4, 2])
    sym = torch.tensor([True, False, True, False, False, True])
    mixed = group_grid(w, bits, sym)
    for r in range(6):
        single = group_grid(w[r : r + 1], int(bits[r]), bool(sym[r]))
        for name in ("scale", "offset", "zero", "maxq"):
            assert torch.equal(getattr(mixed, name)[r : r + 1], getattr(single, name)), name
    assert torch.equal(mixed.quantize(w)[0], group_grid(w[:1], 2, True).quantize(w[:1])[0])


def test_column_quantize_with_per_row_params() -> None:
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    grid = group_grid(w, 4, symmetric=False)
    by_column = torch.stack([grid.quantize(w[:, j]) for j in range(32)], dim=1)  # (rows,) at a time
    assert torch.equal(by_column, grid.quantize(w))
    assert by_column.min() >= 0 and by_column.max() <= 15


def test_rtn_dequantize_matches_grid_exactly() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    for symmetric in (True, False):
        qw = quantize_rtn(w, Candidate(QuantKind.RTN, 5, 32, symmetric))
        grid = group_grid(w.reshape(-1, 32), 5, symmetric)
        assert torch.equal(qw.dequantize(), grid.fake_quantize(w.reshape(-1, 32)).reshape(16, 64))


def test_weights_beyond_float16_raise() -> None:
    with pytest.raises(InvalidInput, match="float16"):
        group_grid(torch.tensor([[0.0, 1e6]]), 4, symmetric=False)
