"""The analytic latency table: documented constants, shapes, and its use as a budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bitalloc.allocator.latency import BANDWIDTH_BYTES_PER_US, LAUNCH_US, analytic_latency, format_factor
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput
from tests.allocator.test_problem import make


def test_factors_follow_the_documented_table():
    assert format_factor("gptq-w4g128-sym") == 1.0
    assert format_factor("rtn-w3g128-sym") == pytest.approx(1.15)
    assert format_factor("rtn-w4g32-asym") == pytest.approx(1.05 * 1.03)
    assert format_factor("custom") == 1.0
    table = analytic_latency(("gptq-w4g128-sym", "rtn-w3g64-asym"), np.array([[2_500_000, 1_000_000]]))
    assert table.shape == (1, 2)
    assert table[0, 0] == pytest.approx(LAUNCH_US + 2_500_000 / BANDWIDTH_BYTES_PER_US)
    assert table[0, 1] == pytest.approx(LAUNCH_US + 1_000_000 / BANDWIDTH_BYTES_PER_US * 1.15 * 1.02 * 1.03)


def test_latency_budget_binds_where_bytes_do_not():
    p = make([[3.0, 1.0], [3.0, 1.0]], nbytes=[[2, 4], [2, 4]])
    p = replace(p, latency=np.array([[1.0, 5.0], [1.0, 2.0]]))
    s = solve(p, Budget(max_bytes=8, max_latency=4.0), solver="milp")
    assert s.choice.tolist() == [0, 1] and s.usage == {"bytes": 6, "latency": 3.0}
    assert s.prices["latency"] > 0 and s.prices["bytes"] == 0


def test_latency_budget_without_a_table_and_bad_entries_are_named():
    with pytest.raises(InvalidInput, match="max_latency needs a latency table"):
        solve(make([[1.0]]), Budget(max_latency=1.0))
    with pytest.raises(InvalidInput, match=r"unit 'layer0', candidate 'c1': latency nan"):
        replace(make([[1.0, 2.0]]), latency=np.array([[1.0, np.nan]]))
    with pytest.raises(InvalidInput, match=r"unit 'layer0': routing frequency -1.0"):
        replace(make([[1.0, 2.0]]), active=np.array([-1.0]))
