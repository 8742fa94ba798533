"""Fisher-scaled Hessian proxy: how much a unit matters from the loss gradients, which of its candidates
is best from the proxy.

The diagonal Fisher Σ F ⊙ ΔW² prices every weight's error on its own. That is fair for round-to-nearest,
whose errors are nearly uncorrelated, and wrong for error-compensating quantizers (GPTQ, act-order GPTQ,
outlier columns): their errors are correlated so that they cancel under the input correlations H, which the
proxy tr(ΔW H ΔWᵀ) sees and the diagonal does not. On SmolLM2 the Fisher sum rates uniform act-order GPTQ at
3 bits 1.8x *worse* than RTN, where it measures 3.7x better in perplexity (BENCHMARKS.md, issue 5). This
metric keeps the proxy's ranking inside each unit and takes each unit's weight from the Fisher:

    error(u, c) = κ_u · tr(ΔW_c H_u ΔW_cᵀ),   κ_u = Σ_{r ∈ R_u} fisher(u, r) / Σ_{r ∈ R_u} proxy(u, r)

with R_u the unit's round-to-nearest candidates scored in both profiles (where the two agree on what an
error is). The per-unit scale is what HAWQ-style allocators take from second-order information; here it
comes from the gradients of the calibration loss.
"""

from __future__ import annotations

import pandas as pd

from bitalloc.errors import InvalidInput
from bitalloc.sensitivity.profile import SensitivityProfile

METRIC = "fisher_scaled"


def unit_scales(hessian: SensitivityProfile, fisher: SensitivityProfile) -> pd.Series:
    """κ_u per unit: the Fisher profile's RTN error over the proxy's, summed over shared RTN candidates."""
    if hessian.model_hash != fisher.model_hash:
        raise InvalidInput("the hessian and fisher profiles are of different models; profile one model twice")
    both = hessian.table.merge(fisher.table, on=["unit", "candidate"], suffixes=("_h", "_f"))
    rtn = both[both["candidate"].str.startswith("rtn-")]
    sums = rtn.groupby("unit")[["error_h", "error_f"]].sum()
    missing = [u for u in hessian.units() if u not in sums.index or not sums.loc[u, "error_h"] > 0]
    if missing:
        raise InvalidInput(
            f"unit {missing[0]!r} has no RTN candidate with a positive proxy error in both profiles; "
            "score the foundation palette (RTN) under both metrics"
        )
    return (sums["error_f"] / sums["error_h"]).rename("scale")


def scaled_errors(table: pd.DataFrame, scale: pd.Series) -> pd.DataFrame:
    """``table`` (rows with ``unit`` and ``error``) with each error times its unit's ``scale``."""
    return table.assign(error=table["error"] * table["unit"].map(scale).to_numpy())


def fisher_scaled(hessian: SensitivityProfile, fisher: SensitivityProfile) -> SensitivityProfile:
    """The hessian profile's rows (every candidate) with errors rescaled per unit by ``unit_scales``."""
    table = scaled_errors(hessian.table, unit_scales(hessian, fisher))
    meta = dict(hessian.meta, metric=METRIC, fisher_profile_hash=fisher.content_hash)
    return SensitivityProfile(table=table.reset_index(drop=True), meta=meta)
