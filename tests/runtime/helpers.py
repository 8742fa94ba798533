"""A tiny random Llama (real transformers model) and in-place quantization of its linears."""

from __future__ import annotations

import torch
from torch import nn

from bitalloc.models.random_llama import random_llama
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from tests.kernels.helpers import device


def tiny_llama(
    seed: int = 0,
    layers: int = 2,
    tied: bool = False,
    family: str = "Llama",
    config_extra: dict[str, object] | None = None,
) -> nn.Module:
    """hidden 64, 4 query / 2 KV heads of 16, intermediate 128, vocab 256; weights large enough that
    attention is not uniform (initializer_range 0.1); ``family``/``config_extra`` as ``random_llama``."""
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
        family=family,
        config_extra=config_extra,
    )


def quantize_linears(model: nn.Module, plan: dict[str, str]) -> None:
    """Replace each decoder Linear named in ``plan`` by a QuantLinear of that candidate."""
    for parent in model.model.layers.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name in plan:
                qweight = quantize(child.weight.detach().float(), Candidate.parse(plan[name]))
                setattr(parent, name, QuantLinear.from_linear(child, qweight))


def nested_packed(linear: nn.Linear, candidate: str = "nest-w4g32-asym") -> PackedLinear:
    """``linear`` as a bit-nested ``PackedLinear`` (a format no decoder kernel reads), on its device."""
    from bitalloc.quantizers import nested

    packed = nested.quantize_many(linear.weight.detach().float().cpu(), [Candidate.parse(candidate)], None)
    return PackedLinear.from_linear(linear, packed[0]).to(linear.weight.device)


def block_variant(kind: str, seed: int) -> nn.Module:
    """A tiny float16 Qwen2 (q/k/v biases), Mistral or Llama with attention and MLP biases
    (``llama-biases``); biases drawn nonzero (transformers initialises them to zero)."""
    family = {"qwen2": "Qwen2", "mistral": "Mistral", "llama-biases": "Llama"}[kind]
    extra = {"attention_bias": True, "mlp_bias": True} if kind == "llama-biases" else {}
    model = tiny_llama(seed, family=family, config_extra=extra)
    with torch.no_grad():
        for proj in model.model.layers.modules():
            if isinstance(proj, nn.Linear) and proj.bias is not None:
                proj.bias.normal_(0, 0.5)
    return model
