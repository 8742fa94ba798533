"""Weight-activation candidates (W8A8, W4A4 + float16 outlier channels) on real SmolLM2 weights and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.latency import analytic_latency
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import token_stream
from bitalloc.quantizers.activations import (
    latency_table,
    output_error,
    quantize_activations,
    select_channels,
)
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quantize import quantize


@pytest.fixture(scope="module")
def layer0(smollm2_full):
    """128 rows of layer 0's q_proj weight (128, 576), its real inputs (512, 576) and their Hessian."""
    model = smollm2_full.model
    ids = token_stream(smollm2_full.tokenizer, load_corpus("wiki", Split.CALIBRATION), max_tokens=512)
    with torch.no_grad():
        hidden = model.model.embed_tokens(ids.reshape(1, -1))  # (1, n, 576)
        x = model.model.layers[0].input_layernorm(hidden).reshape(-1, hidden.shape[-1]).float()  # (n, 576)
    weight = model.model.layers[0].self_attn.q_proj.weight.detach().float()[:128].clone()  # (128, 576)
    return weight, x, x.T @ x / x.shape[0]


def test_outlier_channels_are_exact_in_weights_and_activations(layer0) -> None:
    weight, x, h = layer0
    cand = Candidate.parse("a4-w4g64-sym-o16")
    q = quantize(weight, cand, hessian=h, unit="q")
    idx = q.stored["outlier_idx"].long()
    # the channels of largest calibration energy, stored sorted
    energy = h.diagonal()
    assert torch.equal(idx, select_channels(h, 16))
    assert float(energy[idx].min()) >= float(energy[~torch.isin(torch.arange(576), idx)].max())
    # weight columns: exactly the stored float16 values
    assert torch.equal(q.dequantize()[:, idx], q.stored["outlier_val"].float())
    # activations: float16 on the outlier channels, 4-bit per token elsewhere
    xq = quantize_activations(x, 4, q.stored["outlier_idx"])
    assert torch.equal(xq[:, idx], x[:, idx].half().float())
    body = torch.ones(576, dtype=torch.bool)
    body[idx] = False
    for t in range(0, x.shape[0], 97):
        row = xq[t, body]
        levels = torch.unique(row)
        assert len(levels) <= 15  # symmetric 4-bit: -7..7
        step = float(x[t, body].abs().max()) / 7
        assert torch.allclose(row / step, torch.round(row / step), atol=1e-3)


@given(
    bits=st.sampled_from([4, 8]),
    tokens=st.integers(1, 6),
    width=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_activation_quantizer_properties(bits: int, tokens: int, width: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=g) * torch.rand(tokens, 1, generator=g) * 10
    outliers = torch.randperm(width, generator=g)[: width // 4].sort().values
    xq = quantize_activations(x, bits, outliers)
    keep = torch.ones(width, dtype=torch.bool)
    keep[outliers] = False
    qmax = 2 ** (bits - 1) - 1
    scale = x[:, keep].abs().amax(dim=1, keepdim=True) / qmax  # (tokens, 1)
    # per token: error at most half a step, the token's absmax kept, outliers float16
    assert bool(((xq[:, keep] - x[:, keep]).abs() <= scale / 2 + 1e-5).all())
    assert torch.allclose(xq[:, keep].abs().amax(dim=1), x[:, keep].abs().amax(dim=1), rtol=1e-5)
    assert torch.equal(xq[:, outliers], x[:, outliers].half().float())


def test_outliers_cut_w4a4_error_and_w8a8_is_near_lossless(layer0) -> None:
    weight, x, h = layer0
    errors = {}
    for name in ("a8-w8g64-sym", "a4-w4g64-sym", "a4-w4g64-sym-o32", "gptq-w4g64-sym"):
        errors[name] = output_error(weight, quantize(weight, Candidate.parse(name), hessian=h), x)
    signal = float((x @ weight.T).pow(2).sum() / x.shape[0])
    assert errors["a8-w8g64-sym"] < 0.01 * signal
    # real activations have outlier channels: keeping 32 of 576 in float16 cuts W4A4's error
    assert errors["a4-w4g64-sym-o32"] < 0.5 * errors["a4-w4g64-sym"]
    # and quantizing activations costs something over weight-only GPTQ at the same weight format
    assert errors["a4-w4g64-sym"] > errors["gptq-w4g64-sym"]


def test_packed_linear_quantizes_its_input(layer0) -> None:
    weight, x, h = layer0
    q = quantize(weight, Candidate.parse("a4-w4g64-sym-o8"), hessian=h, unit="q")
    layer = PackedLinear(q)
    expected = F.linear(quantize_activations(x, 4, q.stored["outlier_idx"]), q.dequantize())
    assert torch.equal(layer(x), expected)
    assert not torch.equal(layer(x), F.linear(x, q.dequantize()))
    assert layer.storage_bytes() == Candidate.parse("a4-w4g64-sym-o8").nbytes((128, 576))


def test_bytes_count_weights_only() -> None:
    shape = (576, 1536)
    base = Candidate.parse("gptq-w4g64-sym").nbytes(shape)
    assert Candidate.parse("a4-w4g64-sym").nbytes(shape) == base
    assert Candidate.parse("a8-w4g64-sym").nbytes(shape) == base
    assert Candidate.parse("a4-w4g64-sym-o32").nbytes(shape) == base + 2 * 32 + 2 * 576 * 32


def test_latency_table_trades_compute_not_bytes() -> None:
    names = ("gptq-w8g64-sym", "a8-w8g64-sym", "a4-w4g64-sym-o32", "gptq-w4g64-sym")
    shapes = [(576, 576), (8192, 8192)]
    nbytes = np.array([[Candidate.parse(n).nbytes(s) for n in names] for s in shapes])
    decode, prefill = latency_table(names, shapes, nbytes, 1), latency_table(names, shapes, nbytes, 8192)
    # weight-only entries at one token are the allocator's analytic table
    wo = [0, 3]
    assert np.allclose(decode[:, wo], analytic_latency(tuple(names[i] for i in wo), nbytes[:, wo]))
    # decode is memory bound: activation quantization only adds kernels
    assert (decode[:, 1] > decode[:, 0]).all()
    # prefill of a large matrix is compute bound: int8 tensor cores beat bf16 at the same weight bytes;
    # SmolLM2's small matrices stay launch bound, where the extra quantize kernel makes W8A8 slower
    assert prefill[1, 1] < 0.6 * prefill[1, 0]
    assert prefill[0, 1] > prefill[0, 0]
    # W4A4 runs on the int8 path on H100 (no int4 tensor cores): only its smaller weight and activation
    # traffic helps, far from the 2x of an int4 MMA
    assert 0.9 * prefill[1, 1] < prefill[1, 2] < prefill[1, 1]


def test_allocator_buys_latency_with_activation_candidates() -> None:
    from bitalloc.allocator.problem import AllocationProblem, Budget
    from bitalloc.allocator.solve import solve

    names = ("gptq-w8g64-sym", "a8-w8g64-sym")
    shapes = [(8192, 8192)] * 4
    nbytes = np.array([[Candidate.parse(n).nbytes(s) for n in names] for s in shapes], dtype=np.int64)
    latency = latency_table(names, shapes, nbytes, 8192)  # prefill: compute bound
    problem = AllocationProblem(
        units=tuple(f"u{i}" for i in range(4)),
        candidates=names,
        loss=np.array([[1.0, 1.5 + 0.1 * i] for i in range(4)]),  # activation error costs accuracy
        nbytes=nbytes,
        feasible=np.ones((4, 2), dtype=bool),
        numel=np.full(4, 8192 * 8192, dtype=np.int64),
        tie=np.arange(4),
        latency=latency,
    )
    # room for two units on the slow bf16 path: the two whose activation error costs least go W8A8
    limit = float(latency[:2, 0].sum() + latency[2:, 1].sum()) + 1e-6
    solution = solve(problem, Budget(max_latency=limit), solver="milp")
    assert list(solution.choice) == [1, 1, 0, 0]
    assert float(latency[np.arange(4), solution.choice].sum()) <= limit
    assert solution.nbytes == int(nbytes[:, 0].sum())  # same weight bytes whatever is chosen
