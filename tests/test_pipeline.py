"""run_profile under each metric the pipeline offers (real model, first two layers)."""

from __future__ import annotations

import pytest

from bitalloc.errors import InvalidInput
from bitalloc.pipeline import CalibrationSettings, run_profile
from bitalloc.quantizers.candidate import QuantKind, default_palette

PALETTE = tuple(
    c for c in default_palette(kinds=(QuantKind.RTN,), bits=(2, 4), group_sizes=(64,)) if c.symmetric
)
SETTINGS = CalibrationSettings(corpus="wiki", n_windows=4, seq_len=128)


def test_fisher_profile_scores_the_same_candidates_differently(smollm2_small) -> None:
    hessian = run_profile(smollm2_small, SETTINGS, palette=PALETTE, metric="hessian")
    fisher = run_profile(smollm2_small, SETTINGS, palette=PALETTE, metric="fisher")
    assert hessian.meta["metric"] == "hessian" and fisher.meta["metric"] == "fisher"
    assert (
        fisher.model_hash == hessian.model_hash and fisher.meta["calibration"] == hessian.meta["calibration"]
    )
    keys = ["unit", "candidate", "nbytes"]
    assert fisher.table[keys].equals(hessian.table[keys])  # same units, candidates and exact bytes
    assert (fisher.table["error"] > 0).all()
    # each unit: 2 bits costs more than 4 bits under either metric, but the metrics rank units differently
    for prof in (hessian, fisher):
        wide = prof.table.pivot(index="unit", columns="candidate", values="error")
        assert (wide["rtn-w2g64-sym"] > wide["rtn-w4g64-sym"]).all()
    assert not fisher.table["error"].rank().equals(hessian.table["error"].rank())


def test_unknown_metric_names_the_choices(smollm2_small) -> None:
    with pytest.raises(InvalidInput, match=r"'hessain'.*hessian, fisher"):
        run_profile(smollm2_small, SETTINGS, palette=PALETTE, metric="hessain")


@pytest.mark.parametrize("metric", ["hessian", "fisher"])
def test_profile_refuses_awq_on_too_few_calibration_tokens(smollm2_small, metric: str) -> None:
    from bitalloc.quantizers.candidate import Candidate
    from bitalloc.quantizers.registry import InsufficientCalibration

    few = CalibrationSettings(corpus="wiki", n_windows=2, seq_len=128)  # 256 tokens; AWQ wants one per input
    with pytest.raises(
        InsufficientCalibration,
        match=r"awq-w4g64-asym for unit .model\.layers\.0\.self_attn\.q_proj.*got 256",
    ):
        run_profile(smollm2_small, few, palette=(Candidate.parse("awq-w4g64-asym"),), metric=metric)


def test_fisher_scaled_profile_is_the_proxy_weighted_per_unit_by_the_fisher(smollm2_small) -> None:
    palette = (*PALETTE, *default_palette(kinds=(QuantKind.GPTQ,), bits=(2,), group_sizes=(64,)))
    hessian = run_profile(smollm2_small, SETTINGS, palette=palette, metric="hessian")
    fisher = run_profile(smollm2_small, SETTINGS, palette=PALETTE, metric="fisher")
    scaled = run_profile(smollm2_small, SETTINGS, palette=palette, metric="fisher_scaled")
    assert scaled.meta["metric"] == "fisher_scaled" and len(scaled.table) == len(hessian.table)
    wide = {
        n: p.table.pivot(index="unit", columns="candidate", values="error")
        for n, p in (("h", hessian), ("f", fisher), ("s", scaled))
    }
    ratio = wide["s"] / wide["h"]  # one factor per unit, GPTQ included
    assert (ratio.max(axis=1) / ratio.min(axis=1) - 1).abs().max() < 1e-9
    rtn = [c.name for c in PALETTE]
    assert (wide["s"][rtn].sum(axis=1) / wide["f"][rtn].sum(axis=1) - 1).abs().max() < 1e-6


def test_closed_form_fisher_scaled_matches_the_exact_one(smollm2_small) -> None:
    palette = tuple(
        c
        for c in default_palette(kinds=(QuantKind.RTN, QuantKind.GPTQ), bits=(3, 4), group_sizes=(64,))
        if not c.symmetric
    )
    exact = run_profile(smollm2_small, SETTINGS, palette=palette, metric="fisher_scaled")
    closed = run_profile(smollm2_small, SETTINGS, palette=palette, metric="fisher_scaled", scoring="estimate")
    assert closed.meta["metric"] == exact.meta["metric"] == "fisher_scaled"
    assert closed.meta["estimator"] == "hessian_estimate"
    keys = ["unit", "candidate", "nbytes"]
    assert closed.table[keys].equals(exact.table[keys])
    both = exact.table.merge(closed.table, on=["unit", "candidate"], suffixes=("", "_closed"))
    assert both["error"].corr(both["error_closed"], method="spearman") > 0.98
