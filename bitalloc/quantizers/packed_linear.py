"""A linear layer holding a ``PackedWeight`` (any non-foundation kind) with a dequantize-matmul forward."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed import PackedWeight


def _buffer_name(name: str) -> str:
    return "q_" + name.replace(".", "__")


def stored_name(buffer_name: str) -> str:
    """The layout's tensor name of a ``PackedLinear`` buffer (the inverse of its buffer naming)."""
    return buffer_name.removeprefix("q_").replace("__", ".")


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with W held as the named tensors of its candidate's layout (buffers ``q_<name>``)."""

    def __init__(self, qweight: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        out_features, in_features = qweight.shape
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise InvalidInput(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.candidate: Candidate = qweight.candidate
        self.in_features = in_features
        self.out_features = out_features
        self.tensor_names = tuple(qweight.stored)
        for name, t in qweight.stored.items():
            self.register_buffer(_buffer_name(name), t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, qweight: PackedWeight) -> PackedLinear:
        """Replace ``linear``'s weight by ``qweight`` (which must have its shape), keeping its bias."""
        shape = (linear.out_features, linear.in_features)
        if qweight.shape != shape:
            raise InvalidInput(
                f"quantized weight of shape {qweight.shape} does not fit a linear of shape {shape}"
            )
        return cls(qweight, linear.bias)

    @property
    def qweight(self) -> PackedWeight:
        """The stored weight (sharing this module's buffers)."""
        stored = {n: getattr(self, _buffer_name(n)) for n in self.tensor_names}
        return PackedWeight(self.candidate, (self.out_features, self.in_features), stored)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the weight dequantized in float32 and cast to ``x.dtype``.

        Weight-activation candidates (``activations.py``) first fake-quantize ``x`` as their kernel would.
        """
        from bitalloc.quantizers.registry import spec_of

        qweight = self.qweight
        prepare = spec_of(self.candidate).prepare_input
        if prepare is not None:
            x = prepare(x, qweight)  # (..., in)
        weight = qweight.dequantize(torch.float32).to(x.device, x.dtype)  # (out, in)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def storage_bytes(self) -> int:
        """Bytes of the buffers: the stored tensors and the bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"quant={self.candidate.name}, bias={self.bias is not None}"
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedLinear:
        # Stored float16 tensors are storage: .to(dtype)/.half()/.float() may move them but never round them.
        halves = [
            k for k, b in self._buffers.items() if k != "bias" and b is not None and b.dtype == torch.float16
        ]
        for k in halves:
            self._buffers[k] = self._buffers[k].view(torch.int16)
        try:
            super()._apply(fn, recurse)
        finally:
            for k in halves:
                self._buffers[k] = self._buffers[k].view(torch.float16)
        return self
