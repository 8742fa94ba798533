"""Scheme-specific properties of the palette quantizers, on a real SmolLM2 weight and real activations."""

from __future__ import annotations

import math

import pytest
import torch

from bitalloc.quantizers import mixbits, ternary
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.gptq_actorder import activation_order
from bitalloc.quantizers.outliers import select_outliers
from bitalloc.quantizers.quantize import quantize
from bitalloc.sensitivity.proxy import proxy_error
from tests.quantizers.palette_data import real_weight_and_hessian


@pytest.fixture(scope="module")
def data(smollm2_full):
    return real_weight_and_hessian(smollm2_full)


def _err(data, name: str) -> float:
    w, h = data
    return proxy_error(w, quantize(w, Candidate.parse(name), hessian=h).dequantize(), h)


def test_gptqact_stores_the_activation_order(data) -> None:
    w, h = data
    q = quantize(w, Candidate.parse("gptqact-w3g64-asym"), hessian=h)
    perm = q.tensors()["perm"].long()
    assert torch.equal(perm, activation_order(h))
    assert torch.equal(perm.sort().values, torch.arange(w.shape[1]))
    assert bool((h.diagonal()[perm][:-1] >= h.diagonal()[perm][1:]).all())


def test_outliers_are_the_salient_columns_and_lower_the_error(data) -> None:
    w, h = data
    q = quantize(w, Candidate.parse("gptq-w3g64-asym-o8"), hessian=h)
    assert torch.equal(q.tensors()["outlier_idx"].long(), select_outliers(w, h, 8))
    assert q.nbytes == Candidate.parse("gptq-w3g64-asym").nbytes(tuple(w.shape)) + 2 * 8 + 2 * 8 * w.shape[0]
    assert _err(data, "gptq-w3g64-asym-o8") < _err(data, "gptq-w3g64-asym")
    assert _err(data, "rtn-w3g64-asym-o8") < _err(data, "rtn-w3g64-asym")


def test_awq_never_loses_to_rtn(data) -> None:
    # alpha = 0 (s = 1) is among the searched exponents, so the search can only improve on RTN
    for b in (2, 3, 4):
        assert _err(data, f"awq-w{b}g64-asym") <= _err(data, f"rtn-w{b}g64-asym")


def test_kmeans_beats_the_uniform_grid_of_its_table_size(data) -> None:
    # one 8-entry table per (row, 64 columns) vs the RTN grid with scale and min per 64 columns
    assert _err(data, "kmeans-w3g64-asym") < _err(data, "rtn-w3g64-asym")


def test_lutgptq_compensates_what_the_tables_alone_cannot(data) -> None:
    # same tables' size and bytes but for the permutation; GPTQ's updates lower the proxy at every width
    for b in (2, 3, 4):
        assert _err(data, f"lutgptq-w{b}g64-asym") < _err(data, f"kmeans-w{b}g64-asym")
    assert _err(data, "lutgptq-w3g64-asym") < _err(data, "gptqact-w3g64-asym")


def test_nested_codes_are_prefixes_of_the_8_bit_code(data) -> None:
    w, _ = data
    full = quantize(w, Candidate.parse("nest-w8g64-asym")).tensors()
    rtn8 = quantize(w, Candidate.parse("rtn-w8g64-asym")).dequantize()
    assert torch.equal(quantize(w, Candidate.parse("nest-w8g64-asym")).dequantize(), rtn8)
    for k in (2, 4):
        part = quantize(w, Candidate.parse(f"nest-w{k}g64-asym")).tensors()
        assert torch.equal(part["planes"], full["planes"][:k])
        assert torch.equal(part["scales"], full["scales"]) and torch.equal(part["mins"], full["mins"])


def test_mix_rate_lies_between_its_two_widths(data) -> None:
    w, _ = data
    shape = tuple(w.shape)
    lo, hi = (Candidate.parse(f"gptq-w{b}g64-asym").nbytes(shape) for b in (3, 4))
    mix = Candidate.parse("mix-w3g64-asym-h50")
    assert lo < mix.nbytes(shape) < hi
    assert mixbits.n_high(mix, shape[1]) == round(9 * 0.5)
    assert _err(data, "gptq-w4g64-asym") < _err(data, "mix-w3g64-asym-h50") < _err(data, "gptq-w3g64-asym")


def test_ternary_is_below_one_bit_with_three_nonzeros_per_block(data) -> None:
    w, h = data
    cand = Candidate.parse("tern-w1g192-sym")
    q = quantize(w, cand, hessian=h)
    assert q.nbytes * 8 / w.numel() < 1.0
    assert ternary.CODE_BITS == math.ceil(math.log2(math.comb(16, 3) * 8)) == 13
    deq = q.dequantize().reshape(-1, 16)
    assert bool(((deq != 0).sum(1) == 3).all())
    scales = q.tensors()["scales"].float().repeat_interleave(192, dim=1).reshape(-1, 16)
    assert torch.equal(deq.abs()[deq != 0], scales[deq != 0])
