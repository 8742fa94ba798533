"""Column-group granularity (as SliM-LLM): the input columns of a matrix split into groups, one unit each.

Groups are **contiguous** runs of ``group_cols`` input columns in their natural order (the last group of
a matrix whose input size ``group_cols`` does not divide is shorter). Contiguous groups need no column
permutation: a group is a slice ``W[:, s:e]`` that multiplies the slice ``x[..., s:e]`` of the input, so
``y = Σ_g x[..., s_g:e_g] W_gᵀ + b`` and a kernel runs each group as a partial matmul with its own
format. A group unit is named ``<linear>@cols<s>-<e>``; the groups of a fused tie group (q/k/v,
gate/up) that cover the same columns share a tie, so a fused kernel still reads one format per slice.

Error of a group: the Hessian proxy restricted to its diagonal block, tr(ΔW_g H_gg ΔW_gᵀ) with
H_gg = H[s:e, s:e]. The full error is Σ_g tr(ΔW_g H_gg ΔW_gᵀ) + Σ_{g≠h} tr(ΔW_g H_gh ΔW_hᵀ); the
cross-group terms are **dropped** so that the error is a sum over units, which the allocator needs. For
round-to-nearest the errors of different groups are nearly uncorrelated, so the dropped terms are small
(``cross_group_fraction`` measures them). GPTQ quantizes each group with its own block H_gg (no error
compensation across groups). Metrics whose score is a sum over input columns (``hessian`` on the
block, ``awq``, ``fisher``) are supported; relative-MSE and inverse-Hessian metrics are not.

Storage: each group is packed on its own in its candidate's format (``ColumnGroupLinear``), so the bytes
of a matrix are the sum of its groups' ``Candidate.nbytes`` and equal the bytes held.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.models.units import Unit, get_submodule_parent
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.metrics import UnitStats, get_metric
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import calibrated_profile

GROUP_METRICS = ("hessian", "awq", "fisher")  # scores that are sums over input columns
_GROUP_UNIT = re.compile(r"^(?P<base>.+)@cols(?P<start>\d+)-(?P<end>\d+)$")


@dataclass(frozen=True)
class ColumnGroup:
    """Columns ``start:end`` of the Linear ``base``."""

    base: str
    start: int
    end: int

    @property
    def name(self) -> str:
        """The unit name ``<base>@cols<start>-<end>``."""
        return f"{self.base}@cols{self.start}-{self.end}"


def parse_group_unit(name: str) -> ColumnGroup | None:
    """The ColumnGroup of a group unit name, else None."""
    match = _GROUP_UNIT.match(name)
    if match is None:
        return None
    return ColumnGroup(match["base"], int(match["start"]), int(match["end"]))


def column_bounds(in_features: int, group_cols: int) -> list[tuple[int, int]]:
    """Contiguous (start, end) column ranges of ``group_cols`` columns; the last may be shorter."""
    if group_cols < 1:
        raise InvalidInput(f"group_cols must be positive, got {group_cols}")
    return [(s, min(s + group_cols, in_features)) for s in range(0, in_features, group_cols)]


def split_units(units: Sequence[Unit], group_cols: int) -> tuple[Unit, ...]:
    """One unit per column group of every unit, in order; ties are the base tie plus the column range."""
    out = []
    for unit in units:
        if parse_group_unit(unit.name) is not None:
            raise InvalidInput(f"unit {unit.name!r} is already a column group; split the whole matrices")
        rows, cols = unit.shape
        for s, e in column_bounds(cols, group_cols):
            group = ColumnGroup(unit.name, s, e)
            out.append(Unit(name=group.name, shape=(rows, e - s), tie=f"{unit.tie}@cols{s}-{e}"))
    return tuple(out)


def group_stats(stats: UnitStats, start: int, end: int) -> UnitStats:
    """The statistics of columns ``start:end``: the Hessian's diagonal block, sliced means and Fisher."""
    return UnitStats(
        hessian=None if stats.hessian is None else stats.hessian[start:end, start:end],
        abs_mean=None if stats.abs_mean is None else stats.abs_mean[start:end],
        fisher=None if stats.fisher is None else stats.fisher[:, start:end],
        frequency=stats.frequency,
        weight_sq=stats.weight_sq,
    )


def profile_column_groups(
    model: nn.Module,
    units: Sequence[Unit],
    stats: CalibrationStats,
    palette: Sequence[Candidate],
    *,
    group_cols: int,
    meta: dict,
    metric: str = "hessian",
    fisher: dict[str, torch.Tensor] | None = None,
    on_unit: Callable[[int, int], None] | None = None,
) -> SensitivityProfile:
    """A profile whose units are the column groups of ``units`` (Linears), each scored on its own."""
    from bitalloc.sensitivity.scoring import quantize_palette

    if metric not in GROUP_METRICS:
        raise InvalidInput(
            f"metric {metric!r} is not a sum over input columns; "
            f"column groups take {', '.join(GROUP_METRICS)}"
        )
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    scorer = get_metric(metric)
    fisher = fisher or {}
    rows = []
    for i, unit in enumerate(units):
        weight = model.get_submodule(unit.name).weight.detach().float()  # (out, in)
        full = UnitStats(
            hessian=stats.hessians.get(unit.name),
            abs_mean=stats.abs_means.get(unit.name),
            fisher=fisher.get(unit.name),
        )
        for group in split_units([unit], group_cols):
            col = parse_group_unit(group.name)
            assert col is not None
            part = group_stats(full, col.start, col.end)
            scorer.check(part, group.name)
            w = weight[:, col.start : col.end].contiguous()  # (out, group)
            scored = quantize_palette(w, part.hessian, palette, unit=group.name)
            if not scored:
                raise InvalidInput(f"no candidate of the palette fits column group {group.name!r}")
            errors = scorer.score(w, [dq for _, dq, _ in scored], part)
            for (cand, _, nbytes), error in zip(scored, errors, strict=True):
                rows.append((group.name, group.tie, *group.shape, cand.name, float(error), nbytes))
        if on_unit is not None:
            on_unit(i + 1, len(units))
    groups = {"group_cols": group_cols, "order": "contiguous", "cross_terms": "dropped"}
    return calibrated_profile(
        rows, stats, palette, meta, estimator=metric, metric=metric, column_groups=groups
    )


def cross_group_fraction(
    weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor, bounds
) -> float:
    """(full error − Σ block errors) / full error for one quantized matrix: the share the groups drop."""
    delta = (dequantized.float() - weight.float()).double()  # (out, in)
    h = hessian.double()
    full = float(((delta @ h) * delta).sum())
    blocks = sum(float(((delta[:, s:e] @ h[s:e, s:e]) * delta[:, s:e]).sum()) for s, e in bounds)
    return (full - blocks) / full if full > 0 else 0.0


class ColumnGroupLinear(nn.Module):
    """``y = Σ_g x[..., s_g:e_g] W_gᵀ + b``: each column group a QuantLinear/PackedLinear of its own format.

    The parts are the usual quantized modules, so ``quantized_bytes`` counts their storage unchanged.
    """

    def __init__(
        self,
        parts: Sequence[nn.Module],
        bounds: Sequence[tuple[int, int]],
        out_features: int,
    ) -> None:
        super().__init__()
        if len(parts) != len(bounds):
            raise InvalidInput(f"{len(parts)} group modules for {len(bounds)} column ranges")
        expected = 0
        for s, e in bounds:
            if s != expected or e <= s:
                raise InvalidInput(f"column groups must tile the input in order; got {list(bounds)}")
            expected = e
        self.parts = nn.ModuleList(parts)
        self.bounds = tuple((int(s), int(e)) for s, e in bounds)
        self.in_features = expected
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the partial matmuls of the column slices (the first group adds the bias)."""
        y = None
        for (s, e), part in zip(self.bounds, self.parts, strict=True):
            partial = part(x[..., s:e])  # (..., out)
            y = partial if y is None else y + partial
        assert y is not None
        return y

    def storage_bytes(self) -> int:
        """Bytes of every group's stored tensors (and the bias the first group holds)."""
        return sum(p.storage_bytes() for p in self.parts)

    def dequantized_weight(self) -> torch.Tensor:
        """The (out, in) weight the groups hold, float32."""
        return torch.cat([p.qweight.dequantize(torch.float32) for p in self.parts], dim=1)

    def extra_repr(self) -> str:
        formats = ", ".join(p.candidate.name for p in self.parts)
        return f"in_features={self.in_features}, out_features={self.out_features}, groups=[{formats}]"


def apply_column_groups(
    model: nn.Module,
    choices: Sequence[tuple[str, str, int]],
    hessians: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace, in place, each Linear of group units ``(unit, candidate, nbytes)`` by a ColumnGroupLinear.

    Every group of a Linear must be planned and the groups must tile its input; the bytes each group
    packs must equal the plan's.
    """
    by_base: dict[str, list[tuple[ColumnGroup, str, int]]] = {}
    for unit, candidate, nbytes in choices:
        group = parse_group_unit(unit)
        if group is None:
            raise InvalidInput(f"{unit!r} is not a column-group unit (<linear>@cols<start>-<end>)")
        by_base.setdefault(group.base, []).append((group, candidate, nbytes))
    for base, groups in by_base.items():
        parent, leaf = get_submodule_parent(model, base)
        linear = getattr(parent, leaf)
        if not isinstance(linear, nn.Linear):
            raise InvalidInput(f"plan unit {base!r} is not a Linear of this model")
        groups.sort(key=lambda g: g[0].start)
        bounds = [(g.start, g.end) for g, _, _ in groups]
        tiled = bounds[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        if not tiled or bounds[-1][1] != linear.in_features:
            raise InvalidInput(
                f"the column groups of {base!r} cover {bounds}, not all {linear.in_features} inputs: "
                "plan every group of the matrix"
            )
        weight = linear.weight.detach().float()  # (out, in)
        h = None if hessians is None else hessians.get(base)
        parts: list[nn.Module] = []
        for i, (group, name, nbytes) in enumerate(groups):
            cand = Candidate.parse(name)
            block = None if h is None else h[group.start : group.end, group.start : group.end]
            w = weight[:, group.start : group.end].contiguous()  # (out, group)
            q = quantize(w, cand, hessian=block, unit=group.name)
            if q.nbytes != nbytes:
                raise InvalidInput(f"{group.name}: packed {q.nbytes} bytes, plan says {nbytes}")
            bias = linear.bias if i == 0 else None  # the first group carries the bias, stored once
            parts.append(QuantLinear(q, bias) if isinstance(q, QuantizedWeight) else PackedLinear(q, bias))
        setattr(parent, leaf, ColumnGroupLinear(parts, bounds, linear.out_features))


def apply_group_plan(
    model: nn.Module,
    plan: Plan,
    *,
    model_hash: str,
    hessians: dict[str, torch.Tensor] | None = None,
    n_tokens: int | None = None,
) -> nn.Module:
    """``apply_plan`` for plans mixing whole and column-group units; bytes held equal the plan's."""
    from bitalloc.quantizers.apply import apply_plan, quantized_bytes

    groups = [c for c in plan.assignment if parse_group_unit(c.unit) is not None]
    whole = tuple(c for c in plan.assignment if parse_group_unit(c.unit) is None)
    quantized = apply_plan(
        model, replace(plan, assignment=whole), model_hash=model_hash, hessians=hessians, n_tokens=n_tokens
    )
    apply_column_groups(quantized, [(c.unit, c.candidate, c.nbytes) for c in groups], hessians)
    stored = quantized_bytes(quantized)
    if stored != plan.nbytes:
        raise BitallocError(f"quantized model stores {stored} bytes but the plan counts {plan.nbytes}")
    return quantized
