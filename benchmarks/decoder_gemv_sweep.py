"""Tune the decoder's GEMVs in place: time the whole decode step with other launch parameters per projection.

    python benchmarks/decoder_gemv_sweep.py [--roles gate_up,down] [--tokens 32] [--write TABLE]

The registry's batch-1 entries were tuned on isolated, L2-flushed calls; inside the decoder each GEMV runs
between small kernels with programmatic dependent launch, so the best parameters may differ. For each role
(the fused q/k/v, o, the fused gate/up, down) of the 1.1 B Llama-shaped model under the mixed 4/3-bit plan
of ``kernels_e2e.py``, every candidate configuration replaces that shape's entry while the others keep
theirs, and the decoder (built once: its layouts stay) is re-captured and its CUDA-graph step timed (back to
back, the mean of ``--tokens`` steps; the current configuration is timed before and after as the baseline).
With ``--write`` the best configuration of each role (when it beats the current one by more than 2 %) is
written into the table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import torch
from kernels_e2e import decoder_step_us, llama_1b, mixed_plan, quantize_plan

from bitalloc.kernels.registry import Registry, TunedEntry, default_table
from bitalloc.runtime.llama_decoder import LlamaDecoder
from bitalloc.runtime.projection import QuantRun

ROLES = {"qkv": (4, 3072, 2048), "o": (4, 2048, 2048), "gate_up": (3, 16384, 2048), "down": (4, 2048, 8192)}
GRID = {
    "block_n": (128, 256, 512),
    "split_k": (4, 8, 16, 32, 64),
    "prefetch": (0, 1),
    "xs_rows": (0, 1),
    "l2_slice": (0, 1),
}


def use_registry(decoder: LlamaDecoder, registry: Registry) -> None:
    """Point every kernel linear of ``decoder`` at ``registry`` (the layouts stay; the next capture
    launches with its parameters)."""
    for layer in decoder.layers:
        for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
            for _, _, run in projection.runs:
                if isinstance(run, QuantRun):
                    run.linear.registry = registry


def step_us(decoder: LlamaDecoder, registry: Registry, tokens: int) -> float:
    """Mean decode step (us) of ``decoder`` captured with ``registry``, back to back after 4 positions."""
    use_registry(decoder, registry)
    return decoder_step_us(decoder, tokens, context=4)[1]


def with_entry(registry: Registry, bits: int, shape: tuple[int, int], params: dict[str, int]) -> Registry:
    """``registry`` with the batch-1 entry of (bits, shape) replaced by ``params``."""
    kept = tuple(
        e
        for e in registry.entries
        if not (e.bits == bits and (e.out_features, e.in_features) == shape and e.batch == 1)
    )
    entry = TunedEntry(bits, shape[0], shape[1], 1, "gemv", params)
    return replace(registry, entries=(*kept, entry))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", default="qkv,o,gate_up,down")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--write", type=Path, default=None, help="write improved entries into this table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decoder_gemv_sweep needs a CUDA GPU")
    model = llama_1b()
    quantize_plan(model, mixed_plan(model))
    registry = Registry.load(default_table())
    decoder = LlamaDecoder(model, args.tokens + 16, registry=registry)
    print("| role | shape | bits | current us/step | best us/step | best parameters |")
    print("|---|---|---|---|---|---|")
    for role in args.roles.split(","):
        bits, out_f, in_f = ROLES[role]
        current = registry.choose(bits, (out_f, in_f), 1).params
        base = step_us(decoder, registry, args.tokens)
        best_us, best = base, current
        for values in itertools.product(*GRID.values()):
            params = {**current, **dict(zip(GRID, values, strict=True))}
            us = step_us(decoder, with_entry(registry, bits, (out_f, in_f), params), args.tokens)
            if us < best_us:
                best_us, best = us, params
        base = min(base, step_us(decoder, registry, args.tokens))
        print(f"| {role} | {out_f}x{in_f} | {bits} | {base:.0f} | {best_us:.0f} | {best} |", flush=True)
        if best_us < 0.98 * base:
            registry = with_entry(registry, bits, (out_f, in_f), best)
    if args.write:
        registry.save(args.write)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
