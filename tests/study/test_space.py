from __future__ import annotations

from pathlib import Path

import numpy as np

from bitalloc.allocator.problem import AllocationProblem
from bitalloc.study.definition import PinRule, load_definition
from bitalloc.study.space import config_of, palette_of, pin, pinned_units, universe_palette

UNITS = tuple(f"model.layers.{i}.mlp.{p}" for i in range(3) for p in ("up_proj", "down_proj"))


def test_palette_and_universe(tiny_definition: Path) -> None:
    d = load_definition(tiny_definition)
    config = config_of(d, {"bits": (3, 8), "pins": "none", "budget_bpw": 4.0})
    assert [c.name for c in palette_of(config)] == ["rtn-w3g64-sym", "rtn-w8g64-sym"]
    assert {c.name for c in universe_palette(d)} == {"rtn-w3g64-sym", "rtn-w4g64-sym", "rtn-w8g64-sym"}


def test_pinned_units_counts_negative_layers() -> None:
    mask = pinned_units(UNITS, PinRule("edges", layers=(0, -1)))
    assert mask.tolist() == [True, True, False, False, True, True]
    assert pinned_units(UNITS, PinRule("down", units=("down_proj",))).sum() == 3


def test_pin_restricts_only_pinned_units() -> None:
    n = len(UNITS)
    problem = AllocationProblem(
        units=UNITS,
        candidates=("rtn-w3g64-sym", "rtn-w8g64-sym"),
        loss=np.ones((n, 2)),
        nbytes=np.ones((n, 2), dtype=np.int64),
        feasible=np.ones((n, 2), dtype=bool),
        numel=np.full(n, 64, dtype=np.int64),
        tie=np.arange(n),
    )
    pinned = pin(problem, PinRule("edges", layers=(0, -1), min_bits=8))
    assert pinned.feasible[:, 1].all()
    assert pinned.feasible[:, 0].tolist() == [False, False, True, True, False, False]
    assert pin(problem, None) is problem
