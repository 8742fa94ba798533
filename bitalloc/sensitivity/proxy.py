"""The Hessian-proxy error of a quantized weight: tr(ΔW·H·ΔWᵀ) with H = XᵀX / n."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def proxy_error(weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """Squared output error per token, summed over outputs: tr(ΔW H ΔWᵀ), ΔW (out, in), H (in, in)."""
    return proxy_errors(weight, [dequantized], hessian)[0]


def proxy_errors(
    weight: torch.Tensor, dequantized: Sequence[torch.Tensor], hessian: torch.Tensor
) -> list[float]:
    """``proxy_error`` for several quantizations of one weight, one matmul per candidate."""
    h = hessian.float()
    errors = []
    for dq in dequantized:
        delta = dq.float() - weight.float()  # (out, in)
        errors.append(((delta @ h) * delta).sum(dtype=torch.float64).clamp_min(0.0))
    return torch.stack(errors).tolist() if errors else []  # one device sync for all candidates
