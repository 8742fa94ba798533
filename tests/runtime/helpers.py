"""A tiny random Llama (real transformers model) and in-place quantization of its linears."""

from __future__ import annotations

import torch
from torch import nn

from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from tests.kernels.helpers import device


def tiny_llama(seed: int = 0, layers: int = 2, tied: bool = False) -> nn.Module:
    """hidden 64, 4 query / 2 KV heads of 16, intermediate 128, vocab 256; weights large enough that
    attention is not uniform (initializer_range 0.1)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).half().eval().to(device())


def quantize_linears(model: nn.Module, plan: dict[str, str]) -> None:
    """Replace each decoder Linear named in ``plan`` by a QuantLinear of that candidate."""
    for parent in model.model.layers.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name in plan:
                qweight = quantize(child.weight.detach().float(), Candidate.parse(plan[name]))
                setattr(parent, name, QuantLinear.from_linear(child, qweight))
