"""Is a kernel call bound by memory or by the SM? The registry's kernel timed with L2 flushed and L2-resident.

    python benchmarks/kernels_hot_cold.py [--bits 2,3,4] [--batches 1,16] [--shapes 8192x14336,4096x14336]
    ncu --clock-control none -k regex:"gemv|mma" --launch-skip 3 --launch-count 1 --metrics "$STALLS" \\
        python benchmarks/kernels_hot_cold.py --once --bits 2 --batches 1 --shapes 8192x28672

with ``STALLS`` the metrics of session 24's table (BENCHMARKS.md): ``regex:smsp__average_warps_issue_stalled_
.*_per_issue_active.ratio,regex:sm__inst_executed_pipe_.*.avg.pct_of_peak_sustained_active,smsp__issue_active.
avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,
sm__warps_active.avg.per_cycle_active,launch__registers_per_thread`` (one string, no line breaks).

``cold``: the ``kernels_speed.bench`` protocol (CUDA graph, 128 MiB of L2 flushed by reading before each
call, median of 30). ``hot``: 20 calls back to back in one graph (``bench_pipelined``: median of 10
replays, per call); choose shapes whose weights fit in L2 (50 MB on the H100, 60 MB on the H200), so the
weights come from L2. When ``hot`` is close to ``cold`` the call is bound by the SM (issue, pipes,
dependencies), not by DRAM. ``--once`` makes five untimed calls per case, for Nsight Compute (which skips
the first three).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernels_speed import bench, bench_pipelined, random_qweight, run_kernel

from bitalloc.kernels.fragment_layout import to_fragment_layout
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.registry import Registry
from bitalloc.quantizers.candidate import Candidate, QuantKind


def hot_us(fn, calls: int = 20) -> float:
    """Microseconds per call of ``fn`` run ``calls`` times back to back in one CUDA graph (no flush)."""
    return bench_pipelined([fn] * calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,3,4")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--shapes", default="8192x14336,4096x14336", help="out x in, comma-separated")
    parser.add_argument("--once", action="store_true", help="five untimed calls per case (for ncu)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    registry = Registry.load()
    print(
        "| shape | batch | bits | kernel | weight MB | cold us | hot us | hot / cold | fp16 cold / hot us |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shape, batch in itertools.product(shapes, [int(b) for b in args.batches.split(",")]):
        x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
        fp16_txt = "-"
        if not args.once:
            w16 = torch.randn(shape, device="cuda", dtype=torch.float16)

            def fp16(x=x, w16=w16) -> torch.Tensor:
                return torch.nn.functional.linear(x, w16)

            fp16_txt = f"{bench(fp16):.1f} / {hot_us(fp16):.1f}"
            del w16
        for bits in [int(b) for b in args.bits.split(",")]:
            cand = Candidate(QuantKind.RTN, bits, 128, False)
            qw = random_qweight(cand, shape)
            choice = registry.choose_call(cand, shape, batch, x.dtype, x.device)
            layout = to_layout(qw)
            frag = to_fragment_layout(qw) if choice.kernel == "mma" else None

            def call(x=x, layout=layout, frag=frag, choice=choice) -> torch.Tensor:
                return run_kernel(x, layout, choice.kernel, choice.params, frag)

            if args.once:
                for _ in range(5):
                    call()
                torch.cuda.synchronize()
                continue
            cold, hot = bench(call), hot_us(call)
            mb = cand.nbytes(shape) / 1e6
            print(
                f"| {shape[0]}x{shape[1]} | {batch} | {bits} | {choice.kernel} | {mb:.1f} | {cold:.1f} | "
                f"{hot:.1f} | {hot / cold:.2f} | {fp16_txt} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
