"""Quantize each (unit, candidate) once per worker and build trial models from the cached weights.

Trials of one study share most of their (unit, candidate) choices: re-running GPTQ on all 210 units of
SmolLM2 for every trial cost minutes of a 2-core machine. A worker keeps the packed weights it has
made (keyed by calibration settings, unit and candidate; a few tens of MB per plan) and builds each
trial's model from them. The trial model holds the dequantized weights in plain ``nn.Linear`` modules:
the same numbers ``QuantLinear`` computes on every forward (dequantize in float32, cast to the input's
dtype), computed once instead of per forward. Bytes are checked against the plan unit by unit, as
``apply_plan`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.models.loading import LoadedModel
from bitalloc.models.units import discover_units, get_submodule_parent
from bitalloc.pipeline import CalibrationSettings, get_calibration
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.quantize import quantize

MAX_CACHED_BYTES = 1_500_000_000  # packed weights kept per worker; the oldest are dropped beyond this


@dataclass
class UnitCache:
    """Packed weights by (calibration settings, unit, candidate), oldest first; the Hessians last used."""

    max_bytes: int = MAX_CACHED_BYTES
    weights: dict[tuple, object] = field(default_factory=dict)
    hessians: tuple[tuple, dict[str, torch.Tensor]] | None = None
    quantized: int = 0  # (unit, candidate) pairs quantized so far
    reused: int = 0  # (unit, candidate) pairs taken from the cache

    def _hessians(self, loaded: LoadedModel, settings: CalibrationSettings) -> dict[str, torch.Tensor]:
        key = tuple(asdict(settings).items())
        if self.hessians is None or self.hessians[0] != key:
            self.hessians = None  # free the previous setting's Hessians before loading the next
            stats = get_calibration(loaded, discover_units(loaded.model), settings)
            self.hessians = (key, stats.hessians)
        return self.hessians[1]

    def weight(self, loaded: LoadedModel, plan: Plan, unit: str, candidate: Candidate):
        """The packed weight of ``unit`` under ``candidate`` (GPTQ with the plan's calibration)."""
        settings = CalibrationSettings(**{k: plan.calibration[k] for k in asdict(CalibrationSettings())})
        needs_h = candidate.kind is not QuantKind.RTN
        key = (tuple(asdict(settings).items()) if needs_h else (), unit, candidate.name)
        if key in self.weights:
            self.reused += 1
            return self.weights[key]
        hessian = self._hessians(loaded, settings).get(unit) if needs_h else None
        linear = loaded.model.get_submodule(unit)
        qweight = quantize(linear.weight.detach().float(), candidate, hessian=hessian, unit=unit)
        self.quantized += 1
        self.weights[key] = qweight
        total = sum(w.nbytes for w in self.weights.values())
        while total > self.max_bytes and len(self.weights) > 1:
            oldest = next(iter(self.weights))
            total -= self.weights.pop(oldest).nbytes
        return qweight

    def prefill_gptq(
        self,
        loaded: LoadedModel,
        plans: Iterable[Plan],
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Quantize, for each unit, every foundation GPTQ candidate that any of ``plans`` gives it, in one
        batched pass (rows never interact in GPTQ, so one pass serves all of them), into the cache."""
        wanted: dict[tuple, set[str]] = {}  # (calibration key, unit) -> candidate names
        settings_of: dict[tuple, CalibrationSettings] = {}
        for plan in plans:
            settings = CalibrationSettings(**{k: plan.calibration[k] for k in asdict(CalibrationSettings())})
            key = tuple(asdict(settings).items())
            settings_of[key] = settings
            for choice in plan.assignment:
                cand = Candidate.parse(choice.candidate)
                if cand.kind is QuantKind.GPTQ and cand.foundation_format:
                    wanted.setdefault((key, choice.unit), set()).add(cand.name)
        for done, ((key, unit), names) in enumerate(sorted(wanted.items()), 1):
            weight = loaded.model.get_submodule(unit).weight.detach().float()  # (out, in)
            hessian = self._hessians(loaded, settings_of[key])[unit]  # (in, in)
            cands = [Candidate.parse(n) for n in sorted(names)]
            for cand, qweight in zip(
                cands, quantize_gptq_many(weight, hessian, cands, unit=unit), strict=True
            ):
                self.weights[(key, unit, cand.name)] = qweight
                self.quantized += 1
            if progress is not None:
                progress("gptq", done, len(wanted))

    def build(self, loaded: LoadedModel, plan: Plan) -> nn.Module:
        """A copy of ``loaded.model`` with every planned unit's weight replaced by its dequantized
        quantization; unplanned tensors are shared. Refuses a plan for another model or with wrong bytes."""
        plan.check_model(loaded.model_hash)
        model = loaded.model
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        out = copy.deepcopy(model, memo=shared)
        for choice in plan.assignment:
            parent, leaf = get_submodule_parent(out, choice.unit)
            linear = getattr(parent, leaf)
            if not isinstance(linear, nn.Linear):
                raise InvalidInput(f"plan unit {choice.unit!r} is not a Linear of this model")
            qweight = self.weight(loaded, plan, choice.unit, Candidate.parse(choice.candidate))
            if qweight.nbytes != choice.nbytes:
                raise BitallocError(
                    f"{choice.unit}: packed {qweight.nbytes} bytes, plan says {choice.nbytes}"
                )
            dtype = linear.weight.dtype
            new = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta", dtype=dtype)
            new.weight = nn.Parameter(qweight.dequantize(torch.float32).to(dtype), requires_grad=False)
            new.bias = linear.bias  # (out,) shared with the float model, or None
            setattr(parent, leaf, new)
        return out
