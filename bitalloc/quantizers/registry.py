"""The palette's quantizers, registered explicitly: one ``QuantizerSpec`` per kind.

A spec holds the quantizer's config object, whether it needs the input Hessian ``H = XᵀX / n``, its
storage layout (which alone defines its bytes), a batched quantize and a dequantize. Candidates with
``-o<n>`` outlier columns are served by ``outliers.SPEC`` wrapping the spec of their base kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Union

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import ACT_KINDS, Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.packed import Layout, PackedWeight, grid_layout, layout_bytes
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.quantizers.rtn import quantize_rtn

AnyWeight = Union[QuantizedWeight, PackedWeight]  # noqa: UP007 (runtime alias)
Shape = tuple[int, int]


class InsufficientCalibration(InvalidInput):
    """A quantizer needs calibration statistics that are missing, mis-shaped or empty."""


def _fits(candidate: Candidate, shape: Shape) -> str | None:
    return None


@dataclass(frozen=True)
class QuantizerSpec:
    """How one kind quantizes, stores and dequantizes."""

    kind: QuantKind
    config: object
    needs_hessian: bool
    layout: Callable[[Candidate, Shape], Layout]
    quantize_many: Callable[[torch.Tensor, Sequence[Candidate], torch.Tensor | None, str], list[AnyWeight]]
    dequantize: Callable[[AnyWeight], torch.Tensor]  # float32 (out, in)
    unsupported: Callable[[Candidate, Shape], str | None] = _fits
    prepare_input: Callable[[torch.Tensor, AnyWeight], torch.Tensor] | None = None  # activation quantizers
    min_tokens: Callable[[Candidate, Shape], int] | None = None  # calibration tokens the search needs


def check_hessian(
    candidate: Candidate, hessian: torch.Tensor | None, in_features: int, unit: str
) -> torch.Tensor:
    """The float32 ``(in, in)`` Hessian, or InsufficientCalibration naming the unit and the scheme."""
    where = f"unit {unit!r}" if unit else "this weight"
    if hessian is None:
        raise InsufficientCalibration(
            f"{candidate.name} for {where} needs the Hessian X^T X / n of its inputs: run calibration first, "
            "or use an RTN candidate"
        )
    if tuple(hessian.shape) != (in_features, in_features):
        raise InsufficientCalibration(
            f"{candidate.name} for {where}: Hessian must be ({in_features}, {in_features}), "
            f"got {tuple(hessian.shape)}"
        )
    h = hessian.detach().float()
    if not bool(torch.isfinite(h).all()) or not bool((h.diagonal() > 0).any()):
        raise InsufficientCalibration(
            f"{candidate.name} for {where}: the Hessian is empty or not finite (too few calibration "
            "tokens reached this unit); recalibrate with more windows"
        )
    return h


def check_tokens(candidate: Candidate, shape: Shape, n_tokens: int | None, unit: str = "") -> None:
    """InsufficientCalibration, naming unit and scheme, if ``n_tokens`` is below what ``candidate`` needs.

    ``n_tokens`` is the calibration token count behind the Hessian (``CalibrationStats.n_tokens``); None
    (a caller that does not know it) skips the check.
    """
    rule = spec_of(candidate).min_tokens
    if n_tokens is None or rule is None:
        return
    need = rule(candidate, shape)
    if n_tokens < need:
        where = f"unit {unit!r}" if unit else "this weight"
        raise InsufficientCalibration(
            f"{candidate.name} for {where} needs at least {need} calibration tokens, got {n_tokens}: "
            "recalibrate with more windows or longer sequences, or use another scheme (rtn, gptq)"
        )


def rebuild(candidate: Candidate, shape: Shape, tensors: Mapping[str, torch.Tensor]) -> AnyWeight:
    """A stored weight from its tensors: ``QuantizedWeight`` (foundation format) or ``PackedWeight``."""
    if candidate.foundation_format:
        return QuantizedWeight.from_tensors(candidate, shape, tensors)
    return PackedWeight.from_tensors(candidate, shape, tensors)


def _grid(candidate: Candidate, shape: Shape) -> Layout:
    return grid_layout(candidate.bits, candidate.group_size, candidate.symmetric, shape)


def _rtn_many(
    w: torch.Tensor, cands: Sequence[Candidate], h: torch.Tensor | None, unit: str
) -> list[AnyWeight]:
    return [quantize_rtn(w, c, unit=unit) for c in cands]


def _gptq_many(
    w: torch.Tensor, cands: Sequence[Candidate], h: torch.Tensor | None, unit: str
) -> list[AnyWeight]:
    if not cands:
        return []
    hessian = check_hessian(cands[0], h, w.shape[1], unit)
    return list(quantize_gptq_many(w, hessian, cands, unit=unit))


@dataclass(frozen=True)
class GptqConfig:
    """The foundation GPTQ: damping ``damp * mean(diag H)`` added to the diagonal, lazy blocks of 128."""

    damp: float = 0.01
    block_size: int = 128


def _deq(q: AnyWeight) -> torch.Tensor:
    return q.dequantize()


RTN_SPEC = QuantizerSpec(QuantKind.RTN, None, False, _grid, _rtn_many, _deq)
GPTQ_SPEC = QuantizerSpec(QuantKind.GPTQ, GptqConfig(), True, _grid, _gptq_many, _deq)


def _build() -> Mapping[QuantKind, QuantizerSpec]:
    from bitalloc.quantizers import activations, awq, gptq_actorder, kmeans, lutgptq, mixbits, nested, ternary

    specs = (
        RTN_SPEC,
        GPTQ_SPEC,
        gptq_actorder.SPEC,
        awq.SPEC,
        kmeans.SPEC,
        lutgptq.SPEC,
        nested.SPEC,
        mixbits.SPEC,
        ternary.SPEC,
        activations.SPEC_A8,
        activations.SPEC_A4,
    )
    return MappingProxyType({s.kind: s for s in specs})


_REGISTRY: list[Mapping[QuantKind, QuantizerSpec]] = []  # filled once on first use (import cycle)


def registry() -> Mapping[QuantKind, QuantizerSpec]:
    """Read-only map from kind to spec (every kind of ``QuantKind`` is registered)."""
    if not _REGISTRY:
        _REGISTRY.append(_build())
    return _REGISTRY[0]


def spec_of(candidate: Candidate) -> QuantizerSpec:
    """The spec that stores ``candidate`` (the outlier wrapper for ``-o<n>`` candidates)."""
    if candidate.outliers and candidate.kind not in ACT_KINDS:
        from bitalloc.quantizers import outliers

        return outliers.SPEC
    try:
        return registry()[candidate.kind]
    except KeyError:
        raise InvalidInput(f"no quantizer registered for {candidate.kind!r}") from None


def base_spec(candidate: Candidate) -> QuantizerSpec:
    """The spec of ``candidate``'s kind, ignoring outliers."""
    return registry()[candidate.kind]


def layout_nbytes(candidate: Candidate, shape: Shape) -> int:
    """Exact bytes of ``candidate``'s layout for an ``(out, in)`` weight."""
    return layout_bytes(spec_of(candidate).layout(candidate, shape))


def needs_hessian(candidate: Candidate) -> bool:
    """Whether quantizing ``candidate`` needs calibration statistics."""
    return spec_of(candidate).needs_hessian


def quantize_batch(
    weight: torch.Tensor,
    candidates: Sequence[Candidate],
    hessian: torch.Tensor | None,
    unit: str = "",
    *,
    n_tokens: int | None = None,
) -> list[AnyWeight]:
    """Quantize one weight for every candidate, batching by spec; results follow ``candidates``.

    Every candidate is checked (shape, calibration tokens) before any is quantized.
    """
    shape = tuple(weight.shape)
    for c in candidates:
        c.check(shape, unit)  # type: ignore[arg-type]
        check_tokens(c, shape, n_tokens, unit)  # type: ignore[arg-type]
    by_spec: dict[int, list[int]] = {}
    specs: dict[int, QuantizerSpec] = {}
    for i, c in enumerate(candidates):
        spec = spec_of(c)
        by_spec.setdefault(id(spec), []).append(i)
        specs[id(spec)] = spec
    out: list[AnyWeight | None] = [None] * len(candidates)
    for key, idx in by_spec.items():
        results = specs[key].quantize_many(weight, [candidates[i] for i in idx], hessian, unit)
        for i, r in zip(idx, results, strict=True):
            out[i] = r
    return [r for r in out if r is not None]
