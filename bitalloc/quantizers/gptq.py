"""GPTQ (Frantar et al., 2022) as pure functions, batched over candidates.

Columns are quantized left to right; each column's rounding error, divided by the matching diagonal
entry of the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), is spread over the columns not
yet quantized along ``U``'s row. Updates are lazy: rank-1 inside a small sub-block, one matmul for the
rest of the block at the end of each sub-block, and one matmul for the rest of the matrix at the end of
each block. Group grids (``grid.py``) are recomputed at each group start from the error-updated weights.

``quantize_gptq_many`` runs many candidates in one pass: W is copied once per candidate and the copies
are stacked along the row dimension (rows never interact in GPTQ), each row block with its own bits,
group size and symmetry, all sharing one Cholesky factor. ``quantize_gptq_stack`` also batches across
weights of one shape with their own Hessians (one column loop for, say, the q projections of all layers:
far fewer kernel launches on a GPU). Internally the matrices are held transposed, ``(batch, in, rows)``,
so that a column of W is a contiguous row.

Hessian preparation: ``H`` is symmetrized; dead inputs (``diag(H) == 0``) get ``H[i, i] = 1`` and their
weight columns are zeroed; then ``damp * mean(diag(H))`` is added to the diagonal. The factorization runs
in float64, everything else in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.grid import GroupGrid, group_grid
from bitalloc.quantizers.packing import pack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

_SUB_BLOCK = 16  # columns per rank-1 sub-block (a multiple of it must not exceed any group size)


def quantize_gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    candidate: Candidate,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    unit: str = "",
) -> QuantizedWeight:
    """GPTQ-quantize an ``(out, in)`` weight with the ``(in, in)`` Hessian ``X^T X / n`` of its inputs."""
    return quantize_gptq_many(weight, hessian, [candidate], damp=damp, block_size=block_size, unit=unit)[0]


def quantize_gptq_many(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    candidates: Sequence[Candidate],
    *,
    damp: float = 0.01,
    block_size: int = 128,
    unit: str = "",
) -> list[QuantizedWeight]:
    """GPTQ-quantize one weight for every candidate in one batched pass; results follow ``candidates``.

    ``block_size`` is rounded up to a multiple of every group size (groups never straddle blocks).
    """
    return quantize_gptq_stack(
        [weight], [hessian], candidates, damp=damp, block_size=block_size, units=[unit]
    )[0]


def quantize_gptq_stack(
    weights: Sequence[torch.Tensor],
    hessians: Sequence[torch.Tensor],
    candidates: Sequence[Candidate],
    *,
    damp: float = 0.01,
    block_size: int = 128,
    units: Sequence[str] | None = None,
) -> list[list[QuantizedWeight]]:
    """``quantize_gptq_many`` for several weights of one shape, each with its own Hessian, in one
    batched column loop; ``result[b][i]`` is weight ``b`` under ``candidates[i]``."""
    names = list(units) if units is not None else [""] * len(weights)
    if not (len(weights) == len(hessians) == len(names)):
        raise InvalidInput("give one Hessian and one unit name per weight")
    if not candidates or not weights:
        return [[] for _ in weights]
    shapes = {tuple(w.shape) for w in weights}
    if len(shapes) != 1:
        raise InvalidInput(f"quantize_gptq_stack needs weights of one shape, got {sorted(shapes)}")
    ws, us = [], []
    for weight, hessian, unit in zip(weights, hessians, names, strict=True):
        w = _check_inputs(weight, hessian, candidates, damp, block_size, unit)  # (out, in) float32 copy
        # (in, in) upper factor of H^-1, (in,) dead inputs
        u, dead = inverse_hessian_factor(hessian.to(w.device), damp, unit)
        w[:, dead] = 0
        ws.append(w)
        us.append(u)
    out_features, in_features = ws[0].shape
    order = sorted(range(len(candidates)), key=lambda i: candidates[i].group_size)
    ordered = [candidates[i] for i in order]
    rows = _RowLayout.build(ordered, out_features, ws[0].device)
    # (batch, in, rows): column j of every copy of weight b is wt[b, j]
    wt = torch.stack([w.t().repeat(1, len(ordered)) for w in ws])
    codes_t, grids = _gptq_columns(wt, torch.stack(us), rows, _block(block_size, rows.group_sizes))
    results: list[list[QuantizedWeight]] = []
    for b in range(len(ws)):
        mine: list[QuantizedWeight | None] = [None] * len(candidates)
        for pos, (idx, cand) in enumerate(zip(order, ordered, strict=True)):
            r0, r1 = pos * out_features, (pos + 1) * out_features
            codes = codes_t[b, :, r0:r1].t()  # (out, in) uint8
            seg_start, scales, offsets = grids[cand.group_size]
            scale16 = scales[b, r0 - seg_start : r1 - seg_start].to(torch.float16)  # (out, in/group)
            mins = None if cand.symmetric else offsets[b, r0 - seg_start : r1 - seg_start].to(torch.float16)
            mine[idx] = QuantizedWeight(
                cand, (out_features, in_features), pack_codes(codes, cand.bits), scale16, mins
            )
        results.append([r for r in mine if r is not None])
    return results


@dataclass(frozen=True, eq=False)
class _RowLayout:
    """Per-row settings of the stacked copies; rows of one group size are contiguous."""

    bits: torch.Tensor  # (rows,) int
    symmetric: torch.Tensor  # (rows,) bool
    segments: tuple[tuple[int, int, int], ...]  # (group_size, first row, end row)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(g for g, _, _ in self.segments)

    @classmethod
    def build(cls, ordered: Sequence[Candidate], out_features: int, device: torch.device) -> _RowLayout:
        bits = torch.tensor([c.bits for c in ordered], device=device).repeat_interleave(out_features)
        sym = torch.tensor([c.symmetric for c in ordered], device=device).repeat_interleave(out_features)
        segments: list[tuple[int, int, int]] = []
        for pos, cand in enumerate(ordered):
            r0, r1 = pos * out_features, (pos + 1) * out_features
            if segments and segments[-1][0] == cand.group_size:
                segments[-1] = (cand.group_size, segments[-1][1], r1)
            else:
                segments.append((cand.group_size, r0, r1))
        return cls(bits, sym, tuple(segments))


def _gptq_columns(
    wt: torch.Tensor, u: torch.Tensor, rows: _RowLayout, block: int
) -> tuple[torch.Tensor, dict[int, tuple[int, torch.Tensor, torch.Tensor]]]:
    """Quantize the transposed stacks ``wt`` (batch, in, rows) in place with the upper factors ``u``
    (batch, in, in); codes (batch, in, rows) and, per group size, (first row, scales, offsets) with
    scales and offsets (batch, segment rows, in/group)."""
    n_batch, n_cols, n_rows = wt.shape
    sub = math.gcd(_SUB_BLOCK, *rows.group_sizes)  # divides every group size: groups start at sub-blocks
    codes_t = torch.empty(n_batch, n_cols, n_rows, dtype=torch.uint8, device=wt.device)
    zeros = torch.zeros(n_batch * n_rows, device=wt.device)
    cur = GroupGrid(zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone())  # (batch*rows,) each
    grids: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for g, r0, r1 in rows.segments:
        shape = (n_batch, r1 - r0, n_cols // g)  # (batch, segment rows, in/group)
        grids[g] = (r0, torch.empty(shape, device=wt.device), torch.empty(shape, device=wt.device))
    diag = u.diagonal(dim1=1, dim2=2)  # (batch, in)
    for b1 in range(0, n_cols, block):
        b2 = min(b1 + block, n_cols)
        err = torch.empty(n_batch, b2 - b1, n_rows, device=wt.device)  # (batch, block, rows) scaled errors
        for s1 in range(b1, b2, sub):
            s2 = min(s1 + sub, b2)
            for j in range(s1, s2):
                for g, r0, r1 in rows.segments:
                    if j % g == 0:  # group start: columns j..j+g-1 are fully updated here
                        group = wt[:, j : j + g, r0:r1].transpose(1, 2)  # (batch, segment rows, g)
                        _new_group(group, rows, r0, r1, cur, grids[g], j // g)
                col = wt[:, j].reshape(-1)  # (batch*rows,)
                q = cur.quantize(col)  # (batch*rows,)
                codes_t[:, j] = q.view(n_batch, n_rows).to(torch.uint8)
                e = (col - cur.dequantize(q)).view(n_batch, n_rows).div_(diag[:, j : j + 1])  # (batch, rows)
                err[:, j - b1] = e
                if j + 1 < s2:
                    wt[:, j + 1 : s2].baddbmm_(u[:, j, j + 1 : s2].unsqueeze(2), e.unsqueeze(1), alpha=-1)
            if s2 < b2:
                upd = u[:, s1:s2, s2:b2].transpose(1, 2)  # (batch, b2 - s2, s2 - s1)
                wt[:, s2:b2].baddbmm_(upd, err[:, s1 - b1 : s2 - b1], alpha=-1)
        if b2 < n_cols:
            wt[:, b2:].baddbmm_(u[:, b1:b2, b2:].transpose(1, 2), err, alpha=-1)
    return codes_t, grids


def _new_group(
    group: torch.Tensor,
    rows: _RowLayout,
    r0: int,
    r1: int,
    cur: GroupGrid,
    record: tuple[int, torch.Tensor, torch.Tensor],
    index: int,
) -> None:
    """Fit the grids of rows ``r0:r1`` on ``group`` (batch, rows, g), make them current and record them."""
    n_batch, n_seg, g = group.shape
    grid = group_grid(
        group.reshape(n_batch * n_seg, g),
        rows.bits[r0:r1].repeat(n_batch),
        rows.symmetric[r0:r1].repeat(n_batch),
    )
    for name in ("scale", "offset", "zero", "maxq"):
        getattr(cur, name).view(n_batch, -1)[:, r0:r1] = getattr(grid, name).view(n_batch, n_seg)
    seg_start, scales, offsets = record
    scales[:, r0 - seg_start : r1 - seg_start, index] = grid.scale.view(n_batch, n_seg)
    offsets[:, r0 - seg_start : r1 - seg_start, index] = grid.offset.view(n_batch, n_seg)


def inverse_hessian_factor(
    hessian: torch.Tensor, damp: float, unit: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the damped ``H^-1`` (float32) and the dead-input mask."""
    h, dead = damped_hessian(hessian.detach().to(torch.float64), damp)  # (in, in), (in,)
    lower = _cholesky(h, upper=False, damp=damp, unit=unit)
    upper = _cholesky(torch.cholesky_inverse(lower), upper=True, damp=damp, unit=unit)  # H^-1 = U^T U
    return upper.to(torch.float32), dead


def damped_hessian(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """H as GPTQ factors it: symmetrized, dead inputs (``diag H == 0``) set to 1 and ``damp * mean(diag)``
    added, in ``hessian``'s dtype: (..., in, in), with the dead-input mask (..., in)."""
    h = (hessian + hessian.transpose(-1, -2)) / 2
    diagonal = h.diagonal(dim1=-2, dim2=-1)  # view
    dead = diagonal == 0
    diagonal[dead] = 1
    diagonal.add_(damp * diagonal.mean(dim=-1, keepdim=True))
    return h, dead


def not_positive_definite(damp: float, unit: str) -> InvalidInput:
    """The error for a Hessian that damping did not make positive definite, naming the fix."""
    where = f" of unit {unit!r}" if unit else ""
    return InvalidInput(
        f"the Hessian{where} is not positive definite after damping {damp}; "
        "it must be X^T X / n of real activations, or raise damp (e.g. 0.1)"
    )


def _cholesky(h: torch.Tensor, *, upper: bool, damp: float, unit: str) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(h, upper=upper)
    if int(info) != 0:
        raise not_positive_definite(damp, unit)
    return factor


def _check_inputs(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    candidates: Sequence[Candidate],
    damp: float,
    block_size: int,
    unit: str,
) -> torch.Tensor:
    where = f" of unit {unit!r}" if unit else ""
    if weight.dim() != 2:
        raise InvalidInput(f"weight{where} must be 2-D (out, in), got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(hessian.shape) != (in_features, in_features):
        raise InvalidInput(
            f"Hessian{where} must be ({in_features}, {in_features}) for a weight of shape "
            f"{tuple(weight.shape)}, got {tuple(hessian.shape)}"
        )
    if not damp >= 0 or not math.isfinite(damp):
        raise InvalidInput(f"damp must be a finite non-negative number, got {damp}")
    if block_size < 1:
        raise InvalidInput(f"block_size must be positive, got {block_size}")
    for cand in candidates:
        cand.check(tuple(weight.shape), unit)  # type: ignore[arg-type]
        if cand.kind != QuantKind.GPTQ:
            raise InvalidInput(f"quantize_gptq got a {cand.kind.value} candidate ({cand.name})")
    w = weight.detach().to(torch.float32).clone()
    if not bool(torch.isfinite(w).all()):
        raise InvalidInput(f"weight{where} holds NaN or inf; cannot quantize it")
    if not bool(torch.isfinite(hessian).all()):
        raise InvalidInput(f"Hessian{where} holds NaN or inf; recollect calibration statistics")
    return w


def _block(block_size: int, group_sizes: Sequence[int]) -> int:
    """``block_size`` rounded up to a multiple of every group size."""
    lcm = math.lcm(*group_sizes)
    return lcm * max(1, math.ceil(block_size / lcm))
