from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput
from bitalloc.models.units import discover_units
from bitalloc.pipeline import CalibrationSettings, run_profile
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import inverse_hessian_factor
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.estimate import GPTQ_DAMP, column_prices, estimate_errors, profile_estimate
from bitalloc.sensitivity.profiler import profile_model
from bitalloc.sensitivity.proxy import proxy_error

PALETTE = (
    *(
        Candidate(kind, bits, group, sym)
        for kind in (QuantKind.RTN, QuantKind.GPTQ)
        for bits in (2, 3, 4)
        for group in (128,)
        for sym in (True, False)
    ),
    Candidate.parse("rtn-w4g64-sym-o8"),
)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 5),
    st.sampled_from([(32, 32), (64, 32), (128, 64)]),
    st.integers(2, 8),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_rtn_estimate_is_exact_for_a_diagonal_hessian(out_features, in_group, bits, sym, seed):
    in_features, group = in_group
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    h = torch.diag(torch.rand(in_features, generator=g) + 0.1)
    candidate = Candidate(QuantKind.RTN, bits, group, sym)
    exact = proxy_error(w, quantize_rtn(w, candidate).dequantize(), h)
    (estimate,) = estimate_errors([w], column_prices([h]), [candidate])[0]
    assert estimate == pytest.approx(exact, rel=1e-5, abs=1e-9)


def test_gptq_price_is_what_later_columns_cannot_compensate():
    # x1 = x0 + small noise: an error in column 0 is almost fully absorbed by column 1, not the reverse
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, generator=g)
    x = torch.stack([x0, x0 + 0.1 * torch.randn(4000, generator=g)], dim=1)  # (tokens, 2)
    (prices,) = column_prices([x.T @ x / x.shape[0]], damp=1e-6)
    assert prices.gptq[0] < 0.05 * prices.rtn[0]  # conditional variance of x0 given x1
    assert prices.gptq[1] == pytest.approx(float(prices.rtn[1]), rel=1e-3)  # last column: nothing after it


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_gptq_prices_are_the_inverse_cholesky_diagonal_gptq_uses(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    hessians = []
    for _ in range(batch):
        x = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
        x[:, int(torch.randint(n, (1,), generator=g))] = 0  # one dead input
        hessians.append((x.T @ x / x.shape[0]).float())
    for h, prices in zip(hessians, column_prices(hessians), strict=True):
        upper, dead = inverse_hessian_factor(h, GPTQ_DAMP, "")  # float64 factorization, as GPTQ runs it
        expected = torch.where(dead, 0.0, upper.diagonal().double().square().reciprocal())
        torch.testing.assert_close(prices.gptq.double(), expected, rtol=2e-4, atol=1e-6)
        torch.testing.assert_close(prices.rtn, h.diagonal())


@pytest.fixture(scope="module")
def calibrated(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=8, seq_len=256, seed=0)
    units = discover_units(smollm2_small.model)
    stats = calibrate(
        smollm2_small.model, units, windows, model_hash=smollm2_small.model_hash, corpus_hash="c"
    )
    return units, stats


def test_estimates_rank_the_exact_proxies_of_real_rtn_and_gptq(smollm2_small, calibrated):
    units, stats = calibrated
    meta = {"model_name": "smol", "unquantized_bytes": 0}
    exact = profile_model(smollm2_small.model, units, stats, PALETTE, meta=meta).table
    estimated = profile_estimate(smollm2_small.model, units, stats, PALETTE, meta=meta).table
    assert list(estimated["unit"]) == list(exact["unit"])
    assert list(estimated["candidate"]) == list(exact["candidate"])
    assert list(estimated["nbytes"]) == list(exact["nbytes"])  # exact bytes without quantizing
    outliers = estimated["candidate"].str.endswith("-o8")
    np.testing.assert_allclose(estimated["error"][outliers], exact["error"][outliers], rtol=1e-6)
    for kind in ("rtn", "gptq"):
        rows = estimated["candidate"].str.startswith(f"{kind}-").to_numpy() & ~outliers.to_numpy()
        est, ref = estimated["error"][rows].to_numpy(), exact["error"][rows].to_numpy()
        assert spearmanr(est, ref)[0] > 0.99, kind
        assert np.median(np.abs(np.log(est / ref))) < 0.15, kind


def test_estimated_scoring_names_the_metrics_it_covers(smollm2_small):
    small = CalibrationSettings(n_windows=2, seq_len=32)
    with pytest.raises(InvalidInput, match="covers the metrics hessian, fisher_scaled, not 'fisher'"):
        run_profile(smollm2_small, small, metric="fisher", scoring="estimate")
    with pytest.raises(InvalidInput, match="unknown scoring 'fast'; choose one of exact, estimate"):
        run_profile(smollm2_small, small, metric="hessian", scoring="fast")
