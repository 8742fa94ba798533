"""End-to-end decoding speed: a random-initialised ~1B Llama-shaped model, fp16 vs a mixed 4/3-bit plan.

    python benchmarks/kernels_e2e.py [--tokens 128] [--latency bitalloc/kernels/configs/latency_h100.csv]

Every decoder Linear is quantized with RTN (attention and down projections 4-bit, gate/up 3-bit, group
128, asymmetric) and swapped onto the kernels with ``use_kernels``. Decoding runs batch 1 with a static
KV cache, one CUDA graph per decode step (eager too, for reference). With a latency table, the script
also predicts the decode step (fp16 step minus fp16 linears plus tabled kernel times) and reports the error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bitalloc.kernels.latency import LatencyTable
from bitalloc.kernels.linear import use_kernels
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize

PLAN_4 = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def llama_1b(layers: int = 16):
    """A random-initialised Llama-3.2-1B-shaped model (vocab cut to 32000) in float16 on the GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).half().eval()
    return model


def quantize_mixed(model: nn.Module) -> dict[str, str]:
    """Replace every decoder Linear in place by a QuantLinear: 4-bit for PLAN_4 names, 3-bit for the rest."""
    plan = {}
    for name, module in list(model.model.layers.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                cand = Candidate.parse("rtn-w4g128-asym" if child_name in PLAN_4 else "rtn-w3g128-asym")
                qweight = quantize(child.weight.detach().float(), cand)
                setattr(module, child_name, QuantLinear.from_linear(child, qweight))
                plan[f"{name}.{child_name}"] = cand.name
    return plan


def decode_step_us(model: nn.Module, tokens: int, graph: bool) -> float:
    """Microseconds per decoded token (batch 1, static cache), median over ``tokens`` steps."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=tokens + 16)
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device="cuda")
    pos = torch.zeros(1, dtype=torch.long, device="cuda")

    def step() -> torch.Tensor:
        return model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                logits = step()
            run = g.replay
        else:

            def run() -> None:
                nonlocal logits
                logits = step()

            logits = step()
        times = []
        for t in range(tokens):
            pos.fill_(t + 3)
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            ids.copy_(logits[:, -1:].argmax(-1))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times.sort()
    return 1e6 * times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--latency", type=Path, default=None, help="latency table to predict the step time")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernels_e2e needs a CUDA GPU")
    model = llama_1b()
    params = sum(p.numel() for p in model.parameters())
    rows = [
        f"model: random Llama-shaped, {params / 1e9:.2f} B parameters, fp16, {torch.cuda.get_device_name()}"
    ]
    results = {}
    for graph in (True, False):
        try:
            results[("fp16", graph)] = decode_step_us(model, args.tokens, graph)
        except Exception as err:
            print(f"fp16 graph={graph} failed: {type(err).__name__}: {err}", file=sys.stderr)
    plan = quantize_mixed(model)
    use_kernels(model)
    for graph in (True, False):
        try:
            results[("mixed", graph)] = decode_step_us(model, args.tokens, graph)
        except Exception as err:
            print(f"mixed graph={graph} failed: {type(err).__name__}: {err}", file=sys.stderr)
    n4 = sum(v.startswith("rtn-w4") for v in plan.values())
    rows += [
        f"plan: {n4} linears w4g128-asym, {len(plan) - n4} w3g128-asym",
        "",
        "| model | CUDA graph | us / token | tokens/s | x fp16 |",
        "|---|---|---|---|---|",
    ]
    for (name, graph), us in sorted(results.items()):
        base = results.get(("fp16", graph))
        speed = f"{base / us:.2f}" if base else "-"
        rows.append(f"| {name} | {graph} | {us:.0f} | {1e6 / us:.0f} | {speed} |")
    if args.latency and ("fp16", True) in results and ("mixed", True) in results:
        table = LatencyTable.load(args.latency)
        shapes = {
            name: (m.out_features, m.in_features)
            for name, m in model.model.layers.named_modules()
            if isinstance(m, QuantLinear)
        }
        quant = sum(table.predict(Candidate.parse(plan[n]), shapes[n], 1) for n in plan)
        fp16 = sum(table.predict_fp16(shapes[n], 1) for n in plan)
        predicted = results[("fp16", True)] - fp16 + quant
        measured = results[("mixed", True)]
        rows.append("")
        rows.append(
            f"latency table: linears fp16 {fp16:.0f} us, quantized {quant:.0f} us; predicted mixed step "
            f"{predicted:.0f} us vs measured {measured:.0f} us ({100 * (predicted / measured - 1):+.1f}%)"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
