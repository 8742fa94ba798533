from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, default_palette
from bitalloc.sensitivity.profile import SensitivityProfile

SHAPES = {"a.q": ((64, 96), "a.qkv"), "a.k": ((32, 96), "a.qkv"), "a.o": ((96, 64), "a.o")}


def make_profile(errors: list[float], palette=None) -> SensitivityProfile:
    palette = palette or default_palette(group_sizes=(32, 64))
    rows, i = [], 0
    for unit, (shape, tie) in SHAPES.items():
        for c in palette:
            if c.supports(shape):
                rows.append((unit, tie, *shape, c.name, errors[i % len(errors)], c.nbytes(shape)))
                i += 1
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    meta = {
        "model_hash": "m" * 64,
        "corpus_hash": "c" * 64,
        "palette": [c.name for c in palette],
        "unquantized_bytes": 1234,
        "model_name": "toy",
    }
    return SensitivityProfile(table=table, meta=meta)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1e12, allow_nan=False, allow_subnormal=True), min_size=1, max_size=30))
def test_profile_round_trips_exactly(tmp_path_factory, errors):
    profile = make_profile(errors)
    path = profile.save(tmp_path_factory.mktemp("p") / "profile.parquet")
    again = SensitivityProfile.load(path)
    pd.testing.assert_frame_equal(again.table, profile.table.astype(again.table.dtypes.to_dict()))
    assert [float(e).hex() for e in again.table["error"]] == [float(e).hex() for e in profile.table["error"]]
    assert again.content_hash == profile.content_hash
    assert {k: v for k, v in again.meta.items() if k != "profile_hash"} == profile.meta


def test_edited_profile_is_refused(tmp_path):
    path = make_profile([1.0, 2.0]).save(tmp_path / "p.parquet")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["model_hash"] = "x" * 64
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="hash"):
        SensitivityProfile.load(path)


def test_to_problem_marks_unfit_candidates_infeasible_and_keeps_ties():
    profile = make_profile([0.5, 1.5, 2.5])
    problem = profile.to_problem()
    assert problem.units == ("a.q", "a.k", "a.o")
    assert problem.tie[0] == problem.tie[1] != problem.tie[2]
    g64 = [i for i, c in enumerate(problem.candidates) if Candidate.parse(c).group_size == 64]
    assert problem.feasible[2, g64].all() and not problem.feasible[0, g64].any()  # 96 % 64 != 0
    c = problem.candidates.index("rtn-w4g32-sym")
    assert problem.nbytes[0, c] == Candidate.parse("rtn-w4g32-sym").nbytes((64, 96))
    assert np.all(problem.numel == [64 * 96, 32 * 96, 96 * 64])
