"""Plans for the 2-layer SmolLM2 fixture, built directly from candidate choices per tie group."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bitalloc.allocator.plan import Plan, UnitChoice
from bitalloc.models.loading import LoadedModel
from bitalloc.models.units import Unit, discover_units, unquantized_bytes
from bitalloc.quantizers.candidate import Candidate


def make_plan(loaded: LoadedModel, choose: Callable[[Unit], str]) -> Plan:
    """A plan giving each unit ``choose(unit)`` (exact bytes, zero predicted error)."""
    units = discover_units(loaded.model)
    assignment = []
    for unit in units:
        cand = Candidate.parse(choose(unit))
        assignment.append(UnitChoice(unit.name, cand.name, cand.nbytes(unit.shape), unit.numel, 0.0))
    return Plan(
        assignment=tuple(assignment),
        model_name=loaded.name,
        model_hash=loaded.model_hash,
        profile_hash="test",
        calibration={},
        budget={},
        solver={"name": "test"},
        unquantized_bytes=unquantized_bytes(loaded.model, units),
    )


@pytest.fixture(scope="session")
def mixed_sym_plan(smollm2_small: LoadedModel) -> Plan:
    """Symmetric mix: attention 4-bit g32, gate/up 3-bit g64, down 8-bit g32; layer 1 q/k/v 2-bit."""

    def choose(unit: Unit) -> str:
        if "layers.1.self_attn" in unit.tie and "q_proj" in unit.tie:
            return "rtn-w2g64-sym"
        if "gate_proj" in unit.tie:
            return "rtn-w3g64-sym"
        if unit.name.endswith("down_proj"):
            return "rtn-w8g32-sym"
        return "rtn-w4g32-sym"

    return make_plan(smollm2_small, choose)
