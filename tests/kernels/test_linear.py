from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bitalloc.kernels.linear import KernelFallbackWarning, KernelQuantLinear, use_kernels
from bitalloc.kernels.reference import reference_linear
from bitalloc.quantizers.quant_linear import QuantLinear
from tests.kernels.helpers import device, random_qweight, rel_err


def _model(gen: torch.Generator, formats) -> nn.Sequential:
    layers = []
    for bits, group, sym, shape in formats:
        bias = torch.randn(shape[0], generator=gen).half().to(device())
        layers.append(QuantLinear(random_qweight(bits, group, sym, shape, gen), bias))
    return nn.Sequential(*layers)


def test_use_kernels_runs_a_mixed_stack_like_the_reference():
    gen = torch.Generator().manual_seed(3)
    model = _model(gen, [(4, 32, False, (64, 128)), (3, 64, True, (96, 64)), (2, 32, False, (32, 96))])
    x = torch.randn(3, 1, 128, generator=gen).half().to(device())
    with torch.no_grad():
        ref = model(x)
        assert use_kernels(model) == 3
        assert use_kernels(model) == 0  # idempotent
        assert all(isinstance(m, KernelQuantLinear) for m in model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every layer has a kernel: no fallback warning
            y = model(x)  # batch 3: tensor-core kernel on the GPU, else swap-AB GEMM
            y1 = model(x[:1])  # batch 1: GEMV
    probe = torch.empty(3, 128, dtype=torch.float16, device=device())
    tensor_cores = torch.cuda.is_available()
    expected = ["mma"] * 3 if tensor_cores else ["swapab"] * 3
    assert [m.choice(probe).kernel for m in model] == expected
    assert all(m.choice(probe.new_empty(17, 128)).kernel == "gemm" for m in model)
    assert rel_err(y, ref) < 5e-3
    assert rel_err(y1, ref[:1]) < 5e-3


def test_unsupported_format_falls_back_with_one_warning():
    gen = torch.Generator().manual_seed(4)
    qw = random_qweight(7, 32, True, (16, 64), gen)
    model = nn.Sequential(QuantLinear(qw))
    use_kernels(model)
    x = torch.randn(2, 64, generator=gen).half().to(device())
    pattern = r"w7g32-sym weight of shape \(16, 64\).*7-bit"
    with pytest.warns(KernelFallbackWarning, match=pattern) as record, torch.no_grad():
        y = model(x)
        model(x)
    assert len([w for w in record if issubclass(w.category, KernelFallbackWarning)]) == 1
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 2e-3


def test_float32_activations_fall_back():
    gen = torch.Generator().manual_seed(5)
    qw = random_qweight(4, 32, False, (16, 64), gen)
    model = nn.Sequential(QuantLinear(qw))
    use_kernels(model)
    x = torch.randn(2, 64, generator=gen).to(device())
    with pytest.warns(KernelFallbackWarning, match="float32"):
        y = model(x)
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 1e-5
