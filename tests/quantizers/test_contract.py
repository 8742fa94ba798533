"""The quantizer contract: every registered scheme stores exact bytes, round-trips, is deterministic,
loses less with more bits, and refuses shapes it cannot handle, naming the unit and the scheme."""

from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.errors import InvalidInput, UnsupportedShape
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packed import layout_bytes
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.registry import needs_hessian, rebuild, registry, spec_of
from bitalloc.sensitivity.proxy import proxy_error
from tests.quantizers.palette_data import real_weight_and_hessian

CONTRACT = tuple(
    Candidate.parse(n)
    for n in (
        "rtn-w4g32-asym",
        "gptq-w3g64-sym",
        "rtn-w3g64-asym-o8",
        "gptq-w3g64-sym-o4",
        "gptqact-w3g64-asym",
        "gptqact-w4g32-sym-o8",
        "awq-w3g64-asym",
        "awq-w4g64-sym",
        "kmeans-w3g64-asym",
        "lutgptq-w3g64-asym",
        "nest-w3g64-asym",
        "nest-w2g64-sym",
        "mix-w3g64-asym-h50",
        "tern-w1g192-sym",
        "a8-w8g64-sym",
        "a4-w4g64-sym-o8",
        "a4-w4g64-asym",
    )
)
FAMILIES = {  # name template and increasing bit widths
    "rtn": ("rtn-w{}g64-asym", (2, 3, 4)),
    "gptq": ("gptq-w{}g64-asym", (2, 3, 4)),
    "outliers": ("gptq-w{}g64-asym-o8", (2, 3, 4)),
    "gptqact": ("gptqact-w{}g64-asym", (2, 3, 4)),
    "awq": ("awq-w{}g64-asym", (2, 3, 4)),
    "kmeans": ("kmeans-w{}g64-asym", (2, 3, 4)),
    "lutgptq": ("lutgptq-w{}g64-asym", (2, 3, 4)),
    "nest": ("nest-w{}g64-asym", (2, 4, 8)),
    "mix": ("mix-w{}g64-asym-h50", (2, 3, 4)),
    "act": ("a8-w{}g64-sym-o8", (2, 3, 4)),
}


@pytest.fixture(scope="module")
def data(smollm2_full):
    return real_weight_and_hessian(smollm2_full)


def test_every_kind_is_registered_and_covered() -> None:
    assert set(registry()) == set(QuantKind)
    assert {c.kind for c in CONTRACT} == set(QuantKind)


@pytest.mark.parametrize("candidate", CONTRACT, ids=lambda c: c.name)
def test_contract(candidate: Candidate, data) -> None:
    weight, hessian = data
    shape = tuple(weight.shape)
    q = quantize(weight, candidate, hessian=hessian, unit="u")
    stored = q.tensors()
    # exact bytes: what is held == the candidate's count == its layout
    assert sum(t.numel() * t.element_size() for t in stored.values()) == candidate.nbytes(shape) == q.nbytes
    if not candidate.foundation_format:
        assert layout_bytes(spec_of(candidate).layout(candidate, shape)) == q.nbytes
    # dequantize: shape and dtype
    for dtype in (torch.float32, torch.float16):
        w = q.dequantize(dtype)
        assert w.shape == weight.shape and w.dtype == dtype
    # packing round-trips: rebuilding from the stored tensors gives the same weight
    again = rebuild(candidate, shape, {k: v.clone() for k, v in stored.items()})
    assert torch.equal(again.dequantize(), q.dequantize())
    # determinism
    twice = quantize(weight, candidate, hessian=hessian, unit="u").tensors()
    assert stored.keys() == twice.keys() and all(torch.equal(stored[k], twice[k]) for k in stored)
    # it approximates the weight
    assert proxy_error(weight, q.dequantize(), hessian) < proxy_error(
        weight, torch.zeros_like(weight), hessian
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_error_decreases_with_bits(family: str, data) -> None:
    weight, hessian = data
    template, bits = FAMILIES[family]
    errors = []
    for b in bits:
        q = quantize(weight, Candidate.parse(template.format(b)), hessian=hessian)
        errors.append(proxy_error(weight, q.dequantize(), hessian))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("candidate", CONTRACT, ids=lambda c: c.name)
def test_bad_shape_names_unit_and_scheme(candidate: Candidate) -> None:
    weight = torch.randn(8, 100)  # 100 inputs: no group of the palette divides it
    with pytest.raises(UnsupportedShape) as info:
        quantize(weight, candidate, hessian=torch.eye(100), unit="model.layers.3.mlp.up_proj")
    assert "model.layers.3.mlp.up_proj" in str(info.value) and candidate.name in str(info.value)
    assert not candidate.supports((8, 100))
    with pytest.raises(UnsupportedShape):
        candidate.nbytes((8, 100))


@pytest.mark.parametrize("candidate", [c for c in CONTRACT if needs_hessian(c)], ids=lambda c: c.name)
def test_missing_or_empty_statistics_name_unit_and_scheme(candidate: Candidate) -> None:
    weight = torch.randn(8, 192)
    empty = (
        [] if candidate.foundation_format else [torch.zeros(192, 192)]
    )  # foundation GPTQ zeroes dead inputs
    for hessian in (None, *empty):
        with pytest.raises(InvalidInput) as info:
            quantize(weight, candidate, hessian=hessian, unit="model.layers.0.self_attn.k_proj")
        assert "model.layers.0.self_attn.k_proj" in str(info.value) and candidate.name in str(info.value)
