"""The closed loop on a real model: a profile's plan refined by KL measured on calibration text.

``refine_plan`` wires closed_loop.py to measure.py: calibration windows of the profile's own corpus
(another seed than the profile's, so the fit does not reuse the profiled tokens), the cached Hessians
for GPTQ candidates, and a Plan of the best measured round. Costs one model evaluation on the windows
per probe (one per label that can move, tied labels shared) plus one per extra round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from bitalloc.allocator.closed_loop import ClosedLoop, closed_loop, unit_labels
from bitalloc.allocator.measure import PlanKL
from bitalloc.allocator.plan import Plan, plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.models.loading import LoadedModel
from bitalloc.models.units import discover_units
from bitalloc.pipeline import CalibrationSettings, get_calibration
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.registry import needs_hessian
from bitalloc.sensitivity.profile import SensitivityProfile


@dataclass(frozen=True)
class RefineSettings:
    """How the loop measures: label grouping, rounds in all, probe direction, windows of seq_len tokens."""

    group: str = "type-depth:3"
    rounds: int = 2
    direction: str = "down"
    windows: int = 2
    seq_len: int = 512
    seed: int = 1


def refine_plan(
    profile: SensitivityProfile,
    budget: Budget,
    loaded: LoadedModel,
    settings: RefineSettings = RefineSettings(),
    *,
    solver: str = "auto",
) -> tuple[Plan, ClosedLoop]:
    """The best measured plan of the closed loop (never worse on the windows than the profile's own
    plan) and the loop's record. The plan's solver entry names the round it comes from."""
    problem = profile.to_problem()
    calibration = CalibrationSettings(
        **{k: profile.meta.get("calibration", {}).get(k, v) for k, v in asdict(CalibrationSettings()).items()}
    )
    hessians = None
    if any(needs_hessian(Candidate.parse(c)) for c in problem.candidates):
        hessians = get_calibration(loaded, discover_units(loaded.model), calibration).hessians
    windows = calibration_windows(
        loaded.tokenizer,
        load_corpus(calibration.corpus, Split.CALIBRATION),
        n_windows=settings.windows,
        seq_len=settings.seq_len,
        seed=settings.seed,
    )
    measure = PlanKL(loaded.model, problem.units, problem.candidates, windows, hessians)
    loop = closed_loop(
        problem,
        budget,
        measure,
        labels=unit_labels(problem.units, settings.group),
        rounds=settings.rounds,
        direction=settings.direction,
        solver=solver,
    )
    plan = plan_from_solution(profile, loop.solution, budget)
    record = {
        "closed_loop": {
            "round": loop.best + 1,
            "rounds": len(loop.rounds),
            "group": settings.group,
            "measured_kl": [r.measured for r in loop.rounds],
            "measurements": len(loop.measured),
        }
    }
    return replace(plan, solver={**plan.solver, **record}), loop
