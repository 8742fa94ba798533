"""A profiling job resumed from checkpoints gives the same profile, byte for byte, as one run in one go."""

from __future__ import annotations

import pytest

from bitalloc.errors import InvalidInput
from bitalloc.service.profiling import run_profile_job

PARAMS = {"windows": 2, "seq_len": 64, "layers": 2, "candidates": ["rtn-w4g64-sym", "rtn-w8g64-sym"]}


def test_resumed_profile_equals_the_uninterrupted_one():
    saved: dict[int, dict] = {}
    steps: list[str] = []

    def save(i: int, data: dict, total: int) -> None:
        saved[i] = data

    whole, reused = run_profile_job("smollm2-135m", PARAMS, {}, save, lambda s, d, t: steps.append(s))
    assert reused == 0 and sorted(saved) == list(range(14)) and "profile" not in steps
    assert whole.meta["model_name"] == "smollm2-135m[:2]" and len(whole.table) == 28

    first_half = {i: saved[i] for i in range(7)}
    redone: list[int] = []
    resumed, reused = run_profile_job(
        "smollm2-135m", PARAMS, first_half, lambda i, d, t: redone.append(i), lambda s, d, t: None
    )
    assert reused == 7 and redone == list(range(7, 14))
    assert resumed.content_hash == whole.content_hash


def test_too_many_layers_is_refused():
    with pytest.raises(InvalidInput, match="decoder layers"):
        run_profile_job("smollm2-135m", {**PARAMS, "layers": 99}, {}, lambda *a: None, lambda *a: None)
