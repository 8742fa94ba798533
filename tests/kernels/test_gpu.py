"""GPU tests: the tuned configurations on real shapes, and a Llama-shaped model decoding on the kernels."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bitalloc.kernels.gemm import GemmConfig, gemm
from bitalloc.kernels.gemm_swapab import SwapABConfig, swapab
from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.linear import KernelQuantLinear, use_kernels
from bitalloc.kernels.reference import reference_linear
from bitalloc.kernels.registry import Registry
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from tests.kernels.helpers import random_qweight, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("bits", "batch"), list(itertools.product((2, 3, 4, 5, 6, 8), (1, 2, 7, 16, 64, 256)))
)
def test_tuned_kernels_on_real_shapes(bits, batch):
    gen = torch.Generator().manual_seed(bits * 1000 + batch)
    registry = Registry.load()
    for shape, group in (((1536, 576), 64), ((4096, 4096), 128), ((4096, 14336), 32)):
        qw = random_qweight(bits, group, batch % 2 == 0, shape, gen)
        layout = to_layout(qw)
        x = torch.randn(batch, shape[1], generator=gen).half().cuda()
        choice = registry.choose(bits, shape, batch)
        out = torch.full((batch, shape[0]), float("nan"), dtype=torch.float16, device="cuda")
        if choice.kernel == "gemv":
            y = gemv(x, layout, GemvConfig(**choice.params), out=out)
        elif choice.kernel == "swapab":
            y = swapab(x, layout, SwapABConfig(**choice.params), out=out)
        else:
            y = gemm(x, layout, GemmConfig(**choice.params), out=out)
        torch.cuda.synchronize()
        assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 2e-3, (shape, choice)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_swapab_tuning_space_on_real_shapes(bits):
    gen = torch.Generator().manual_seed(bits)
    for shape, group, batch in (((8192, 1024), 128, 16), ((1000, 576), 64, 5), ((4096, 4096), 32, 12)):
        qw = random_qweight(bits, group, batch % 2 == 0, shape, gen)
        layout = to_layout(qw)
        x = torch.randn(batch, shape[1], generator=gen).half().cuda()
        ref = reference_linear(x, qw, dtype=torch.float64)
        for (block_out, warps), block_k, split_k in itertools.product(
            [(64, 4), (128, 4), (256, 8)], [128, 256], [0, 3]
        ):
            config = SwapABConfig(block_out, block_k, split_k, warps)
            out = torch.full((batch, shape[0]), float("nan"), dtype=torch.float16, device="cuda")
            y = swapab(x, layout, config, out=out)
            torch.cuda.synchronize()
            assert rel_err(y, ref) < 2e-3, (shape, config)


def test_bfloat16_gemv_gemm():
    gen = torch.Generator().manual_seed(9)
    qw = random_qweight(4, 128, False, (1024, 2048), gen)
    for rows in (1, 40):
        x = torch.randn(rows, 2048, generator=gen).bfloat16().cuda()
        ref = reference_linear(x, qw, dtype=torch.float64)
        y = gemv(x, to_layout(qw), GemvConfig()) if rows == 1 else gemm(x, to_layout(qw), GemmConfig())
        assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 1e-2


def test_llama_decodes_on_kernels_like_the_reference():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).half().cuda().eval()
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    cand = Candidate.parse(
                        "rtn-w4g64-asym" if "proj" in name and name[0] in "qkvo" else "rtn-w3g128-sym"
                    )
                    setattr(
                        parent, name, QuantLinear.from_linear(child, quantize(child.weight.float(), cand))
                    )
    ids = torch.randint(0, 512, (2, 12), device="cuda")
    with torch.no_grad():
        ref_logits = model(ids).logits.float()
        ref_tokens = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
        assert use_kernels(model) == 14
        assert all(
            isinstance(m, KernelQuantLinear)
            for m in model.model.layers[0].mlp.children()
            if isinstance(m, QuantLinear)
        )
        logits = model(ids).logits.float()
        tokens = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
    assert rel_err(logits, ref_logits) < 1e-2
    assert (tokens == ref_tokens).float().mean() > 0.9
