from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.sensitivity.proxy import proxy_error


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_proxy_error_is_the_output_error_on_the_calibration_inputs(out_features, in_features, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, in_features, generator=g, dtype=torch.float64)
    w = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    wq = w + 0.1 * torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    h = x.T @ x / x.shape[0]
    direct = ((x @ wq.T - x @ w.T) ** 2).sum() / x.shape[0]
    assert abs(proxy_error(w.float(), wq.float(), h.float()) - float(direct)) <= 1e-4 * (1 + float(direct))


def test_zero_error_for_identical_weights():
    w = torch.randn(3, 4)
    assert proxy_error(w, w.clone(), torch.eye(4)) == 0.0
