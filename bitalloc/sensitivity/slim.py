"""SliM-LLM salience: Σ w²/[H⁻¹]_jj², applied to the quantization error.

SliM-LLM ranks weights by the OBS salience δ_ij = w_ij² / [H⁻¹]_jj² and gives salient column groups
more bits. As an error estimate of a quantization we sum the same form over the error:
Σ_ij ΔW_ij² / [H⁻¹]_jj², with H damped by 1% of its mean diagonal so that it inverts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitalloc.errors import InvalidInput
from bitalloc.sensitivity.metrics import Metric, UnitStats, weighted_sq_errors

DAMP = 0.01


def inverse_hessian_diagonal(hessian: torch.Tensor, *, damp: float = DAMP) -> torch.Tensor:
    """diag(H⁻¹) of the damped Hessian, (in,) float64; dead inputs (H_jj = 0) get H_jj = 1 first."""
    h = hessian.double().clone()  # (in, in)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * float(torch.diagonal(h).mean()))
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise InvalidInput(
            "the Hessian is not positive definite even after damping; recalibrate with more tokens"
        )
    return torch.diagonal(torch.cholesky_inverse(chol))


def group_salience(weight: torch.Tensor, hessian: torch.Tensor, group_size: int) -> torch.Tensor:
    """SliM-LLM salience of each column group: Σ_{i, j in group} w_ij² / [H⁻¹]_jj², (in // group,)."""
    inv = inverse_hessian_diagonal(hessian)  # (in,)
    per_weight = weight.double().square() / inv.square()[None, :]  # (out, in)
    return per_weight.sum(dim=0).view(-1, group_size).sum(dim=1)


def _score(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    inv = inverse_hessian_diagonal(stats.hessian)  # type: ignore[arg-type]  # (in,)
    return weighted_sq_errors(weight, dequantized, (1.0 / inv.square())[None, :])


METRIC = Metric(
    name="slim",
    needs=frozenset({"hessian"}),
    description="Σ ΔW_ij² / [H⁻¹]_jj²: SliM-LLM salience form",
    score=_score,
)
