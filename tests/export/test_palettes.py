"""Export palettes restrict a profile up front so that every plan made from it exports."""

from __future__ import annotations

import pandas as pd
import pytest

from bitalloc.allocator.problem import Budget
from bitalloc.errors import InfeasibleBudget
from bitalloc.export.common import ExportError
from bitalloc.export.palettes import check_plan, export_palette, restrict_profile
from bitalloc.pipeline import make_plan
from bitalloc.quantizers.candidate import Candidate, default_palette
from bitalloc.sensitivity.profile import SensitivityProfile


def _profile() -> SensitivityProfile:
    palette = [c.name for c in default_palette(bits=(2, 3, 4, 5, 8), group_sizes=(32, 64))]
    rows = []
    for i, unit in enumerate(["a.q_proj", "a.k_proj", "a.up_proj"]):
        for name in palette:
            c = Candidate.parse(name)
            rows.append((unit, unit, 64, 128, name, (i + 1) * 4.0**-c.bits, c.nbytes((64, 128))))
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    meta = {"model_hash": "m", "corpus_hash": "c", "palette": palette, "unquantized_bytes": 0}
    return SensitivityProfile(table=table, meta=meta)


@pytest.mark.parametrize("fmt", ["compressed-tensors", "compressed-tensors-vllm", "gptq-dynamic"])
def test_plans_from_a_restricted_profile_always_export(fmt):
    restricted = restrict_profile(_profile(), fmt)
    palette = export_palette(fmt)
    assert restricted.meta["palette"] and all(
        palette.allows(Candidate.parse(c)) for c in restricted.meta["palette"]
    )
    for bpw in (2.5, 3.5, 4.5, 6.0):
        try:
            plan = make_plan(restricted, Budget(target_bpw=bpw), solver="milp")
        except InfeasibleBudget:  # a budget below the format's smallest grid is refused, not mis-planned
            assert bpw <= 4.5  # below 4-bit group-64 (vLLM) or 2-bit grids
            continue
        check_plan(plan, fmt)
    assert not any(
        Candidate.parse(c).bits == 5 for c in restrict_profile(_profile(), "gptq-dynamic").meta["palette"]
    )
    assert {
        Candidate.parse(c).bits
        for c in restrict_profile(_profile(), "compressed-tensors-vllm").meta["palette"]
    } == {4, 8}


def test_unknown_format_and_empty_restriction():
    with pytest.raises(ExportError, match="known:"):
        export_palette("onnx")
    profile = _profile()
    only_asym = SensitivityProfile(
        table=profile.table[profile.table["candidate"].str.endswith("asym")],
        meta=dict(profile.meta, palette=[c for c in profile.meta["palette"] if c.endswith("asym")]),
    )
    with pytest.raises(ExportError, match="no candidate"):
        restrict_profile(only_asym, "compressed-tensors")
