"""End-to-end decoding speed: a random-initialised ~1B Llama-shaped model, fp16 vs a mixed 4/3-bit plan.

    python benchmarks/kernels_e2e.py [--tokens 64] [--context 0,512] [--prompt 512] [--no-l2-slice] \
        [--head-bits 8] [--latency bitalloc/kernels/configs/latency_h100_pipelined.csv]

Every decoder Linear is quantized with RTN (attention and down projections 4-bit, gate/up 3-bit, group
128, asymmetric). Four runners decode batch 1, each step one CUDA graph, side by side in one process:
transformers' model with a static cache (fp16, and mixed with ``use_kernels``) and ``LlamaDecoder`` (fused
launches; fp16 on cuBLAS, mixed on the kernels; on Hopper its own kernels use programmatic dependent
launch, and the mixed decoder is also timed without it, with its RMSNorms as their own launches instead of
inside the GEMVs (``fuse_norms=False``), and with ``--no-l2-slice`` without the GEMVs asking L2 for their
slice before the PDL wait, ``GemvConfig.l2_slice``).
Times: the median step with a sync after each step, and
the mean step of back-to-back replays. Correctness: the decoder's logits against transformers' on the same
weights (the mixed reference dequantizes in torch). With a latency table, the decoder's mixed step is also
predicted (its fp16 step minus tabled fp16 linears plus tabled kernel times) and the error reported. With
``--latency-budget F`` the plan is not the fixed 4/3-bit one but the allocator's (``runtime/latency_plan.py``:
least relative weight error over w3/w4/w8 under F x the tabled float16 time of the linears, q/k/v and gate/up
tied), so the reported error is that of a plan made under a latency budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from bitalloc.kernels._pdl import pdl_supported
from bitalloc.kernels.latency import LatencyTable
from bitalloc.kernels.linear import use_kernels
from bitalloc.kernels.registry import Registry
from bitalloc.models.random_llama import random_llama
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.runtime.latency_plan import decoder_linears, plan_under_latency, tabled_us
from bitalloc.runtime.llama_decoder import LlamaDecoder

PLAN_4 = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
BUDGET_PALETTE = (
    "rtn-w3g128-asym",
    "rtn-w4g128-asym",
    "rtn-w8g128-asym",
)  # what --latency-budget chooses from


def llama_1b(layers: int = 16) -> nn.Module:
    """A random-initialised Llama-3.2-1B-shaped model (vocab cut to 32000) in float16 on the GPU."""
    return random_llama(
        hidden=2048, intermediate=8192, layers=layers, heads=32, kv_heads=8, vocab=32000, device="cuda"
    )


def mixed_plan(model: nn.Module) -> dict[str, str]:
    """The fixed plan: 4-bit for PLAN_4 names, 3-bit for the rest (RTN, group 128, asymmetric)."""
    return {
        name: "rtn-w4g128-asym" if name.rpartition(".")[2] in PLAN_4 else "rtn-w3g128-asym"
        for name, _, _ in decoder_linears(model)
    }


def quantize_plan(model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """Replace each decoder Linear in place by a QuantLinear of its ``plan`` candidate; returns ``plan``."""
    for name, linear, _ in decoder_linears(model):
        parent_name, _, leaf = name.rpartition(".")
        qweight = quantize(linear.weight.detach().float(), Candidate.parse(plan[name]))
        setattr(model.model.layers.get_submodule(parent_name), leaf, QuantLinear.from_linear(linear, qweight))
    return plan


def quantize_head(model: torch.nn.Module, bits: int) -> Callable[[], None]:
    """Replace the LM head by a QuantLinear of RTN ``bits``, group 128, asymmetric; returns the undo."""
    dense = model.lm_head
    qweight = quantize(dense.weight.detach().float(), Candidate.parse(f"rtn-w{bits}g128-asym"))
    model.lm_head = QuantLinear.from_linear(dense, qweight)
    return lambda: setattr(model, "lm_head", dense)


def hf_step_us(model: nn.Module, tokens: int, context: int, graph: bool = True) -> tuple[float, float]:
    """transformers' decode step (batch 1, static cache): (median us with a sync per step, NaN), decoding
    ``tokens`` positions after ``context`` (the cache content is irrelevant to the time). Not timed back to
    back: replaying its graph without a sync per step failed with a device-side index assert in the cache
    update (H200, transformers 5.17), cause not established."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + tokens + 16)
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
            pos.fill_(context + t + 3)
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            ids.copy_(logits[:, -1:].argmax(-1))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times.sort()
    return 1e6 * times[len(times) // 2], float("nan")


def decoder_step_us(decoder: LlamaDecoder, tokens: int, context: int) -> tuple[float, float]:
    """``LlamaDecoder``'s step on its CUDA graph: (median us with a sync per step, mean us back to back)."""
    decoder.reset()
    decoder.capture()
    for _ in range(context):  # fill the cache up to the context (untimed)
        decoder.step()
    times = []
    for _ in range(tokens):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    decoder.reset()
    for _ in range(context):
        decoder.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(tokens):
        decoder.step()
    torch.cuda.synchronize()
    mean = (time.perf_counter() - start) / tokens
    times.sort()
    return 1e6 * times[len(times) // 2], 1e6 * mean


def prompt_ms(decoder: LlamaDecoder, prompt: int) -> tuple[float, float]:
    """A prompt of ``prompt`` tokens: (median ms of one ``prefill`` pass, ms fed one captured step per
    token)."""
    ids = [1 + i % 1000 for i in range(prompt)]
    decoder.capture()
    times = []
    for _ in range(5):
        decoder.reset()
        torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.prefill(ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    decoder.reset()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for token in ids:
        decoder.step(token)
    torch.cuda.synchronize()
    stepped = time.perf_counter() - start
    decoder.reset()
    times.sort()
    return 1e3 * times[len(times) // 2], 1e3 * stepped


def logits_error(model: nn.Module, decoder: LlamaDecoder, steps: int = 8) -> tuple[float, float]:
    """Decoder vs transformers on the same random prompt: (max relative logit error over the steps, share of
    steps with the same greedy token)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, steps), generator=gen).cuda()
    with torch.no_grad():
        ref = model(ids).logits[0].float()  # (steps, vocab)
    decoder.reset()
    ours = torch.stack([decoder.step(int(t))[0].float() for t in ids[0]])  # (steps, vocab)
    decoder.reset()
    err = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    same = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return err, same


def profile_table(decoder: LlamaDecoder, steps: int = 4) -> str:
    """GPU time per step by kernel (eager steps under torch.profiler; the graph replays the same kernels),
    and the torch operators that launched kernels."""
    from torch.profiler import ProfilerActivity, profile

    decoder.reset()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder.step()
        torch.cuda.synchronize()
    decoder.reset()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type.name == "CUDA":
            name = event.name.split("(")[0][:60]
            entry = totals.setdefault(name, [0.0, 0])
            entry[0] += event.device_time / steps
            entry[1] += 1 / steps
    rows = ["| kernel | launches / step | us / step |", "|---|---|---|"]
    for name, (us, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:14]:
        rows.append(f"| {name} | {count:.0f} | {us:.1f} |")
    rows.append(
        f"| all | {sum(c for _, c in totals.values()):.0f} | {sum(u for u, _ in totals.values()):.1f} |"
    )
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::") and e.device_time_total > 0]
    rows += [
        "",
        "torch operators with GPU time (per step): "
        + ", ".join(
            f"{e.key} x{e.count / steps:.0f} {e.device_time_total / steps:.1f} us"
            for e in sorted(ops, key=lambda e: -e.device_time_total)
        ),
    ]
    return "\n".join(rows)


def gemv_roles(decoder: LlamaDecoder, steps: int = 4) -> str:
    """GPU time of the decoder's GEMVs by role in the layer (eager steps, kernels serialised: build the
    decoder with pdl=False), from the order of the GEMV launches (q/k/v, o, gate/up, down per layer)."""
    from torch.profiler import ProfilerActivity, profile

    roles = ("q/k/v", "o", "gate/up", "down")
    if decoder.launches_per_step != len(roles) * decoder.dims.layers + 1:
        return "(GEMV roles need one launch per projection)"
    decoder.reset()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder.step()
        torch.cuda.synchronize()
    decoder.reset()
    gemvs = sorted(
        (e for e in prof.events() if e.device_type.name == "CUDA" and e.name.startswith("gemv")),
        key=lambda e: e.time_range.start,
    )
    if len(gemvs) != len(roles) * decoder.dims.layers * steps:  # a fallback or another kernel shifts roles
        return f"(GEMV roles need {len(roles)} f16x2 GEMVs per layer; the profile holds {len(gemvs)})"
    per_role = [0.0] * len(roles)
    for i, event in enumerate(gemvs):
        per_role[i % len(roles)] += event.device_time / steps / decoder.dims.layers
    rows = ["| projection | us per launch |", "|---|---|"]
    rows += [f"| {role} | {us:.2f} |" for role, us in zip(roles, per_role, strict=True)]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--context", default="0", help="comma-separated positions decoding starts at")
    parser.add_argument("--latency", type=Path, default=None, help="latency table to predict the step time")
    parser.add_argument("--profile", action="store_true", help="GPU time per kernel of the decoder steps")
    parser.add_argument("--prompt", type=int, default=0, help="also time a prompt of this many tokens")
    parser.add_argument(
        "--head-bits", type=int, default=0, help="also time the mixed decoder with the LM head at these bits"
    )
    parser.add_argument(
        "--no-l2-slice",
        action="store_true",
        help="also time the mixed decoder with every batch-1 GEMV's L2 slice prefetch off",
    )
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=None,
        help="plan with the allocator under this fraction of the float16 linears' tabled time (--latency)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernels_e2e needs a CUDA GPU")
    if args.latency_budget is not None and args.latency is None:
        sys.exit("--latency-budget prices the plan with a latency table: give --latency")
    contexts = [int(c) for c in args.context.split(",")]
    max_len = max(max(contexts) + args.tokens + 16, args.prompt)
    prompts: dict[str, tuple[float, float]] = {}
    model = llama_1b()
    params = sum(p.numel() for p in model.parameters())
    times: dict[tuple[str, int], tuple[float, float]] = {}
    checks = {}
    for ctx in contexts:
        times[("transformers fp16", ctx)] = hf_step_us(model, args.tokens, ctx)
    dense = LlamaDecoder(model, max_len)
    checks["decoder fp16"] = logits_error(model, dense)
    for ctx in contexts:
        times[("decoder fp16", ctx)] = decoder_step_us(dense, args.tokens, ctx)
    profiles = {"decoder fp16": profile_table(dense)} if args.profile else {}
    if args.prompt:
        prompts["decoder fp16"] = prompt_ms(dense, args.prompt)
    del dense
    if args.latency_budget is not None:  # a plan made by the allocator under a latency budget
        table = LatencyTable.load(args.latency)
        fp16_us = tabled_us(table, model, None)
        made = plan_under_latency(model, table, BUDGET_PALETTE, args.latency_budget * fp16_us)
        plan = quantize_plan(model, made.assignment)
        budget_row = (
            f"plan made under a latency budget of {made.budget_us:.0f} us ({args.latency_budget:.2f} x the "
            f"tabled float16 linears, {fp16_us:.0f} us; {made.solver}): tabled {made.latency_us:.0f} us, "
            f"relative weight error summed {made.weight_error:.4f}"
        )
    else:
        plan, budget_row = quantize_plan(model, mixed_plan(model)), ""
    mixed = LlamaDecoder(model, max_len)  # QuantLinear -> kernels; the model itself stays on the reference
    checks["decoder mixed"] = logits_error(model, mixed)
    for ctx in contexts:
        times[("decoder mixed", ctx)] = decoder_step_us(mixed, args.tokens, ctx)
    if args.prompt:
        prompts["decoder mixed"] = prompt_ms(mixed, args.prompt)
    if args.profile:
        profiles["decoder mixed"] = profile_table(mixed)
    launches = mixed.launches_per_step
    del mixed
    unfused = LlamaDecoder(model, max_len, fuse_norms=False)  # RMSNorms as their own launches
    for ctx in contexts:
        times[("decoder mixed, norms as own launches", ctx)] = decoder_step_us(unfused, args.tokens, ctx)
    del unfused
    if args.head_bits:  # the plan with the LM head quantized too (it stays float16 in the fixed plan)
        undo = quantize_head(model, args.head_bits)
        headed, name = LlamaDecoder(model, max_len), f"decoder mixed, LM head w{args.head_bits}g128"
        checks[name] = logits_error(model, headed)
        for ctx in contexts:
            times[(name, ctx)] = decoder_step_us(headed, args.tokens, ctx)
        del headed
        undo()
    if args.no_l2_slice:
        registry = Registry.load()
        unsliced = Registry(
            registry.device,
            tuple(
                replace(e, params={**e.params, "l2_slice": 0}) if e.kernel == "gemv" else e
                for e in registry.entries
            ),
        )
        unfetched = LlamaDecoder(model, max_len, registry=unsliced)
        for ctx in contexts:
            times[("decoder mixed, no L2 slice prefetch", ctx)] = decoder_step_us(unfetched, args.tokens, ctx)
        del unfetched
    if args.profile:
        profiles["decoder mixed without PDL, GEMVs by role"] = gemv_roles(
            LlamaDecoder(model, max_len, pdl=False)
        )
    if pdl_supported(torch.device("cuda")):  # the same without programmatic dependent launch
        plain = LlamaDecoder(model, max_len, pdl=False)
        for ctx in contexts:
            times[("decoder mixed, no PDL", ctx)] = decoder_step_us(plain, args.tokens, ctx)
        del plain
    use_kernels(model)
    for ctx in contexts:
        times[("transformers mixed", ctx)] = hf_step_us(model, args.tokens, ctx)
    counts = ", ".join(f"{n} {c}" for c, n in sorted(Counter(plan.values()).items()))
    rows = [
        f"model: random Llama-shaped, {params / 1e9:.2f} B parameters, fp16, {torch.cuda.get_device_name()}",
        f"plan: {counts}; decoder: {launches} weight launches per step (q/k/v and gate/up fused)",
        *([budget_row] if budget_row else []),
        "",
        "| runner | context | us / token (sync each) | tokens/s | x transformers fp16 | x decoder fp16 "
        "| us / token (back to back) | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, ctx), (median, mean) in times.items():
        hf = times[("transformers fp16", ctx)][0]
        dec = times[("decoder fp16", ctx)][0]
        rows.append(
            f"| {name} | {ctx} | {median:.0f} | {1e6 / median:.0f} | {hf / median:.2f} | {dec / median:.2f} "
            f"| {mean:.0f} | {1e6 / mean:.0f} |".replace("| nan | nan |", "| - | - |")
        )
    rows.append("")
    for name, (once, stepped) in prompts.items():
        rows.append(
            f"{name}, prompt of {args.prompt} tokens: one prefill pass {once:.1f} ms, one step per token "
            f"{stepped:.1f} ms ({stepped / once:.1f}x)"
        )
    for name, (err, same) in checks.items():
        rows.append(
            f"{name} vs transformers (same weights, 8 steps): max relative logit error {err:.2e}, "
            f"same greedy token {100 * same:.0f}%"
        )
    if args.latency:
        table = LatencyTable.load(args.latency)
        quant, fp16 = tabled_us(table, model, plan), tabled_us(table, model, None)  # tie groups fused
        ctx = contexts[0]
        predicted = times[("decoder fp16", ctx)][0] - fp16 + quant
        measured = times[("decoder mixed", ctx)][0]
        error = 100 * (predicted / measured - 1)
        rows.append(
            f"latency table (q/k/v and gate/up priced as fused launches): linears fp16 {fp16:.0f} us, "
            f"quantized {quant:.0f} us; predicted decoder mixed step {predicted:.0f} us vs measured "
            f"{measured:.0f} us ({error:+.1f}%)"
        )
    for name, table in profiles.items():
        rows += [
            "",
            f"{name}, GPU time per step by kernel (context 0, eager steps under torch.profiler):",
            "",
            table,
        ]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
