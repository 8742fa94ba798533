"""The torch oracle: ``y = x W^T + b`` with W dequantized from the stored format, computed in float64/32."""

from __future__ import annotations

import torch

from bitalloc.quantizers.quantized_weight import QuantizedWeight


def reference_linear(
    x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None, *, dtype=torch.float32
) -> torch.Tensor:
    """``x (..., in) -> (..., out)`` in ``dtype`` (float32 or float64) from the stored codes, scales, mins."""
    weight = qweight.dequantize(torch.float32).to(dtype)  # (out, in)
    y = x.to(dtype) @ weight.T  # (..., out)
    if bias is not None:
        y = y + bias.to(dtype)
    return y
