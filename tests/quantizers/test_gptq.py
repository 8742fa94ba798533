"""GPTQ: lower proxy error than RTN, batched equals single runs, dead inputs, lossless Q4_1."""

from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq, quantize_gptq_many
from bitalloc.quantizers.rtn import quantize_rtn


def correlated_hessian(n: int, seed: int = 0, tokens: int = 1024) -> torch.Tensor:
    """``X^T X / n`` of activations with strongly correlated features and uneven scales."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n // 4, generator=gen) @ torch.randn(n // 4, n, generator=gen)
    x = (x + 0.2 * torch.randn(tokens, n, generator=gen)) * torch.rand(n, generator=gen).add(0.1)
    return x.t() @ x / tokens


def proxy_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(dW H dW^T)``: the increase of the layer's output squared error."""
    dw = (w_hat - w).double()
    return float(torch.einsum("oi,ij,oj->", dw, h.double(), dw))


def _gptq(bits: int, group: int, symmetric: bool) -> Candidate:
    return Candidate(QuantKind.GPTQ, bits, group, symmetric)


def _rtn(c: Candidate) -> Candidate:
    return Candidate(QuantKind.RTN, c.bits, c.group_size, c.symmetric)


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    return w, correlated_hessian(256)


def test_gptq_beats_rtn_on_proxy_error(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, h = layer
    cands = [_gptq(b, g, s) for b in (2, 3, 4, 6, 8) for g in (32, 64, 128) for s in (True, False)]
    wins = {}
    for cand, qw in zip(cands, quantize_gptq_many(w, h, cands), strict=True):
        gptq = proxy_error(w, qw.dequantize(), h)
        rtn = proxy_error(w, quantize_rtn(w, _rtn(cand)).dequantize(), h)
        wins[cand.name] = gptq < rtn
        if cand.bits == 4:
            assert gptq < 0.7 * rtn, (cand.name, gptq, rtn)
    assert sum(wins.values()) >= 0.9 * len(wins), wins


def test_batched_equals_single_runs(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, h = layer
    cands = [
        _gptq(4, 128, True),
        _gptq(2, 32, False),
        _gptq(8, 64, True),
        _gptq(3, 32, True),
        _gptq(5, 64, False),
    ]
    batched = quantize_gptq_many(w, h, cands)
    assert [q.candidate for q in batched] == cands  # results follow the given order
    for cand, qw in zip(cands, batched, strict=True):
        single = quantize_gptq(w, h, cand)
        assert torch.equal(qw.codes, single.codes), cand.name
        assert torch.equal(qw.scales, single.scales), cand.name
        assert (qw.mins is None and single.mins is None) or torch.equal(qw.mins, single.mins)


def test_block_size_does_not_change_the_result(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, h = layer
    cand = _gptq(3, 32, False)
    a = quantize_gptq(w, h, cand, block_size=128).dequantize()
    b = quantize_gptq(w, h, cand, block_size=32).dequantize()
    assert (a != b).float().mean() < 1e-3  # only float rounding of the lazy updates differs
    assert abs(proxy_error(w, a, h) - proxy_error(w, b, h)) <= 1e-3 * proxy_error(w, a, h)


def test_dead_inputs_are_zeroed_and_safe(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, h = layer
    h = h.clone()
    dead = torch.tensor([0, 5, 77, 255])
    h[dead, :] = 0
    h[:, dead] = 0
    garbage = w.clone()
    garbage[:, dead] = 1e3
    zeros = w.clone()
    zeros[:, dead] = 0
    for cand in (_gptq(4, 32, True), _gptq(3, 64, False)):
        a, b = quantize_gptq(garbage, h, cand), quantize_gptq(zeros, h, cand)
        assert torch.isfinite(a.dequantize()).all()
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
        live = torch.ones(256, dtype=torch.bool)
        live[dead] = False
        rtn = quantize_rtn(zeros, _rtn(cand)).dequantize()
        assert proxy_error(zeros, a.dequantize(), h) < proxy_error(zeros, rtn, h)


def test_diagonal_hessian_equals_rtn() -> None:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2))
    h = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(3)) + 0.5)
    for cand in (_gptq(3, 32, True), _gptq(4, 64, False)):
        assert torch.equal(quantize_gptq(w, h, cand).codes, quantize_rtn(w, _rtn(cand)).codes)


def test_q4_1_weights_are_lossless(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, h = layer
    gen = torch.Generator().manual_seed(4)
    d = (torch.rand(16, 8, 1, generator=gen) * 0.01 + 1e-4).half().float()
    m = (-d * torch.rand(16, 8, 1, generator=gen) * 15).half().float()
    q = torch.randint(0, 16, (16, 8, 32), generator=gen).float()
    q[..., 0], q[..., -1] = 0, 15
    w = (d * q + m).reshape(16, 256)
    assert torch.equal(quantize_gptq(w, h, _gptq(4, 32, False)).dequantize(), w)


def test_invalid_inputs_raise(layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, h = layer
    cand = _gptq(4, 32, True)
    with pytest.raises(InvalidInput, match="Hessian"):
        quantize_gptq(w, h[:-1, :-1], cand)
    with pytest.raises(InvalidInput, match="positive definite"):
        quantize_gptq(w, -torch.eye(256), cand, damp=0.0, unit="blk.0")
    with pytest.raises(InvalidInput, match="rtn"):
        quantize_gptq(w, h, _rtn(cand))
    with pytest.raises(InvalidInput, match="damp"):
        quantize_gptq(w, h, cand, damp=-1.0)
    nan_h = h.clone()
    nan_h[3, 3] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        quantize_gptq(w, nan_h, cand)
    assert quantize_gptq_many(w, h, []) == []
