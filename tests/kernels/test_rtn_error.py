from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.kernels.rtn_error import rtn_column_errors
from bitalloc.quantizers.grid import group_grid
from tests.kernels.helpers import device


def torch_column_errors(w: torch.Tensor, bits: int, sym: bool, group: int) -> torch.Tensor:
    groups = w.reshape(-1, group)
    err = (group_grid(groups, bits, sym).fake_quantize(groups) - groups).square()
    return err.view(w.shape).sum(dim=1)  # (batch, in)


@settings(max_examples=12, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 70),
    st.sampled_from([(32, 1), (64, 2), (128, 1), (32, 3)]),
    st.sampled_from([2, 3, 4, 8]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_kernel_equals_the_torch_grid(batch, rows, group_count, bits, sym, seed):
    group, count = group_count
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, rows, group * count, generator=g) * 0.05
    w[0, 0, :group] = 0.0  # a constant group: zero scale replaced by 1
    ref = torch_column_errors(w, bits, sym, group)
    got = rtn_column_errors(w.to(device()), bits, sym, group).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(("rows", "group", "sym"), [(300, 128, True), (700, 32, False)])
def test_rows_split_over_programs_sum_to_the_torch_grid(rows, group, sym):
    w = torch.randn(2, rows, group, generator=torch.Generator().manual_seed(rows)) * 0.05
    got = rtn_column_errors(w.to(device()), 3, sym, group).cpu()
    torch.testing.assert_close(got, torch_column_errors(w, 3, sym, group), rtol=1e-4, atol=1e-9)


def test_bad_input_is_refused():
    w = torch.zeros(1, 4, 96, device=device())
    with pytest.raises(InvalidInput, match="power of two >= 16 dividing 96"):
        rtn_column_errors(w, 4, True, 48)
    with pytest.raises(InvalidInput, match="beyond ±65504"):
        rtn_column_errors(torch.full((1, 4, 32), 1e6, device=device()), 4, True, 32)
