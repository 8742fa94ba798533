from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput, ProfileMismatch
from bitalloc.models.units import discover_units
from bitalloc.sensitivity.calibrate import (
    CalibrationStats,
    add_upper_gram,
    calibrate,
    gram_panels,
    mirror_upper,
)


@pytest.fixture(scope="module")
def windows(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    return calibration_windows(smollm2_small.tokenizer, corpus, n_windows=3, seq_len=32, seed=0)


@pytest.fixture(scope="module")
def stats(smollm2_small, windows):
    units = discover_units(smollm2_small.model)
    return calibrate(
        smollm2_small.model,
        units,
        windows,
        model_hash=smollm2_small.model_hash,
        corpus_hash="c",
        batch_size=2,
    )


def test_hessians_equal_xtx_over_tokens(smollm2_small, windows, stats):
    captured = []
    down = smollm2_small.model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        smollm2_small.model(input_ids=windows)
    handle.remove()
    x = torch.cat(captured).double()  # (tokens, 1536)
    expected = (x.T @ x / x.shape[0]).float()
    h = stats.hessians["model.layers.1.mlp.down_proj"]
    assert stats.n_tokens == windows.numel() == x.shape[0]
    torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-5)


def test_units_reading_one_input_share_one_hessian(stats):
    h = stats.hessians
    layer = "model.layers.0"
    assert h[f"{layer}.self_attn.q_proj"] is h[f"{layer}.self_attn.k_proj"] is h[f"{layer}.self_attn.v_proj"]
    assert h[f"{layer}.mlp.gate_proj"] is h[f"{layer}.mlp.up_proj"]
    assert h[f"{layer}.self_attn.o_proj"] is not h[f"{layer}.self_attn.q_proj"]


def test_save_load_round_trip_keeps_sharing(tmp_path, stats, smollm2_small):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    again = CalibrationStats.load(path, model_hash=smollm2_small.model_hash)
    assert again.n_tokens == stats.n_tokens and set(again.hessians) == set(stats.hessians)
    for name, h in stats.hessians.items():
        assert torch.equal(again.hessians[name], h)
    assert (
        again.hessians["model.layers.1.self_attn.q_proj"] is again.hessians["model.layers.1.self_attn.v_proj"]
    )
    with pytest.raises(ProfileMismatch):
        CalibrationStats.load(path, model_hash="0" * 64)


def test_no_units_is_refused(smollm2_small, windows):
    with pytest.raises(InvalidInput, match="no quantizable units"):
        calibrate(smollm2_small.model, (), windows, model_hash="m", corpus_hash="c")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 1100), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_triangular_gram_sums_equal_the_full_product(n, batches, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(7, n, generator=g, dtype=torch.float64) for _ in range(batches)]
    h = torch.zeros(n, n, dtype=torch.float64)
    for x in xs:
        add_upper_gram(h, x)
    full = sum(x.T @ x for x in xs)
    torch.testing.assert_close(mirror_upper(h), full)
    assert sum(i1 - i0 for i0, i1 in gram_panels(n)) == n
