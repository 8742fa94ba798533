"""Linears that read one input, run as few launches as their formats allow (fused q/k/v, fused gate/up).

Consecutive members of one format (all float16 ``nn.Linear``, or ``QuantLinear`` of one candidate) are
concatenated along the outputs into one weight, so a decoder layer's q/k/v or gate/up take one launch when the
plan ties their formats (as vLLM and llama.cpp require). Each run writes its slice of one output row.
``PackedLinear`` members (formats no kernel reads) run alone, dequantized once to float16, with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.kernels.linear import KernelFallbackWarning, KernelQuantLinear
from bitalloc.kernels.registry import Registry
from bitalloc.kernels.row_norm import RowNorm
from bitalloc.quantizers.packed import PackedWeight
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantized_weight import QuantizedWeight


@dataclass(frozen=True)
class DenseRun:
    """Dense weights of consecutive members, concatenated: ``weight (out, in)``, optional ``bias (out,)``."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def run(self, x: torch.Tensor, out: torch.Tensor, accumulate: bool, pdl: bool = False) -> None:
        """``out (1, out) [+]= x (1, in) W^T + b`` on cuBLAS (one GEMV; the add is its beta; an ordinary
        launch whatever ``pdl`` says)."""
        if accumulate:
            out.addmm_(x, self.weight.t())
        else:
            torch.mm(x, self.weight.t(), out=out)
        if self.bias is not None:
            out.add_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (rows, in) -> (rows, out)``."""
        return torch.nn.functional.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class QuantRun:
    """Quantized weights of consecutive members with one candidate, concatenated into one kernel linear."""

    linear: KernelQuantLinear

    def run(
        self,
        x: torch.Tensor,
        out: torch.Tensor,
        accumulate: bool,
        pdl: bool = False,
        norm: RowNorm | None = None,
    ) -> None:
        """``out (1, out) [+]= x (1, in) W^T + b`` on the kernel the registry picks (its GEMV folds a
        weightless ``norm`` in; otherwise ``x`` is normed first by the standalone kernel)."""
        self.linear.forward_into(x, out, accumulate, pdl, norm)

    def folds_norm(self, x: torch.Tensor, norm: RowNorm) -> bool:
        """Whether ``run`` takes ``norm`` inside its GEMV."""
        return self.linear.folds_norm(x, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (rows, in) -> (rows, out)`` on the kernel the registry picks for that many rows, never building
        the tensor-core fragment layout (a second copy of the codes: the decoder's steps read the GEMV's)."""
        return self.linear(x, fragments=False)


@dataclass(frozen=True)
class ReferenceRun:
    """A ``PackedLinear`` (k-means, nested, lookup-table and weight-activation formats): no kernel reads its
    layout, so its weight is dequantized once (``weight (out, in)`` in the activations' dtype, as its own
    forward does per call) and runs on cuBLAS: the reference's numbers, no per-step dequantization (some
    dequantizers synchronise with the host, which a CUDA graph cannot capture); the dense copy costs the
    memory the packing saved. Weight-activation formats fake-quantize the input first, as their forward
    does."""

    module: PackedLinear
    weight: torch.Tensor
    bias: torch.Tensor | None
    prepare: Callable[[torch.Tensor, PackedWeight], torch.Tensor] | None  # the format's input fake-quant

    @classmethod
    def of(cls, module: PackedLinear, dtype: torch.dtype) -> ReferenceRun:
        """Dequantize ``module`` once into ``dtype``."""
        from bitalloc.quantizers.registry import spec_of

        weight = module.qweight.dequantize(torch.float32).to(dtype)  # (out, in)
        bias = None if module.bias is None else module.bias.to(dtype)
        return cls(module, weight, bias, spec_of(module.candidate).prepare_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (rows, in) -> (rows, out)``."""
        if self.prepare is not None:
            x = self.prepare(x, self.module.qweight)
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def run(self, x: torch.Tensor, out: torch.Tensor, accumulate: bool, pdl: bool = False) -> None:
        """``out (1, out) [+]= forward(x)`` (ordinary launches whatever ``pdl`` says)."""
        y = self.forward(x)
        if accumulate:
            out.add_(y)
        else:
            out.copy_(y)


def _format(module: nn.Module) -> str:
    if isinstance(module, QuantLinear):
        return module.candidate.name
    if isinstance(module, PackedLinear):
        return f"packed-{id(module)}"  # runs alone
    if isinstance(module, nn.Linear):
        return f"dense-{module.weight.dtype}"
    raise InvalidInput(
        f"a decoder projection must be nn.Linear, QuantLinear or PackedLinear, got {type(module).__name__}"
    )


def _concat_quant(members: Sequence[QuantLinear]) -> QuantizedWeight:
    """One weight of the members' rows, in order (codes are whole rows of whole bytes: a plain concat)."""
    first = members[0].qweight
    out_features = sum(m.out_features for m in members)
    mins = None if first.mins is None else torch.cat([m.qweight.mins for m in members])
    return QuantizedWeight(
        first.candidate,
        (out_features, first.shape[1]),
        torch.cat([m.codes for m in members]),
        torch.cat([m.scales for m in members]),
        mins,
    )


def _bias(members: Sequence[nn.Module], dtype: torch.dtype) -> torch.Tensor | None:
    if all(m.bias is None for m in members):
        return None
    return torch.cat(
        [
            m.bias.to(dtype) if m.bias is not None else m.weight.new_zeros(m.out_features, dtype=dtype)
            for m in members
        ]
    )


def _fusable(members: Sequence[nn.Module]) -> bool:
    """Quantized members fuse when every member's codes end on a byte boundary."""
    return all(
        not isinstance(m, QuantLinear) or (m.out_features * m.in_features * m.candidate.bits) % 8 == 0
        for m in members
    )


class FusedProjection:
    """Linears sharing one input; ``run`` writes their outputs side by side into one row."""

    def __init__(self, linears: Sequence[nn.Module], registry: Registry) -> None:
        formats = [_format(m) for m in linears]
        in_features = {m.in_features for m in linears}
        if len(in_features) != 1:
            raise InvalidInput(f"fused linears must share the input size, got {sorted(in_features)}")
        self.in_features = in_features.pop()
        self.runs: list[tuple[int, int, DenseRun | QuantRun | ReferenceRun]] = []
        start = 0
        i = 0
        while i < len(linears):
            j = i + 1
            while j < len(linears) and formats[j] == formats[i] and _fusable(linears[i : j + 1]):
                j += 1
            members = linears[i:j]
            width = sum(m.out_features for m in members)
            self.runs.append((start, start + width, self._build(members, registry)))
            start += width
            i = j
        self.out_features = start

    @staticmethod
    def _build(members: Sequence[nn.Module], registry: Registry) -> DenseRun | QuantRun | ReferenceRun:
        first = members[0]
        if isinstance(first, PackedLinear):
            warnings.warn(
                f"{first.candidate.name} weight of shape ({first.out_features}, {first.in_features}) runs on "
                "the reference path in the decoder (dequantized once to float16): no kernel reads its layout",
                KernelFallbackWarning,
                stacklevel=4,
            )
            return ReferenceRun.of(first, torch.float16)  # the decoder runs float16 models
        if isinstance(first, QuantLinear):
            if len(members) == 1:
                source = first
            else:
                source = QuantLinear(_concat_quant(members), _bias(members, first.scales.dtype))
            return QuantRun(KernelQuantLinear(source, registry))
        weight = (
            first.weight.detach() if len(members) == 1 else torch.cat([m.weight.detach() for m in members])
        )
        return DenseRun(weight, _bias(members, weight.dtype))

    @property
    def quantized(self) -> bool:
        """Whether some run is on the quantized kernels (the only ones that take a norm inside)."""
        return any(isinstance(run, QuantRun) for _, _, run in self.runs)

    @property
    def launches(self) -> int:
        """How many weight launches one call takes."""
        return len(self.runs)

    def run(
        self,
        x: torch.Tensor,
        out: torch.Tensor,
        accumulate: bool = False,
        pdl: bool = False,
        norm: RowNorm | None = None,
    ) -> torch.Tensor:
        """``out (1, out_features) [+]= x (1, in) [W_1; W_2; ...]^T`` (contiguous rows); ``pdl``: kernels that
        support it use programmatic dependent launch. ``norm``: ``x`` is the raw row of an RMSNorm, folded
        into each GEMV that can (``kernels/row_norm.py``); the other runs read the standalone norm's output
        (computed once for all of them)."""
        normed = None
        for start, stop, run in self.runs:
            if norm is not None and isinstance(run, QuantRun) and run.folds_norm(x, norm):
                run.run(x, out[:, start:stop], accumulate, pdl, norm)
            elif norm is not None:
                normed = norm.apply(x, pdl) if normed is None else normed
                run.run(normed, out[:, start:stop], accumulate, pdl)
            else:
                run.run(x, out[:, start:stop], accumulate, pdl)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (rows, in) -> (rows, out_features)`` for any number of rows (a prompt's batched pass)."""
        outputs = [run.forward(x) for _, _, run in self.runs]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
