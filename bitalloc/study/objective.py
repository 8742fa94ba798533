"""One trial: sample a configuration, plan it from the cached profile, quantize, measure.

Infeasible trials (empty palette, a pinned unit with no candidate, a budget below the smallest plan)
are pruned with the reason in the ``pruned`` user attribute. A plan already measured in this study
is not measured again: its results are copied (``reused_from``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from bitalloc.allocator.plan import plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InfeasibleBudget, InvalidInput
from bitalloc.models.loading import LoadedModel
from bitalloc.pipeline import EvalSettings, evaluation_tokens, quantize_model
from bitalloc.study.definition import StudyDefinition
from bitalloc.study.evaluation import ReferenceEval
from bitalloc.study.materialize import UnitCache
from bitalloc.study.profiles import full_profile, subset
from bitalloc.study.space import TrialConfig, palette_of, pin, sample, universe_palette
from bitalloc.study.storage import save_plan

MEASURES = ("perplexity", "kl", "bytes", "bpw", "latency", "tokens", "reference_perplexity")


@dataclass(frozen=True)
class Objective:
    """Callable for ``study.optimize``: returns the definition's objectives, all minimized."""

    definition: StudyDefinition
    loaded: LoadedModel
    cache: UnitCache = field(default_factory=UnitCache)  # this worker's packed weights, reused by trials
    references: dict = field(default_factory=dict)  # this worker's ReferenceEval, built on first use

    def reference(self) -> ReferenceEval:
        """The float model's log-probabilities on the evaluation tokens (computed once per worker)."""
        d = self.definition
        if "eval" not in self.references:
            settings = EvalSettings(max_tokens=d.max_tokens, context=d.context, stride=d.stride)
            tokens = evaluation_tokens(self.loaded, d.corpus, settings)
            self.references["eval"] = ReferenceEval(self.loaded.model, tokens, d.context, d.stride)
        return self.references["eval"]

    def __call__(self, trial) -> tuple[float, ...]:
        import optuna

        config = sample(trial, self.definition)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        try:
            plan = self.plan(config)
        except (InfeasibleBudget, InvalidInput) as exc:
            trial.set_user_attr("pruned", f"{type(exc).__name__}: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        pid = save_plan(self.definition.folder, plan)
        trial.set_user_attr("plan_id", pid)
        trial.set_user_attr("predicted_error", plan.predicted_error)
        trial.set_user_attr("solver", plan.solver["name"])
        done = [
            t
            for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("plan_id") == pid
            and all(m in t.user_attrs for m in self.definition.objectives)
        ]
        if done:
            measured = {m: done[0].user_attrs[m] for m in MEASURES if m in done[0].user_attrs}
            trial.set_user_attr("reused_from", done[0].number)
        else:
            measured = self.measure(plan)
        for key, value in measured.items():
            trial.set_user_attr(key, value)
        return tuple(float(measured[o]) for o in self.definition.objectives)

    def plan(self, config: TrialConfig):
        """The allocator's plan for ``config`` (InvalidInput / InfeasibleBudget when there is none)."""
        palette = palette_of(config)
        if not palette:
            raise InvalidInput("the trial's palette is empty")
        profile = full_profile(
            self.loaded, config.metric, config.calibration, universe_palette(self.definition)
        )
        sub = subset(profile, palette)
        if sub.table.empty or set(sub.units()) != set(profile.units()):
            raise InvalidInput(
                "some unit has no candidate in the trial's palette (group sizes do not divide it)"
            )
        rule = None if config.pins == "none" else self.definition.pins[config.pins]
        problem = pin(sub.to_problem(), rule)
        budget = Budget(target_bpw=config.budget_bpw)
        return plan_from_solution(sub, solve(problem, budget), budget)

    def measure(self, plan) -> dict[str, float]:
        """Perplexity and KL on held-out text, bytes, bpw and (if asked) forward latency."""
        d = self.definition
        reference = self.reference()
        result = reference.evaluate(self.cache.build(self.loaded, plan))
        out = {
            "perplexity": result.perplexity,
            "kl": result.kl,
            "tokens": result.tokens,
            "reference_perplexity": reference.evaluate(None).perplexity,
            "bytes": plan.model_bytes,
            "bpw": plan.bpw,
        }
        if "latency" in d.objectives:  # timed on the packed QuantLinear model, not the dequantized copy
            out["latency"] = forward_ms(quantize_model(self.loaded, plan), d.context)
        return out


def forward_ms(model: torch.nn.Module, context: int, repeats: int = 3) -> float:
    """Median wall time (ms) of one forward pass over ``context`` tokens."""
    ids = torch.zeros(1, context, dtype=torch.long)  # (1, t)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def config_attrs(config: TrialConfig) -> dict:
    """The configuration as plain JSON values (for reports)."""
    return asdict(config)
