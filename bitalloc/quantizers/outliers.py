"""Outlier input columns kept in float16 (QUIK / SpQR style): the ``-o<n>`` suffix of a candidate.

The ``n`` most salient input columns, by ``diag(H)_j * ||W[:, j]||²`` (the column's share of the output
energy), are stored exactly in float16 with their int16 indices; the base quantizer (``rtn``, ``gptq`` or
``gptqact``) stores the full matrix with those columns zeroed (their codes cost ``n * bits`` per row and
are ignored). With a Hessian the outliers also absorb the base error: the base is quantized against the
Schur complement ``S = H_bb - H_bo H_oo⁻¹ H_ob`` (outlier rows/columns of H zeroed, so GPTQ treats them as
dead inputs), then ``W_o ← W_o - ΔW_b H_bo H_oo⁻¹`` — the least-squares optimum of tr(ΔW H ΔWᵀ) for the
float16 columns given the base error. Every outlier candidate therefore needs the Hessian, RTN bases too.

Bytes: base layout + ``2 n`` (indices) + ``2 out n`` (values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.registry import QuantizerSpec, base_spec, check_hessian, rebuild

_MAX_IN = 32767  # indices are stored as int16


@dataclass(frozen=True)
class OutlierConfig:
    """Relative damping of ``H_oo`` before it is solved (``damp * mean(diag H_oo)``)."""

    damp: float = 0.01


CONFIG = OutlierConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Base layout under ``base.`` plus outlier indices and values."""
    base = base_spec(candidate).layout(candidate.base, shape)
    n = candidate.outliers
    return {
        **{f"base.{k}": v for k, v in base.items()},
        "outlier_idx": (torch.int16, (n,)),
        "outlier_val": (torch.float16, (shape[0], n)),
    }


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """Fewer outliers than inputs, int16 indices, and whatever the base needs."""
    if candidate.outliers >= shape[1]:
        return f"{candidate.outliers} outlier columns leave nothing to quantize of {shape[1]} inputs"
    if shape[1] > _MAX_IN:
        return f"at most {_MAX_IN} input features (int16 outlier indices)"
    return base_spec(candidate).unsupported(candidate.base, shape)


def select_outliers(weight: torch.Tensor, hessian: torch.Tensor | None, n: int) -> torch.Tensor:
    """Indices (sorted, int64 ``(n,)``) of the ``n`` columns of largest ``diag(H)_j ||W_j||²``."""
    energy = weight.float().pow(2).sum(dim=0)  # (in,)
    if hessian is not None:
        energy = energy * hessian.diagonal().float()
    order = torch.sort(-energy, stable=True).indices
    return order[:n].sort().values


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Quantize with outliers; candidates sharing an outlier count share the selection and the Schur H."""
    out: list[PackedWeight | None] = [None] * len(candidates)
    by_n: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_n.setdefault(c.outliers, []).append(i)
    for n, idx in by_n.items():
        for i, q in zip(
            idx, _quantize_n(weight, [candidates[i] for i in idx], hessian, n, unit), strict=True
        ):
            out[i] = q
    return [q for q in out if q is not None]


def _quantize_n(
    weight: torch.Tensor, candidates: list[Candidate], hessian: torch.Tensor | None, n: int, unit: str
) -> list[PackedWeight]:
    w = weight.detach().float()  # (out, in)
    h = check_hessian(candidates[0], hessian, w.shape[1], unit)  # (in, in): selection and compensation
    stored = quantize_with_columns(w, h, select_outliers(w, h, n), [c.base for c in candidates], unit)
    shape = (w.shape[0], w.shape[1])
    return [PackedWeight(c, shape, t) for c, t in zip(candidates, stored, strict=True)]


def quantize_with_columns(
    weight: torch.Tensor, hessian: torch.Tensor, columns: torch.Tensor, bases: Sequence[Candidate], unit: str
) -> list[dict[str, torch.Tensor]]:
    """Tensors ``base.*``, ``outlier_idx``, ``outlier_val`` of each base with float16 ``columns`` (sorted)."""
    w, h, o = weight.float(), hessian.float(), columns  # (out, in), (in, in), (n,)
    keep = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    keep[o] = False
    b = keep.nonzero().squeeze(1)  # (in - n,)
    w_base = w.clone()
    w_base[:, o] = 0
    h_oo = h[o][:, o].double()  # (n, n)
    h_oo.diagonal().add_(CONFIG.damp * float(h_oo.diagonal().mean()) + 1e-12)
    transfer = torch.linalg.solve(h_oo, h[o][:, b].double()).float()  # (n, in-n) = H_oo⁻¹ H_ob
    h_base = torch.zeros_like(h)
    h_base[b.unsqueeze(1), b.unsqueeze(0)] = h[b][:, b] - h[b][:, o] @ transfer  # Schur complement
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(bases):
        groups.setdefault(id(base_spec(c)), []).append(i)
    quantized: list = [None] * len(bases)
    for idx in groups.values():
        spec = base_spec(bases[idx[0]])
        for i, q in zip(idx, spec.quantize_many(w_base, [bases[i] for i in idx], h_base, unit), strict=True):
            quantized[i] = q
    results = []
    for q in quantized:
        delta_b = q.dequantize()[:, b] - w[:, b]  # (out, in-n)
        values = w[:, o] - delta_b @ transfer.t()  # (out, n)
        tensors = {f"base.{k}": t for k, t in q.tensors().items()}
        tensors["outlier_idx"] = o.to(torch.int16)
        tensors["outlier_val"] = values.to(torch.float16)
        results.append(tensors)
    return results


def fill_columns(base: torch.Tensor, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """``base`` (float32 ``(out, in)``, modified) with the stored float16 outlier columns written in."""
    base[:, stored["outlier_idx"].long()] = stored["outlier_val"].float()
    return base


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Base weight with the outlier columns replaced by their float16 values: float32 ``(out, in)``."""
    base = {k.removeprefix("base."): t for k, t in q.stored.items() if k.startswith("base.")}
    return fill_columns(rebuild(q.candidate.base, q.shape, base).dequantize().clone(), q.stored)


SPEC = QuantizerSpec(None, CONFIG, True, layout, quantize_many, dequantize, unsupported)  # type: ignore[arg-type]
