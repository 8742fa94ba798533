"""A latency table measured inside the decode step: what each projection launch costs the step, per format.

    python benchmarks/decoder_latency.py --out bitalloc/kernels/configs/latency_h200_decoder.csv [--tokens 64]

Tables timed kernel by kernel (``kernels_speed.py --latency``) price a launch alone; in the decoder's step
each launch overlaps its neighbours (programmatic dependent launch, L2 prefetch before the wait), so a plan's
tabled time missed its measured step by 8-23 %. This command times the step itself. For each role of the
1.1 B Llama-shaped model of ``kernels_e2e.py`` (q/k/v, o, gate/up, down: one launch each per layer) and each
format (2/3/4/8 bits, symmetric and asymmetric, group 128, and float16 on cuBLAS), the role is set to that
format in every layer, the other roles to ``--others``, and the captured step is timed; the same step with
the role's launches left out gives the baseline. A row's ``us`` is the difference over the layer count: what
one launch of that format and shape adds to the step, overlap included (``fp16_us`` the float16 launch's).
The q/k/v and gate/up rows include the RMSNorm before them: left out with the launch, which holds it when the
norm runs inside the GEMV (``kernels/row_norm.py``), and as its own launch beside cuBLAS. The CSV has the
columns of the kernel tables (``kernels/latency.py``), kernel ``decoder``, batch 1.

The same run checks the table on the fixed mixed 4/3-bit plan and the float16 model, two ways: the step with
every projection left out plus the tabled launches (additivity), and ``kernels_e2e.py``'s prediction (the
measured float16 step, minus its tabled launches, plus the plan's).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import torch
from decoder_ablation import _Skipped
from kernels_e2e import decoder_step_us, llama_1b, mixed_plan
from torch import nn

from bitalloc.kernels.latency import COLUMNS, LatencyTable
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.runtime.latency_plan import decoder_linears, launch_shares, tabled_us
from bitalloc.runtime.llama_decoder import LlamaDecoder

FIELDS = {
    "qkv": "qkv",
    "o_proj": "o",
    "gate_up": "gate_up",
    "down_proj": "down",
}  # role -> DecoderLayer field
FORMATS = tuple(f"rtn-w{b}g128-{s}" for b in (2, 3, 4, 8) for s in ("sym", "asym"))
FLOAT16 = "fp16"


def role_of(tie: str) -> str:
    """The role (one launch per layer) of a tie key from ``decoder_linears``: ``0.qkv`` -> ``qkv``."""
    return tie.partition(".")[2]


class Variants:
    """The model's decoder linears in every format, quantized once; ``set`` installs one per linear."""

    def __init__(self, model: nn.Module, formats: tuple[str, ...]) -> None:
        self.model = model
        self.linears = decoder_linears(model)
        self.dense = {name: linear for name, linear, _ in self.linears}
        self.quantized = {
            (name, fmt): _quantized(linear, fmt) for name, linear, _ in self.linears for fmt in formats
        }

    def set(self, formats: dict[str, str]) -> None:
        """Linear name -> format (``fp16``: the float16 linear)."""
        for name, _, _ in self.linears:
            parent, _, leaf = name.rpartition(".")
            fmt = formats[name]
            module = self.dense[name] if fmt == FLOAT16 else self.quantized[(name, fmt)]
            setattr(self.model.model.layers.get_submodule(parent), leaf, module)


def _quantized(linear: nn.Linear, fmt: str) -> QuantLinear:
    """``linear`` quantized (RTN) to ``fmt``."""
    return QuantLinear.from_linear(linear, quantize(linear.weight.detach().float(), Candidate.parse(fmt)))


def step_us(model: nn.Module, tokens: int, skip: tuple[str, ...] = ()) -> float:
    """Median step (sync each) of a fresh decoder of ``model``, the ``skip`` roles left out of every layer."""
    decoder = LlamaDecoder(model, tokens + 16)
    if skip:
        skipped = _Skipped()
        fields = dict.fromkeys((FIELDS[role] for role in skip), skipped)
        decoder.layers = [replace(layer, **fields) for layer in decoder.layers]
    us, _ = decoder_step_us(decoder, tokens, 0)
    del decoder
    torch.cuda.empty_cache()
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--others", default="rtn-w4g128-asym", help="format of the roles not being timed")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decoder_latency needs a CUDA GPU")
    model = llama_1b()
    layers = len(model.model.layers)
    variants = Variants(model, tuple(dict.fromkeys((*FORMATS, args.others))))
    names = [name for name, _, _ in variants.linears]
    roles = {name: role_of(tie) for name, _, tie in variants.linears}
    shapes = {  # role -> its launch's weight shape (the stacked rows of a fused group)
        roles[name]: launch
        for (name, _, _), (launch, _) in zip(variants.linears, launch_shares(variants.linears), strict=True)
    }
    rows, costs = [], {}
    for role, shape in shapes.items():
        base = {n: args.others for n in names}
        variants.set(base)
        skipped = step_us(model, args.tokens, skip=(role,))
        for fmt in (FLOAT16, *FORMATS):
            variants.set({**base, **{n: fmt for n in names if roles[n] == role}})
            costs[(role, fmt)] = (step_us(model, args.tokens) - skipped) / layers
        for fmt in FORMATS:
            cand = Candidate.parse(fmt)
            rows.append(
                {
                    "format": cand.name.removeprefix("rtn-"),
                    "bits": cand.bits,
                    "group_size": cand.group_size,
                    "symmetric": cand.symmetric,
                    "out_features": shape[0],
                    "in_features": shape[1],
                    "batch": 1,
                    "kernel": "decoder",
                    "us": round(costs[(role, fmt)], 2),
                    "fp16_us": round(costs[(role, FLOAT16)], 2),
                    "nbytes": cand.nbytes(shape),
                }
            )
        cells = ", ".join(
            f"{fmt.removeprefix('rtn-')} {costs[(role, fmt)]:.2f}" for fmt in (FLOAT16, *FORMATS)
        )
        print(f"{role} {shape}: us per launch: {cells}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = LatencyTable.load(args.out)
    variants.set({n: args.others for n in names})
    rest = step_us(model, args.tokens, skip=tuple(FIELDS))
    plan = mixed_plan(model)
    print(f"\n{torch.cuda.get_device_name()}; step with every projection left out: {rest:.0f} us")
    print(
        "\n| plan | measured us | rest + tabled launches | error | measured float16 step - tabled float16 + "
        "tabled plan (kernels_e2e.py) | error |\n|---|---|---|---|---|---|"
    )
    variants.set({n: FLOAT16 for n in names})
    fp16_measured, fp16_tabled = step_us(model, args.tokens), tabled_us(table, model, None)
    variants.set(plan)
    plan_measured, plan_tabled = step_us(model, args.tokens), tabled_us(table, model, plan)
    checks = (
        ("float16", fp16_measured, fp16_tabled),
        ("mixed 4/3-bit (kernels_e2e)", plan_measured, plan_tabled),
    )
    for label, measured, tabled in checks:
        additive, swapped = rest + tabled, fp16_measured - fp16_tabled + tabled
        print(
            f"| {label} | {measured:.0f} | {additive:.0f} | {100 * (additive / measured - 1):+.1f}% | "
            f"{swapped:.0f} | {100 * (swapped / measured - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
