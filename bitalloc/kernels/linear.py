"""QuantLinear on the Triton kernels, and ``use_kernels(model)`` that swaps it in for every QuantLinear."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from bitalloc.kernels.fragment_layout import FragmentLayout, to_fragment_layout
from bitalloc.kernels.layout import KernelLayout, to_layout
from bitalloc.kernels.registry import KernelChoice, Registry
from bitalloc.kernels.row_norm import RowNorm
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantized_weight import QuantizedWeight

if TYPE_CHECKING:
    from bitalloc.kernels.gemv import GemvConfig

LayoutT = TypeVar("LayoutT", KernelLayout, FragmentLayout)


class KernelFallbackWarning(UserWarning):
    """A layer runs on the torch reference path because no kernel supports its format, shape or device."""


class KernelQuantLinear(QuantLinear):
    """A QuantLinear whose forward runs the GEMV/GEMM kernels, else the reference with one warning."""

    def __init__(self, source: QuantLinear, registry: Registry) -> None:
        super().__init__(source.qweight, source.bias)
        self.registry = registry
        self._layouts: dict[
            str, tuple[tuple[int, ...], KernelLayout | FragmentLayout]
        ] = {}  # kind -> (key, layout)
        self._warned: set[str] = set()

    def _buffers_key(self) -> tuple[int, ...]:
        """Identifies the current buffers: a layout built from other buffers is rebuilt."""
        return (self.codes.data_ptr(), self.scales.data_ptr(), self.codes.device.index or 0)

    def _cached(self, kind: str, build: Callable[[QuantizedWeight], LayoutT]) -> LayoutT:
        """The ``kind`` layout of the current buffers, built at first use and rebuilt when they move."""
        key = self._buffers_key()
        hit = self._layouts.get(kind)
        if hit is None or hit[0] != key:
            hit = (key, build(self.qweight))
            self._layouts[kind] = hit
        return hit[1]

    @property
    def built_layouts(self) -> tuple[str, ...]:
        """The layouts held in memory: ``planes`` (GEMV/GEMM), ``fragments`` (tensor-core kernel)."""
        return tuple(self._layouts)

    def layout(self) -> KernelLayout:
        """The bit-plane layout of the current buffers (rebuilt when they move or change)."""
        return self._cached("planes", to_layout)

    def fragments(self) -> FragmentLayout:
        """The tensor-core kernel's layout of the current buffers (built at the first batch of 2-16)."""
        return self._cached("fragments", to_fragment_layout)

    def choice(self, x: torch.Tensor) -> KernelChoice:
        """Which path a call with activations ``x (..., in)`` takes."""
        cand = self.candidate
        shape = (self.out_features, self.in_features)
        rows = x.numel() // self.in_features
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        return self.registry.choose_call(cand, shape, rows, x.dtype, x.device, interpret)

    def forward(self, x: torch.Tensor, fragments: bool = True) -> torch.Tensor:
        """``x (..., in) -> (..., out)`` on a kernel, or on the reference path for unsupported calls.
        ``fragments=False``: never the tensor-core kernel's fragment layout (a second copy of the codes,
        kept once built), but the kernel that reads the bit-plane layout (for a one-off call such as a
        prompt pass)."""
        choice = self.choice(x)
        if choice.kernel == "mma" and not fragments:
            rows = x.numel() // self.in_features
            choice = self.registry.choose(self.candidate.bits, (self.out_features, self.in_features), rows)
        if choice.kernel == "reference":
            self._warn_once(choice.reason or "unknown")
            return super().forward(x)
        x2 = x.reshape(-1, self.in_features)  # (rows, in)
        if choice.kernel == "gemv":
            from bitalloc.kernels.gemv import GemvConfig, gemv

            y = gemv(x2, self.layout(), GemvConfig(**choice.params))
        elif choice.kernel == "mma":
            from bitalloc.kernels.mma import MmaConfig, mma_matmul

            y = mma_matmul(x2, self.fragments(), MmaConfig(**choice.params))
        elif choice.kernel == "swapab":
            from bitalloc.kernels.gemm_swapab import SwapABConfig, swapab

            y = swapab(x2, self.layout(), SwapABConfig(**choice.params))
        else:
            from bitalloc.kernels.gemm import GemmConfig, gemm

            y = gemm(x2, self.layout(), GemmConfig(**choice.params))
        return self._add_bias(y).view(*x.shape[:-1], self.out_features)

    def _gemv_config(self, x: torch.Tensor) -> GemvConfig | None:
        """The launch of the batch-1 GEMV that ``forward_into(x, ...)`` runs, or None for other paths."""
        from bitalloc.kernels.gemv import GemvConfig

        choice = self.choice(x)
        return GemvConfig(**choice.params) if choice.kernel == "gemv" and x.shape[0] == 1 else None

    def folds_norm(self, x: torch.Tensor, norm: RowNorm) -> bool:
        """Whether ``forward_into(x, ..., norm=norm)`` takes the norm inside its GEMV (no own launch)."""
        from bitalloc.kernels.gemv import folds_norm

        config = self._gemv_config(x)
        return config is not None and folds_norm(x, self.layout(), config, norm)

    def forward_into(
        self,
        x: torch.Tensor,
        out: torch.Tensor,
        accumulate: bool = False,
        pdl: bool = False,
        norm: RowNorm | None = None,
    ) -> torch.Tensor:
        """``out (rows, out_features) [+]= x W^T + b`` for contiguous ``x (rows, in)`` and ``out``: batch 1 on
        the GEMV writes (or adds, for a fused residual) in place, launched with programmatic dependent launch
        when ``pdl``; other paths compute, then copy or add (ordinary launches). ``norm``: ``x`` is the raw
        row of an RMSNorm, folded into the GEMV where it can be, else run first by the standalone kernel."""
        config = self._gemv_config(x)
        if config is not None:
            from bitalloc.kernels.gemv import gemv

            gemv(x, self.layout(), config, out=out, accumulate=accumulate, pdl=pdl, norm=norm)
            return self._add_bias(out)
        if norm is not None:
            x = norm.apply(x, pdl)
        y = self.forward(x)
        return out.add_(y) if accumulate else out.copy_(y)

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        """``y (rows, out) += b`` in place (a kernel's fresh result, or the output it wrote or added into)."""
        return y if self.bias is None else y.add_(self.bias.to(y.dtype))

    def _warn_once(self, reason: str) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        warnings.warn(
            f"{self.candidate.name} weight of shape ({self.out_features}, {self.in_features}) runs on the "
            f"torch reference path (slow): no kernel for {reason}",
            KernelFallbackWarning,
            stacklevel=3,
        )


def use_kernels(model: nn.Module, registry: Registry | None = None) -> int:
    """Replace every QuantLinear of ``model`` in place by a KernelQuantLinear; returns how many."""
    registry = Registry.load() if registry is None else registry
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, QuantLinear) and not isinstance(child, KernelQuantLinear)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, KernelQuantLinear(child, registry))
    return len(swaps)
