"""The tensor-core kernel (``mma.py``) against fp16 cuBLAS and the current kernels, batch 1-16, side by side.

    python benchmarks/kernels_mma.py --shapes large --batches 1,16 [--sweep]
    python benchmarks/kernels_mma.py --tune bitalloc/kernels/configs/h200.json [--tune-batches 8,16]

Same protocol as ``kernels_speed.py`` (CUDA graph, L2 flushed by reading 128 MiB, median of 30). ``current``
is what the registry runs today (f16x2 GEMV at batch 1, swap-AB GEMM at 2-16). With ``--sweep`` every mma
launch configuration of a small grid is timed and the best one reported with its parameters.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernels_speed import LARGE, SMOLLM2, bench, copy_bandwidth, random_qweight, run_kernel

from bitalloc.kernels.fragment_layout import to_fragment_layout
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.mma import MmaConfig, mma_matmul
from bitalloc.kernels.registry import MMA_BATCHES, Registry, TunedEntry
from bitalloc.quantizers.candidate import Candidate, QuantKind

SWEEP = [
    MmaConfig(t, w, s, g)
    for t, w, s, g in itertools.product((1, 2, 4), (4, 8), (0, 8, 16, 32), (False, True))
]
TUNE = [MmaConfig(t, 4, s) for t, s in itertools.product((1, 2, 4), (0, 8, 16))]


def tune(path: Path, shapes, bits_list, batches=(16,)) -> None:
    """Time ``TUNE`` per (bits, shape, batch), asymmetric codes; replace the table's ``mma`` entries of
    those bit widths and batches (``MMA_BATCHES``: calls take the smallest tuned batch that holds them)."""
    base = Registry.load(path)
    entries = [
        e for e in base.entries if e.kernel != "mma" or e.bits not in bits_list or e.batch not in batches
    ]
    for shape, bits in itertools.product(shapes, bits_list):
        group = 128 if shape[1] % 128 == 0 else 64
        frag = to_fragment_layout(random_qweight(Candidate(QuantKind.RTN, bits, group, False), shape))
        for batch in batches:
            x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
            timed = [(bench(lambda: mma_matmul(x, frag, c)), c) for c in TUNE]  # noqa: B023
            us, best = min(timed, key=lambda t: t[0])
            params = {
                "tiles_per_warp": best.tiles_per_warp,
                "num_warps": best.num_warps,
                "split_k": best.split_k,
            }
            entries.append(TunedEntry(bits, shape[0], shape[1], batch, "mma", params))
            print(f"tuned {bits}-bit {shape} batch {batch}: {us:.1f} us with {params}", flush=True)
        Registry(base.device, tuple(entries)).save(path)  # after each shape: partial runs count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="large", choices=["large", "smollm2", "all", "xl"])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--bits", default="2,4,8")
    parser.add_argument("--sym", action="store_true", help="symmetric codes (default asymmetric)")
    parser.add_argument("--sweep", action="store_true", help="time a grid of mma configs, keep the best")
    parser.add_argument("--tune", type=Path, help="tune and write mma entries into this table")
    parser.add_argument("--tune-batches", default="16", help="batches to tune at (each of MMA_BATCHES)")
    args = parser.parse_args()
    shapes = {"large": LARGE, "smollm2": SMOLLM2, "all": LARGE + SMOLLM2, "xl": LARGE[-1:]}[args.shapes]
    if args.tune:
        batches = tuple(int(b) for b in args.tune_batches.split(","))
        if not set(batches) <= set(MMA_BATCHES):
            parser.error(f"--tune-batches takes values of {MMA_BATCHES}")
        tune(args.tune, shapes, [int(b) for b in args.bits.split(",")], batches)
        return
    registry = Registry.load()
    bw = copy_bandwidth()
    codes = "sym" if args.sym else "asym"
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s ({torch.cuda.get_device_name()}); {codes}")
    print(
        "| shape | batch | bits | fp16 us | current us | mma us | frac BW | x fp16 | mma / current | config |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, batch in itertools.product(shapes, [int(b) for b in args.batches.split(",")]):
        w16 = torch.randn(shape, device="cuda", dtype=torch.float16) * 0.02
        x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
        fp16_us = bench(lambda: torch.nn.functional.linear(x, w16))  # noqa: B023
        for bits in [int(b) for b in args.bits.split(",")]:
            group = 128 if shape[1] % 128 == 0 else 64
            cand = Candidate(QuantKind.RTN, bits, group, args.sym)
            qw = random_qweight(cand, shape)
            layout = to_layout(qw)
            choice = registry.choose(bits, shape, batch)  # gemv / swapab: today's kernels
            cur_us = bench(lambda: run_kernel(x, layout, choice.kernel, choice.params))  # noqa: B023
            frag = to_fragment_layout(qw)
            ref = run_kernel(x, layout, choice.kernel, choice.params).float()
            best = None
            tuned = MmaConfig(**registry.choose_mma(bits, shape, max(batch, 2)).params)
            sweep = [c for c in SWEEP if batch > 8 or not c.wgmma]
            for config in sweep if args.sweep else [tuned]:
                y = mma_matmul(x, frag, config).float()
                err = float((y - ref).norm() / ref.norm())
                if err > 5e-3:
                    print(f"WRONG {shape} {batch} {bits} {config} rel err {err:.2e}", flush=True)
                    continue
                us = bench(lambda: mma_matmul(x, frag, config))  # noqa: B023
                if best is None or us < best[0]:
                    best = (us, config)
            if best is None:
                continue
            us, config = best
            name = f"{config.tiles_per_warp}/{config.num_warps}/{config.split_k}" + ("/wgmma" * config.wgmma)
            moved = cand.nbytes(shape) + x.numel() * 2 + batch * shape[0] * 2
            print(
                f"| {shape[0]}x{shape[1]} | {batch} | {bits} | {fp16_us:.1f} | {cur_us:.1f} | {us:.1f} | "
                f"{moved / (us * 1e-6) / bw:.2f} | {fp16_us / us:.2f} | {us / cur_us:.2f} | "
                f"{name} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
