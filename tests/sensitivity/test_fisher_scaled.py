from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import default_palette
from bitalloc.sensitivity.fisher_scaled import fisher_scaled, unit_scales
from bitalloc.sensitivity.profile import SensitivityProfile

SHAPES = {"a.q": ((64, 96), "a.qkv"), "a.k": ((32, 96), "a.qkv"), "a.o": ((96, 64), "a.o")}
PALETTE = default_palette(group_sizes=(32, 64))


def profile(
    errors: np.ndarray, *, model: str = "m", kinds: tuple[str, ...] = ("rtn", "gptq")
) -> SensitivityProfile:
    rows = []
    for unit, (shape, tie) in SHAPES.items():
        for c in PALETTE:
            if c.supports(shape) and c.name.split("-")[0] in kinds:
                rows.append(
                    (unit, tie, *shape, c.name, float(errors[len(rows) % len(errors)]), c.nbytes(shape))
                )
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    meta = {"model_hash": model * 64, "corpus_hash": "c" * 64, "palette": [c.name for c in PALETTE]}
    return SensitivityProfile(table=table, meta=dict(meta, unquantized_bytes=0))


positive = st.lists(st.floats(1e-6, 1e6, allow_nan=False), min_size=1, max_size=40).map(np.array)


@settings(max_examples=40, deadline=None)
@given(positive, positive)
def test_keeps_the_proxy_ranking_and_the_fisher_weight_of_each_unit(h_errors, f_errors):
    hessian, fisher = profile(h_errors), profile(f_errors)
    out = fisher_scaled(hessian, fisher).table
    ratio = out["error"] / hessian.table["error"]
    for unit, rows in out.groupby("unit"):
        # one factor per unit: the order of the unit's candidates is the proxy's
        assert np.allclose(ratio[rows.index], ratio[rows.index[0]], rtol=1e-12)
        rtn = rows["candidate"].str.startswith("rtn-")
        f = fisher.table[(fisher.table["unit"] == unit) & fisher.table["candidate"].str.startswith("rtn-")]
        assert rows.loc[rtn, "error"].sum() == pytest.approx(f["error"].sum(), rel=1e-9)
    assert list(out["candidate"]) == list(hessian.table["candidate"])


def test_units_weighted_by_fisher_can_reverse_the_proxy_order():
    hessian = profile(np.array([1.0]))  # every unit equal in the proxy
    errors = {"a.q": 10.0, "a.k": 1.0, "a.o": 0.1}
    fisher = profile(np.array([1.0]))
    fisher.table["error"] = fisher.table["unit"].map(errors)
    scale = unit_scales(hessian, fisher)
    assert scale["a.q"] > scale["a.k"] > scale["a.o"]
    assert scale["a.q"] == pytest.approx(10.0)


def test_profiles_of_different_models_are_refused():
    with pytest.raises(InvalidInput, match="different models"):
        fisher_scaled(profile(np.array([1.0])), profile(np.array([1.0]), model="x"))


def test_a_unit_without_rtn_rows_is_named():
    hessian = profile(np.array([1.0]))
    fisher = profile(np.array([1.0]), kinds=("gptq",))
    with pytest.raises(InvalidInput, match=r"a\.q"):
        fisher_scaled(hessian, fisher)
