"""A tiny random Llama (real transformers model) and in-place quantization of its linears."""

from __future__ import annotations

from torch import nn

from bitalloc.models.random_llama import random_llama
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from tests.kernels.helpers import device


def tiny_llama(seed: int = 0, layers: int = 2, tied: bool = False) -> nn.Module:
    """hidden 64, 4 query / 2 KV heads of 16, intermediate 128, vocab 256; weights large enough that
    attention is not uniform (initializer_range 0.1)."""
    return random_llama(
        hidden=64,
        intermediate=128,
        layers=layers,
        heads=4,
        kv_heads=2,
        vocab=256,
        tied=tied,
        initializer_range=0.1,
        max_positions=128,
        seed=seed,
        device=device(),
    )


def quantize_linears(model: nn.Module, plan: dict[str, str]) -> None:
    """Replace each decoder Linear named in ``plan`` by a QuantLinear of that candidate."""
    for parent in model.model.layers.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name in plan:
                qweight = quantize(child.weight.detach().float(), Candidate.parse(plan[name]))
                setattr(parent, name, QuantLinear.from_linear(child, qweight))
