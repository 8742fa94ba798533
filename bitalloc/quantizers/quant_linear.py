"""A linear layer that stores a quantized weight and runs the torch reference path (dequantize, matmul)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quantized_weight import QuantizedWeight

_GRID_BUFFERS = ("scales", "mins")


class QuantLinear(nn.Module):
    """``y = x W^T + b`` with W held as packed codes, float16 scales and (asymmetric) float16 mins."""

    codes: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        out_features, in_features = qweight.shape
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise InvalidInput(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.candidate: Candidate = qweight.candidate
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("mins", qweight.mins)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, qweight: QuantizedWeight) -> QuantLinear:
        """Replace ``linear``'s weight by ``qweight`` (which must have its shape), keeping its bias."""
        shape = (linear.out_features, linear.in_features)
        if qweight.shape != shape:
            raise InvalidInput(
                f"quantized weight of shape {qweight.shape} does not fit a linear of shape {shape}"
            )
        return cls(qweight, linear.bias)

    @property
    def qweight(self) -> QuantizedWeight:
        """The stored weight as a QuantizedWeight (sharing this module's buffers)."""
        return QuantizedWeight(
            self.candidate, (self.out_features, self.in_features), self.codes, self.scales, self.mins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the weight dequantized in float32 and cast to ``x.dtype``."""
        weight = self.qweight.dequantize(torch.float32).to(x.dtype)  # (out, in)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def storage_bytes(self) -> int:
        """Bytes of the buffers: codes, scales, mins and bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"quant={self.candidate.name}, bias={self.bias is not None}"
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:
        # The float16 grid is storage, not an activation: module.to(dtype)/.half()/.float() must move it
        # between devices but never round it, so it travels as its int16 bit pattern.
        for name in _GRID_BUFFERS:
            if self._buffers.get(name) is not None:
                self._buffers[name] = self._buffers[name].view(torch.int16)
        try:
            super()._apply(fn, recurse)
        finally:
            for name in _GRID_BUFFERS:
                buf = self._buffers.get(name)
                if buf is not None and buf.dtype == torch.int16:
                    self._buffers[name] = buf.view(torch.float16)
        return self
